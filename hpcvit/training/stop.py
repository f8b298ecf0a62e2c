"""Cooperative stop: a signal sets a flag; the ranks agree on it before each step (see :mod:`.loop`)."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from hpcvit.scheduler import procs

ORPHAN_GRACE_S = 60.0
"""How long a rank whose torchrun agent died may go on (to finish saving) before it exits by itself."""

STOP_SIGNALS = procs.STOP_SIGNALS
"""Signals that make the trainer save at the next step and exit (preemption, time-limit warning, Ctrl-C)."""

_received: dict[str, str] = {}


def _on_signal(signum: int, _frame: Any) -> None:
    _received.setdefault("signal", signal.Signals(signum).name)


def install_handlers() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)


def ignore_in_worker(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers must not die on the signals the trainer turns into a checkpoint.

    A worker starts with them blocked (from its fork server); once ignored, the ones that came meanwhile are
    dropped as they are unblocked.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def watch_parent(grace_s: float = ORPHAN_GRACE_S) -> int:
    """Exit this process ``grace_s`` seconds after its parent (the torchrun agent) dies, whatever it is doing.

    The parent-death signal asks the rank to save and exit at its next step; a rank blocked in a collective
    with a dead peer, or in the rendezvous with a dead agent, never reaches one, and would otherwise live on
    for the collective timeout. Returns the parent's pid (a process whose parent changed is an orphan).
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        time.sleep(grace_s)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="hpcvit-parent-watch", daemon=True).start()
    return parent


def orphaned(parent: int) -> bool:
    return os.getppid() != parent


def requested() -> bool:
    return "signal" in _received


def reason() -> str:
    return _received.get("signal", "signal")
