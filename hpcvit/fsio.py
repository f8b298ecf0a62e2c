"""Durable file operations: atomic writes, folder fsync, advisory locks, JSON reads that name the damaged file.

Every file hpcvit writes for another process to read (ledger, markers, checkpoints, caches, generated data)
goes through :func:`atomic_path`: the content is written to a hidden temp file beside the target, flushed to
disk and renamed over it, so a reader sees the old or the new file, never a partial one. Temp files carry
:data:`TEMP_SUFFIX` so that :func:`remove_temp_files` can clear those of writers that were killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
_MISSING: Any = object()


class DamagedFileError(ValueError):
    """A file hpcvit wrote earlier cannot be read back; ``str()`` is one line naming it."""

    def __init__(self, path: Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def describe_os_error(exc: OSError) -> str:
    """One line for an I/O error: what failed, on which path (``no space left on device: /runs/x/state.json``)."""
    what = exc.strerror[:1].lower() + exc.strerror[1:] if exc.strerror else str(exc) or type(exc).__name__
    paths = [p for p in (exc.filename, exc.filename2) if p]
    return f"{what}: {' -> '.join(map(str, paths))}" if paths else what


def temp_path(path: Path) -> Path:
    """A hidden, unique temp name beside ``path`` (same folder, so the rename stays on one file system)."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}{TEMP_SUFFIX}")


def fsync_dir(path: Path, strict: bool = True) -> None:
    """Make the renames inside ``path`` durable; ``strict=False`` ignores file systems that refuse it."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if strict:
            raise


@contextlib.contextmanager
def atomic_path(path: Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a temp path to write ``path``'s new content to; on success it replaces ``path`` atomically.

    The temp file is fsynced before the rename and the folder after it (``durable``); on any error it is
    removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        if durable:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.filename is None:  # a failed write names no file: name the one being written
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from None
        raise
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent, strict=False)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb", *, durable: bool = True) -> Iterator[IO[Any]]:
    """``open(path, mode)`` whose content appears at ``path`` atomically when the block ends without error."""
    with atomic_path(path, durable=durable) as tmp, open(tmp, mode) as f:
        yield f


def write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    with atomic_open(path, "wb", durable=durable) as f:
        f.write(data)


def write_text(path: Path, text: str, *, durable: bool = True) -> None:
    write_bytes(path, text.encode(), durable=durable)


def write_json(path: Path, obj: Any, *, durable: bool = True) -> None:
    write_text(path, json.dumps(obj, indent=1, default=str) + "\n", durable=durable)


def copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's content, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def read_json(path: Path, default: Any = _MISSING) -> Any:
    """The JSON in ``path``; ``default`` when it does not exist (else FileNotFoundError).

    A file that exists but is not valid JSON raises :class:`DamagedFileError` naming it.
    """
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        if default is _MISSING:
            raise
        return default
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedFileError(path, f"cannot read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DamagedFileError(path, f"damaged JSON ({exc})") from None


def read_object(path: Path, default: Any = _MISSING) -> Any:
    """The JSON object (a mapping) in ``path``, as :func:`read_json`; any other JSON value raises
    :class:`DamagedFileError` naming the file."""
    data = read_json(path, default)
    if data is not default and not isinstance(data, dict):
        raise DamagedFileError(path, f"not a JSON object (holds {type(data).__name__})")
    return data


def read_text_lines(path: Path) -> list[str]:
    """The lines of a text file; bytes that are not UTF-8 are replaced (the line then fails its own parse,
    which names the line) instead of failing the whole file."""
    return path.read_bytes().decode("utf-8", errors="replace").splitlines()


def read_records(path: Path, valid: Callable[[Any], bool], what: str) -> list[dict[str, Any]]:
    """The JSON objects of an append-only log, one per line, that ``valid`` accepts; a torn last line (a writer
    killed mid-append) is skipped with a warning, any other bad line raises :class:`DamagedFileError` naming
    it (``what`` says what a line should be). FileNotFoundError when there is no log."""
    lines = read_text_lines(path)
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not valid(record):
                raise ValueError(f"not {what}")
        except ValueError as exc:
            if n == len(lines):
                log.warning("%s:%d: torn last line skipped (%s)", path, n, exc)
                continue
            raise DamagedFileError(path, f"line {n}: {exc}") from None
        out.append(record)
    return out


def append_line(path: Path, line: str) -> None:
    """Append one line and flush it to disk (an ``O_APPEND`` write of one line is not interleaved)."""
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def remove_temp_files(directory: Path, older_than_s: float = 0.0) -> list[Path]:
    """Delete temp files (and temp folders) that writers left in ``directory``; return what was removed.

    Call it only where no other live writer can be at work (e.g. under the lock the writers hold), or with
    ``older_than_s`` larger than any write takes.
    """
    removed = []
    now = time.time()
    try:
        entries = list(Path(directory).iterdir())
    except FileNotFoundError:
        return removed
    for p in entries:
        if not (p.name.startswith(".") and TEMP_SUFFIX in p.name):
            continue
        try:
            if now - p.lstat().st_mtime < older_than_s:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            continue
    return removed


@contextlib.contextmanager
def file_lock(path: Path, *, what: str | None = None) -> Iterator[None]:
    """Exclusive ``flock`` on ``path`` for the block (the kernel releases it if the process dies).

    With ``what``, waiting for another holder is logged (``waiting for <what>``). The lock file is kept:
    removing it would let a waiter and a newcomer lock two different files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if what:
                log.info("waiting for %s (%s is held by another process)", what, path)
            t0 = time.monotonic()
            fcntl.flock(f, fcntl.LOCK_EX)
            if what:
                log.info("%s: lock acquired after %.0f s", what, time.monotonic() - t0)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class HeldLock:
    """A non-blocking exclusive ``flock`` that stays held until :meth:`release` (or the process ends)."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    @classmethod
    def try_acquire(cls, path: Path) -> HeldLock | None:
        """The lock on ``path``, or None when another process holds it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return cls(fd, path)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def is_locked(path: Path) -> bool:
    """Whether any open file (of any process, this one included) holds the ``flock`` on ``path`` now."""
    if not Path(path).exists():
        return False
    lock = HeldLock.try_acquire(path)
    if lock is None:
        return True
    lock.release()
    return False
