"""Processes on this machine: liveness that survives pid reuse, and signals to whole process groups."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

_PR_SET_PDEATHSIG = 1

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)
"""Signals that ask a job to stop: preemption or ``scancel``, the time-limit warning, Ctrl-C. Slurm sends
them to every process of the job step, helpers included."""


def process_start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (guards against pid reuse); None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def process_alive(pid: int | None, start: int | None) -> bool:
    """Whether the process ``pid`` that started at ``start`` (see :func:`process_start_time`) still runs."""
    return pid is not None and start is not None and process_start_time(pid) == start


def pid_alive(pid: int | str | None) -> bool:
    """Whether some process ``pid`` runs now (no guard against reuse: for short-lived checks)."""
    return pid is not None and str(pid).isdigit() and process_start_time(int(pid)) is not None


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, loaded once. A parent that forks with threads running loads it first, so that its
    child's :func:`die_with_parent` (a ``preexec_fn``) only calls into it and never takes the loader's lock."""
    return ctypes.CDLL("libc.so.6", use_errno=True)


@contextlib.contextmanager
def held_signals(signals: tuple[signal.Signals, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Processes started in this block start with ``signals`` blocked (they stay pending, never delivered,
    until the process unblocks them), and so does multiprocessing's resource tracker if this starts it: its
    own guard unblocks SIGINT and SIGTERM again on its way out, and it dies on SIGUSR2. The calling thread
    gets its signals when the block ends."""
    from multiprocessing import resource_tracker

    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        resource_tracker.ensure_running()
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Have the kernel send ``sig`` to this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    Call it first thing in a child. If the parent died before the call (the child was re-parented), the
    signal is sent at once.
    """
    parent = os.getppid()
    libc().prctl(_PR_SET_PDEATHSIG, int(sig))
    if os.getppid() != parent or parent == 1:
        os.kill(os.getpid(), sig)


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to process group ``pgid``; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def signal_process(pid: int, sig: signal.Signals) -> bool:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
        return True
    return False
