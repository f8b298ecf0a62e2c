"""The local executor's side of scheduling: slots for ``array_parallelism``, jobs detached from the submitter,
and stopping a task's processes by signal (what ``scancel`` does on Slurm)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hpcvit.fsio import HeldLock
from hpcvit.scheduler.procs import pid_alive, process_alive, signal_group, signal_process


class Slot:
    """One of ``limit`` lock files under ``folder``: the local executor's stand-in for ``--array=...%K``."""

    def __init__(self, folder: Path, limit: int):
        self.dir, self.limit, self.lock = folder, limit, None

    def __enter__(self) -> Slot:
        self.acquire()
        return self

    def acquire(self, give_up: Callable[[], bool] = lambda: False) -> bool:
        """Wait for a free slot; False (no slot held) as soon as ``give_up()`` says so."""
        while not give_up():
            for k in range(self.limit):
                self.lock = HeldLock.try_acquire(self.dir / f"slot-{k}")
                if self.lock is not None:
                    return True
            time.sleep(0.5)
        return False

    def __exit__(self, *exc: Any) -> None:
        if self.lock is not None:
            self.lock.release()


@contextlib.contextmanager
def detached_stdio(log: Path) -> Iterator[None]:
    """Point fds 0-2 away from the terminal/pipe while local jobs are forked, so that they outlive the
    submitter without holding its output open (``hpcvit submit | tee`` would wait for the whole sweep)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    with open(os.devnull, "rb") as null, open(log, "ab") as out:
        os.dup2(null.fileno(), 0)
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    try:
        yield
    finally:
        for fd, copy in zip((0, 1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def stop_task(record: dict[str, Any], job_id: str) -> bool:
    """SIGTERM to a local task: its trainer's process group when its launcher runs, else the waiting job.
    ``record`` is the task's state.json; False when nothing was left to signal."""
    pgid = record.get("trainer_pgid")
    if pgid and process_alive(record.get("pid"), record.get("pid_start")):
        return signal_group(pgid, signal.SIGTERM)
    if pid_alive(job_id):
        return signal_process(int(job_id), signal.SIGTERM)
    return False
