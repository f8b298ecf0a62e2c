"""Atomic, checksummed checkpoints: keep the last K plus the best; load the newest one that verifies.

A checkpoint ``ckpt-<step>.pt`` counts only once its sidecar ``ckpt-<step>.json`` (step, epoch, metric,
sha256 of the data file) exists; both are written to temp files and renamed, data first. A file whose
checksum does not match is skipped on load with a warning, and the previous one is used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from hpcvit.manifest import fsync_dir, read_json, write_json_atomic

log = logging.getLogger(__name__)
_NAME = re.compile(r"^ckpt-(\d{9})\.json$")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class CheckpointManager:
    """Checkpoints of one task in ``directory``."""

    def __init__(self, directory: Path, keep: int = 2, keep_best: bool = True):
        self.dir, self.keep, self.keep_best = directory, keep, keep_best
        self.dir.mkdir(parents=True, exist_ok=True)

    def _entries(self) -> list[tuple[int, Path]]:
        found = []
        for p in self.dir.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save(self, state: dict[str, Any], *, step: int, epoch: int, metric: float | None = None,
             is_best: bool = False) -> Path:
        """Write ``state`` as the checkpoint of ``step``; prune old ones; copy to ``best`` when ``is_best``."""
        data = self.dir / f"ckpt-{step:09d}.pt"
        tmp = self.dir / f".{data.name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        digest = sha256_file(tmp)
        os.replace(tmp, data)
        meta = {"file": data.name, "step": step, "epoch": epoch, "metric": metric, "sha256": digest,
                "bytes": data.stat().st_size}
        write_json_atomic(self.dir / f"ckpt-{step:09d}.json", meta)
        if is_best and self.keep_best:
            best_tmp = self.dir / f".best.pt.{os.getpid()}.tmp"
            shutil.copyfile(data, best_tmp)
            os.replace(best_tmp, self.dir / "best.pt")
            write_json_atomic(self.dir / "best.json", {**meta, "file": "best.pt"})
        fsync_dir(self.dir)
        self._prune()
        return data

    def _prune(self) -> None:
        for _, meta in self._entries()[: -self.keep]:
            meta.with_suffix(".pt").unlink(missing_ok=True)
            meta.unlink(missing_ok=True)

    def verified(self) -> list[tuple[dict[str, Any], Path]]:
        """All checkpoints whose data match their checksum, newest first."""
        good = []
        for _, meta_path in reversed(self._entries()):
            meta = read_json(meta_path, {})
            data = self.dir / meta.get("file", "")
            if not data.is_file():
                log.warning("checkpoint %s: data file missing, skipped", meta_path.name)
            elif sha256_file(data) != meta.get("sha256"):
                log.warning("checkpoint %s: checksum mismatch, skipped", data.name)
            else:
                good.append((meta, data))
        return good

    def load_latest(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(state, meta) of the newest checkpoint that verifies and loads, or None."""
        for meta, path in self.verified():
            try:
                return torch.load(path, map_location="cpu", weights_only=False), meta
            except Exception as exc:  # noqa: BLE001 - a corrupt pickle means: fall back to the previous one
                log.warning("checkpoint %s does not load (%s), falling back", path.name, exc)
        return None

    def best(self) -> Path | None:
        meta = read_json(self.dir / "best.json")
        path = self.dir / "best.pt"
        if meta and path.is_file() and sha256_file(path) == meta["sha256"]:
            return path
        return None
