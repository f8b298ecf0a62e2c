"""Where a trainer's start-up time goes: marks from the process's start to its first training step.

The clock starts when the kernel started the process (``/proc/self/stat``), so the interpreter's own start
counts too; each :func:`mark` closes a phase. The trainer logs the phases once, after its first step.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def process_started() -> float:
    """Wall-clock time at which this process started (10 ms resolution); now where /proc is missing."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return time.time()
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")

_START = process_started()
_marks: list[tuple[str, float]] = []


def mark(phase: str) -> None:
    """End ``phase`` now."""
    _marks.append((phase, time.time()))


def phases() -> list[tuple[str, float]]:
    """(phase, seconds) in order, from the process's start."""
    out, last = [], _START
    for name, t in _marks:
        out.append((name, max(t - last, 0.0)))
        last = t
    return out


def total() -> float:
    return (_marks[-1][1] if _marks else time.time()) - _START


def summary() -> str:
    """``4.21 s (python 0.05, torch 2.10, ...)``."""
    return f"{total():.2f} s (" + ", ".join(f"{name} {s:.2f}" for name, s in phases()) + ")"
