"""Successive halving as pure functions: the rungs of a plan, their cost, and the decision at a rung's end.

Nothing here reads or writes files, takes locks or submits jobs (:mod:`hpcvit.search.driver` does); the same
values give the same decision, so the policy is tested on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hpcvit.config import SearchSpec

Rung = tuple[int, int]
"""(epoch budget, configurations) of one rung."""


def adaptive(search: SearchSpec | None) -> bool:
    """Whether a sweep's search runs in rungs (``random`` only draws the configurations)."""
    return search is not None and search.method == "halving"


def plan(search: SearchSpec, n: int, max_epochs: int) -> list[Rung]:
    """(epoch budget, configurations) of each rung: ``min_epochs * eta**k`` epochs below ``max_epochs``, then
    ``max_epochs``; each rung keeps ``1/eta`` of the previous one, and a lone survivor goes straight to the last."""
    if not adaptive(search):
        return [(max_epochs, n)]
    budgets = []
    epochs = search.min_epochs
    while epochs < max_epochs:
        budgets.append(epochs)
        epochs *= search.eta
    budgets.append(max_epochs)
    if n == 1:
        return [(max_epochs, 1)]
    rungs, size = [(budgets[0], n)], n
    for budget in budgets[1:]:
        size = max(1, size // search.eta)
        if size == 1:
            rungs.append((max_epochs, 1))
            break
        rungs.append((budget, size))
    return rungs


def epoch_cost(rungs: list[Rung]) -> int:
    """Most epochs the rungs can cost: each rung's survivors train only the epochs beyond the previous budget."""
    cost, before = 0, 0
    for epochs, size in rungs:
        cost += size * (epochs - before)
        before = epochs
    return cost


def describe(search: SearchSpec, n: int, max_epochs: int, mode: str) -> str:
    """The rungs and their cost against the full grid, in one line (validate and dry-run print it)."""
    rungs = plan(search, n, max_epochs)
    full = n * max_epochs
    if not adaptive(search):
        return f"random search: {n} configuration(s) drawn (seed {search.seed}), each {max_epochs} epochs"
    cost = epoch_cost(rungs)
    steps = ", ".join(f"rung {k}: {size} x {epochs} epochs" for k, (epochs, size) in enumerate(rungs))
    return (f"successive halving by {search.metric} ({mode}), eta {search.eta}: {steps}; at most "
            f"{cost} epochs vs {full} for the full grid ({100 * cost / max(full, 1):.0f}%)")


def rank(values: dict[int, float | None], mode: str) -> list[int]:
    """Task indices best first by ``mode`` (``max``/``min``); NaN and missing values last; ties: lower index."""
    def key(i: int) -> tuple[int, float, int]:
        v = values[i]
        if v is None or math.isnan(v):
            return (1, 0.0, i)
        return (0, -v if mode == "max" else v, i)

    return sorted(values, key=key)


@dataclass(frozen=True)
class Decision:
    """What happens to a rung's configurations."""

    order: list[int]
    """The configurations that finished the rung, best first."""
    promoted: list[int] = field(default_factory=list)
    """Go on to the next rung."""
    stopped: list[int] = field(default_factory=list)
    """End here (STOPPED_EARLY)."""
    completed: list[int] = field(default_factory=list)
    """The last rung's configurations, ranked: the search is over."""
    lost: list[int] = field(default_factory=list)
    """Did not finish the rung (failed, lost, cancelled): neither ranked nor promoted."""


def decide(values: dict[int, float | None], lost: list[int], rung: int, rungs: list[Rung], mode: str) -> Decision:
    """The decision at the end of rung ``rung`` of ``rungs``: ``values`` are the metric of each configuration
    that finished it (None: missing), ``lost`` those that did not; the best ``rungs[rung + 1][1]`` go on."""
    order = rank(values, mode)
    if rung == len(rungs) - 1:
        return Decision(order, completed=order, lost=list(lost))
    keep = min(rungs[rung + 1][1], len(order))
    return Decision(order, promoted=order[:keep], stopped=order[keep:], lost=list(lost))
