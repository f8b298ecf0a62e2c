"""Atomic, checksummed checkpoints that can carry no code: keep the last K plus the best, load the newest that
verifies.

A checkpoint ``ckpt-<step>.pt`` counts only once its sidecar ``ckpt-<step>.json`` (step, epoch, metric, sha256
of the data file) exists; both are written to temp files and renamed, data first. Loading goes newest first
and skips, with a warning naming the file, a sidecar that is damaged, data that do not match their checksum, and
a file that does not load with ``torch.load(weights_only=True)`` (tensors and plain values only, so a tampered
file cannot run code) or that ``check`` refuses; after every numbered checkpoint ``best.pt`` is tried.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hpcvit import fsio
from hpcvit.fsio import sha256_file

log = logging.getLogger(__name__)
_SIDECAR = re.compile(r"^ckpt-(\d{9})\.json$")
_DATA = re.compile(r"^ckpt-(\d{9})\.pt$")


def load_weights(path: Path) -> Any:
    """``torch.load`` of a file a user or a checkpoint points at: tensors and plain values only, on the CPU."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - pickle refusals, zip errors, truncation: one message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a loadable weights file ({first[:300]})") from None


class CheckpointManager:
    """Checkpoints of one task in ``directory``."""

    def __init__(self, directory: Path, keep: int = 2, keep_best: bool = True):
        self.dir, self.keep, self.keep_best = Path(directory), keep, keep_best
        self.dir.mkdir(parents=True, exist_ok=True)
        self.skipped: list[str] = []
        """Why each checkpoint the last load passed over was refused (``path: reason``)."""

    def clean(self) -> list[Path]:
        """Remove temp files of killed writes (call while no writer is at work: before training starts)."""
        removed = fsio.remove_temp_files(self.dir)
        for p in removed:
            log.info("removed %s, left by an interrupted checkpoint write", p)
        return removed

    def _sidecars(self) -> list[tuple[int, Path]]:
        found = []
        for p in self.dir.iterdir():
            m = _SIDECAR.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    def save(self, state: dict[str, Any], *, step: int, epoch: int, metric: float | None = None,
             is_best: bool = False) -> Path:
        """Write ``state`` as the checkpoint of ``step``; prune old ones; copy to ``best`` when ``is_best``."""
        data = self.dir / f"ckpt-{step:09d}.pt"
        with fsio.atomic_path(data) as tmp:
            with open(tmp, "wb") as f:
                torch.save(state, f)
            digest = sha256_file(tmp)
        meta = {"file": data.name, "step": step, "epoch": epoch, "metric": metric, "sha256": digest,
                "bytes": data.stat().st_size}
        fsio.write_json(self.dir / f"ckpt-{step:09d}.json", meta)
        if is_best and self.keep_best:
            fsio.copy_file(data, self.dir / "best.pt")
            fsio.write_json(self.dir / "best.json", {**meta, "file": "best.pt"})
        self._prune()
        return data

    def _prune(self) -> None:
        entries = self._sidecars()
        for _, meta in entries[: -self.keep]:
            meta.with_suffix(".pt").unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
        # data files whose sidecar was never written (a writer killed between the two), older than the newest
        newest = entries[-1][0] if entries else -1
        for p in self.dir.iterdir():
            m = _DATA.match(p.name)
            if m and int(m.group(1)) < newest and not p.with_suffix(".json").exists():
                p.unlink(missing_ok=True)

    def _meta(self, sidecar: Path) -> dict[str, Any] | None:
        try:
            meta = fsio.read_json(sidecar)
        except (OSError, ValueError) as exc:
            self._skip(sidecar, f"sidecar unreadable ({exc})")
            return None
        if not isinstance(meta, dict) or not isinstance(meta.get("file"), str) or "sha256" not in meta \
                or "/" in meta["file"]:
            self._skip(sidecar, "sidecar is not a checkpoint record")
            return None
        return meta

    def _skip(self, path: Path, reason: str) -> None:
        log.warning("checkpoint %s: %s, skipped", path, reason)
        self.skipped.append(f"{path}: {reason}")

    def _verified(self, meta: dict[str, Any], sidecar: Path) -> Path | None:
        data = self.dir / meta["file"]
        if not data.is_file():
            self._skip(sidecar, "data file missing")
        elif sha256_file(data) != meta.get("sha256"):
            self._skip(data, "checksum mismatch")
        else:
            return data
        return None

    def candidates(self) -> list[tuple[dict[str, Any], Path]]:
        """(meta, data file) of every checkpoint whose data match their checksum: newest first, then best."""
        self.skipped = []
        good = []
        sidecars = [p for _, p in reversed(self._sidecars())]
        if (self.dir / "best.json").exists():
            sidecars.append(self.dir / "best.json")
        for sidecar in sidecars:
            meta = self._meta(sidecar)
            data = self._verified(meta, sidecar) if meta is not None else None
            if data is not None:
                good.append((meta, data))
        return good

    def load_latest(self, check: Callable[[dict[str, Any]], None] | None = None
                    ) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(state, meta) of the newest checkpoint that verifies, loads and passes ``check``; None if none does
        (:attr:`skipped` then says why each was refused)."""
        for meta, path in self.candidates():
            try:
                state = load_weights(path)
                if check is not None:
                    check(state)
                return state, meta
            except (ValueError, KeyError, TypeError) as exc:
                self._skip(path, str(exc).removeprefix(f"{path}: "))
        return None

    def load(self, path: Path) -> dict[str, Any]:
        return load_weights(path)

    def best(self) -> Path | None:
        """``best.pt`` if it verifies against ``best.json``."""
        meta_path = self.dir / "best.json"
        if not meta_path.exists():
            return None
        meta = self._meta(meta_path)
        return self._verified(meta, meta_path) if meta is not None else None

    def has_any(self) -> bool:
        """Whether any checkpoint file exists here (loadable or not)."""
        return any(_DATA.match(p.name) or p.name == "best.pt" for p in self.dir.iterdir())
