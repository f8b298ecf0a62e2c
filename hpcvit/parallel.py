"""One function over many parts in fresh processes: data cache decoding and the event generators.

The processes are spawned, not forked: the caller may hold pyarrow, torch or tracking threads, which a fork
would copy in a broken state. A process that dies (the kernel's out-of-memory killer, a kill) ends the whole
map with :class:`WorkerDied` at once; ``multiprocessing.Pool`` would replace the process and wait for the
lost part for ever.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any, TypeVar

T = TypeVar("T")


class WorkerDied(RuntimeError):
    """A process of :func:`spawn_map` ended without returning its part."""


def spawn_map(fn: Callable[[Any], T], parts: Iterable[Any], processes: int, *, ordered: bool = True,
              initializer: Callable[[], None] | None = None, what: str = "worker") -> Iterator[T]:
    """``fn(part)`` for every part in ``processes`` spawned processes: results in the parts' order, or as
    they finish (``ordered=False``). Results already taken are not kept. Parts not yet started are dropped
    when the caller stops early or a part raises (its exception is raised here)."""
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=initializer) as pool:
        pending: deque[Future[T]] = deque(pool.submit(fn, part) for part in parts)
        try:
            while pending:
                if ordered:
                    yield pending.popleft().result()
                    continue
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    pending.remove(future)
                for future in done:
                    yield future.result()
        except BrokenProcessPool:
            raise WorkerDied(f"a {what} process died before it finished its part (killed, or out of memory: "
                             f"try fewer processes)") from None
        finally:
            for future in pending:
                future.cancel()
