"""One function over many parts in fresh processes: data cache decoding and the event generators.

The processes are spawned, not forked: the caller may hold pyarrow, torch or tracking threads, which a fork
would copy in a broken state. They hold the stop signals blocked, so a preemption that signals every process
of the job leaves the caller to decide (a trainer finishes its cache, then saves); they die with the caller.
A process that dies (the kernel's out-of-memory killer, a kill) ends the whole map with :class:`WorkerDied`
at once, where ``multiprocessing.Pool`` would replace it and wait for its lost part for ever; an error or an
early stop of the caller kills the processes rather than waiting for the parts they run.
"""

from __future__ import annotations

import functools
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any, TypeVar

from hpcvit.scheduler.procs import die_with_parent, held_signals

T = TypeVar("T")


class WorkerDied(RuntimeError):
    """A process of :func:`spawn_map` ended without returning its part."""


def _start(initializer: Callable[[], None] | None) -> None:
    die_with_parent(signal.SIGKILL)  # spawned by the caller's thread, which runs the map to its end
    if initializer is not None:
        initializer()


def spawn_map(fn: Callable[[Any], T], parts: Iterable[Any], processes: int, *, ordered: bool = True,
              initializer: Callable[[], None] | None = None, what: str = "worker") -> Iterator[T]:
    """``fn(part)`` for every part in ``processes`` spawned processes: results in the parts' order, or as
    they finish (``ordered=False``); results already taken are not kept. An exception of a part is raised
    here; then, or when the caller stops early, the processes are killed."""
    pool: ProcessPoolExecutor | None = None
    futures: deque[Future[T]] = deque()
    done = False
    try:
        with held_signals():  # the pool's queues may start the resource tracker; its processes start at submit
            pool = ProcessPoolExecutor(processes, mp_context=get_context("spawn"),
                                       initializer=functools.partial(_start, initializer))
            futures.extend(pool.submit(fn, part) for part in parts)
        if ordered:
            while futures:
                yield futures.popleft().result()
        else:
            pending = set(futures)
            futures.clear()
            for future in as_completed(pending):
                pending.discard(future)
                yield future.result()
        done = True
    except BrokenProcessPool as exc:
        raise WorkerDied(f"a {what} process ended before it finished its part (killed: out of memory? "
                         f"try fewer processes)") from exc
    finally:
        if pool is not None:
            if not done:
                # 3.11's executor has no public way to stop the parts that run; its processes are its own
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.kill()
            pool.shutdown(wait=True, cancel_futures=True)  # the parts not started are dropped
