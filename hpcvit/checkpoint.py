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
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
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


def differences(a: Any, b: Any) -> list[str]:
    """The entries (``model.fc.weight``, ``rng[1].numpy[2]``, ...) in which two loaded checkpoints differ, in
    value, shape, dtype or presence; ``[]`` when they are equal in every tensor and value (NaN equals NaN)."""

    def flat(value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            for k, v in value.items():
                yield from flat(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                yield from flat(v, f"{key}[{i}]")
        else:
            yield key, value

    def same(x: Any, y: Any) -> bool:
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if x.dtype != y.dtype or x.shape != y.shape:
                return False
            return torch.equal(x, y) or (x.is_floating_point() and bool(((x == y) | (x.isnan() & y.isnan())).all()))
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            return False
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):  # not from weights_only files; from callers
            return (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.dtype == y.dtype
                    and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"))
        return type(x) is type(y) and (bool(x == y) or (x != x and y != y))

    fa, fb = dict(flat(a)), dict(flat(b))
    return sorted(set(fa) ^ set(fb)) + [k for k in sorted(set(fa) & set(fb)) if not same(fa[k], fb[k])]


def _link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` atomically replaced by a hard link to ``src`` (no second write of the data), or by a copy where
    the file system has no hard links. Pruning ``src`` later leaves ``dst`` intact."""
    tmp = fsio.temp_path(dst)
    try:
        os.link(src, tmp)
    except OSError:
        fsio.copy_file(src, dst)
        return
    try:
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsio.fsync_dir(dst.parent, strict=False)


def _zip_tensors(fn: Callable[[torch.Tensor, Any], Any], obj: Any, like: Any) -> Any:
    """``obj`` with ``fn(tensor, counterpart)`` applied to every tensor in it, the counterpart being what stands
    at the same place in ``like`` (None where nothing does): dicts, lists and tuples rebuilt, other values
    shared (they are immutable: numbers, strings, None)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj, like)
    if isinstance(obj, dict):
        other = like if isinstance(like, dict) else {}
        return {k: _zip_tensors(fn, v, other.get(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        other = like if isinstance(like, (list, tuple)) and len(like) == len(obj) else (None,) * len(obj)
        return type(obj)(_zip_tensors(fn, v, r) for v, r in zip(obj, other))
    return obj


def _map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it (see :func:`_zip_tensors`)."""
    return _zip_tensors(lambda t, _: fn(t), obj, None)


def _copy_into(t: torch.Tensor, old: Any) -> torch.Tensor:
    """A copy of ``t``: into ``old`` where it is a CPU tensor of the same device, type, shape and strides,
    else a new one on ``t``'s device."""
    t = t.detach()
    if (isinstance(old, torch.Tensor) and t.device.type == "cpu" and old.device == t.device
            and old.dtype == t.dtype and old.shape == t.shape and old.stride() == t.stride()
            and t.layout == torch.strided and old.layout == torch.strided):
        return old.copy_(t)
    return t.clone()


def snapshot(obj: Any, reuse: Any = None) -> Any:
    """A copy of ``obj`` that later training steps cannot change: every tensor copied, on its device.

    A CPU tensor is copied into the tensor at the same place in ``reuse`` (an earlier snapshot that nothing
    reads any more) where shape, type and strides agree: the copy then runs at memory speed instead of first
    allocating and faulting in fresh memory, which took most of a snapshot's time.
    """
    return _zip_tensors(_copy_into, obj, reuse)


def _to_host(obj: Any, stream: Any) -> Any:
    """``obj`` with every device tensor copied into pinned host memory on ``stream`` (the writer's)."""
    def host_copy(t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "cpu":
            return t
        with torch.cuda.stream(stream):
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
        return host

    return _map_tensors(host_copy, obj)


def _on_gpu(obj: Any) -> bool:
    found: list[bool] = []
    _map_tensors(lambda t: found.append(t.device.type != "cpu"), obj)
    return any(found)


def _lower_priority() -> None:
    """Give the calling thread (the writer) a lower CPU priority than training's threads where it competes
    with them for the cores; it still has the cores to itself once training stops (preemption)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # on Linux: this thread alone
    except (AttributeError, OSError):
        pass


class CheckpointManager:
    """Checkpoints of one task in ``directory``."""

    def __init__(self, directory: Path, keep: int = 2, keep_best: bool = True):
        self.dir, self.keep, self.keep_best = Path(directory), keep, keep_best
        self.dir.mkdir(parents=True, exist_ok=True)
        self.skipped: list[str] = []
        """Why each checkpoint the last load passed over was refused (``path: reason``)."""
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        self._staging: Any = None  # the last background snapshot: the next one is copied into its tensors

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

    def save_async(self, state: dict[str, Any], *, step: int, epoch: int, metric: float | None = None,
                   is_best: bool = False) -> None:
        """:meth:`save` in a background thread, of a snapshot taken now; waits for the previous write first.

        A snapshot of CPU tensors stays allocated between checkpoints (one copy of the state in host memory)
        and is refilled by the next one; a snapshot holding GPU tensors is freed once written."""
        self.wait()
        snap = snapshot(state, self._staging)
        event = None
        if _on_gpu(snap):  # the writer's copy to the host must start after the device-side snapshot is done
            event = torch.cuda.Event()
            event.record()
            self._staging = None  # a device snapshot is not kept: it would hold a copy of the state in GPU memory
        else:
            self._staging = snap
        self._writer = threading.Thread(target=self._write, args=(snap, event, step, epoch, metric, is_best),
                                        name=f"checkpoint-{step}")
        self._writer.start()

    def _write(self, snap: dict[str, Any], event: Any, step: int, epoch: int, metric: float | None,
               is_best: bool) -> None:
        _lower_priority()
        try:
            if event is not None:
                stream = torch.cuda.Stream()
                stream.wait_event(event)
                snap = _to_host(snap, stream)
                stream.synchronize()
            self.save(snap, step=step, epoch=epoch, metric=metric, is_best=is_best)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread by wait()
            self._error = exc

    @property
    def writing(self) -> bool:
        return self._writer is not None and self._writer.is_alive()

    def raise_if_failed(self) -> None:
        """Raise the error of a background write that has ended with one (cheap: call it every step)."""
        if self._error is not None and not self.writing:
            self.wait()

    def wait(self) -> None:
        """Wait until the background write (if any) is durable; raise the error it ended with."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

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
            _link_or_copy(data, self.dir / "best.pt")
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
        self.wait()
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
        self.wait()
        return load_weights(path)

    def best(self) -> Path | None:
        """``best.pt`` if it verifies against ``best.json``."""
        self.wait()
        meta_path = self.dir / "best.json"
        if not meta_path.exists():
            return None
        meta = self._meta(meta_path)
        return self._verified(meta, meta_path) if meta is not None else None

    def has_any(self) -> bool:
        """Whether any checkpoint file exists here (loadable or not)."""
        return any(_DATA.match(p.name) or p.name == "best.pt" for p in self.dir.iterdir())
