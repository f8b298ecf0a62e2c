"""States sampled during an event: a task's true state (what ``status`` derives), its ``state.json`` and its
MLflow run's ``hpcvit.state`` tag, polled while the event happens, not only at its end."""

from __future__ import annotations

import threading
import time
from types import TracebackType

from mlflow.tracking import MlflowClient

from hpcvit.ledger import SweepDir
from hpcvit.scheduler.status import task_statuses

WAITING = {"NEW", "SUBMITTED", "QUEUED", "PENDING"}
"""States before a start: MLflow keeps SUBMITTED for all of them (it is told of starts and ends, not of queues)."""


def _same(state: str) -> str:
    return "WAITING" if state in WAITING else state


class StateSampler:
    """Polls every ``every_s`` in a thread; :attr:`late` holds the samples (seconds since start, task, (true,
    state.json, MLflow)) at which the three had disagreed for longer than ``grace_s``; :attr:`longest` the
    longest disagreement seen, in seconds."""

    def __init__(self, sweep: SweepDir, every_s: float = 0.5, grace_s: float = 5.0):
        self.sweep, self.every_s, self.grace_s = sweep, every_s, grace_s
        self.late: list[tuple[float, int, tuple[str, str, str]]] = []
        self.samples, self.longest = 0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StateSampler:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        client = MlflowClient(self.sweep.manifest["tracking_uri"])
        t0, since = time.monotonic(), {}
        while not self._stop.is_set():
            for s in task_statuses(self.sweep):
                task = self.sweep.task(s.index)
                run_id = task.run_id()
                tag = client.get_run(run_id).data.tags.get("hpcvit.state", "") if run_id else ""
                seen = (str(s.state), str(task.state().get("state", "NEW")), tag)
                now = time.monotonic()
                if len({_same(x) for x in seen}) > 1:
                    start = since.setdefault(s.index, now)
                    self.longest = max(self.longest, now - start)
                    if now - start > self.grace_s:
                        self.late.append((round(now - t0, 1), s.index, seen))
                else:
                    since.pop(s.index, None)
            self.samples += 1
            self._stop.wait(self.every_s)
