"""Cooperative stop: a signal sets a flag; the ranks agree on it before each step (see :mod:`.loop`)."""

from __future__ import annotations

import signal
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT)
"""Signals that make the trainer save at the next step and exit (preemption, time-limit warning, Ctrl-C)."""

_received: dict[str, str] = {}


def _on_signal(signum: int, _frame: Any) -> None:
    _received.setdefault("signal", signal.Signals(signum).name)


def install_handlers() -> None:
    for sig in STOP_SIGNALS:
        signal.signal(sig, _on_signal)


def ignore_in_worker(_worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers must not die on the signals the trainer turns into a checkpoint."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def requested() -> bool:
    return "signal" in _received


def reason() -> str:
    return _received.get("signal", "signal")
