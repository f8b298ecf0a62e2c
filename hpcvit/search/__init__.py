"""Adaptive search over a sweep's configurations: :mod:`.policy` decides (pure functions), :mod:`.driver`
carries the decisions out (the search's record, its lock, the rungs' submissions, the decision jobs)."""

from hpcvit.search.driver import (
    advance,
    after_task,
    cancel,
    live_tasks,
    ranking,
    reopen,
    resubmitted,
    rung_jobs,
    start,
    summary,
)
from hpcvit.search.policy import Decision, adaptive, decide, describe, epoch_cost, plan, rank

__all__ = ["Decision", "adaptive", "advance", "after_task", "cancel", "decide", "describe", "epoch_cost",
           "live_tasks", "plan", "rank", "ranking", "reopen", "resubmitted", "rung_jobs", "start", "summary"]
