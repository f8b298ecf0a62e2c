"""Adaptive search, executed: one array per rung, survivors continuing from their own checkpoints.

Every configuration of the sweep is one task for its whole life (one folder, one MLflow run). Rung k is ONE
submission over the surviving task indices, each told its rung's epoch budget in ``budget.json``; the trainer
stops with a checkpoint at that epoch and writes ``rung_done.json`` (state RUNG_DONE). When the rung's last task
has ended, :func:`advance` ranks the tasks that finished by the search's metric at their rung's last epoch (ties:
the lower task index), promotes the best ``n`` of the next rung (a new budget, one new array) and ends the
others STOPPED_EARLY. Every configuration's learning-rate schedule is defined over ``max_epochs`` (it is its
``optim.epochs``), so a promotion is an exact resume.

:func:`advance` is idempotent (it holds the sweep's search lock and records each decision once in
``search.json``); whoever sees the rung end first runs it: on Slurm a one-CPU job submitted with
``--dependency=afterany:<the rung's arrays>``, on the local executor the launcher of the rung's last task, and
``status``/``wait``/``resume``/``compare`` when they find an undecided rung whose tasks all ended. What is decided
is :func:`hpcvit.search.policy.decide`'s; this module gathers its inputs, records and carries it out.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from hpcvit.ledger import SweepDir, TaskDir, now_iso
from hpcvit.scheduler.adapter import for_executor
from hpcvit.search.policy import decide, epoch_cost, plan
from hpcvit.config import JobSpec, SearchSpec
from hpcvit.states import TERMINAL, TaskState

log = logging.getLogger(__name__)



# -- the ledger's record -----------------------------------------------------------------------------------
def _rung(k: int, epochs: int, tasks: list[int]) -> dict[str, Any]:
    return {"rung": k, "epochs": epochs, "tasks": tasks, "jobs": {}, "decider": None, "decision": None}


def start(sweep_dir: SweepDir, search: SearchSpec, executor: str, spec: JobSpec) -> dict[int, str]:
    """Write the search's record and submit rung 0 (every task); task index -> job id."""
    n = sweep_dir.n_tasks
    rungs = plan(search, n, spec.optim.epochs)
    record = {"search": search.model_dump(mode="json"), "plan": [list(r) for r in rungs],
              "rungs": [_rung(0, rungs[0][0], list(range(n)))], "cancelled": False}
    sweep_dir.write_search(record)
    return _submit_rung(sweep_dir, record, list(range(n)), executor, spec)


def _submit_rung(sweep_dir: SweepDir, record: dict[str, Any], tasks: list[int], executor: str,
                 spec: JobSpec) -> dict[int, str]:
    """Budgets of the last rung's ``tasks``, their array, and who decides after them."""
    from hpcvit.scheduler.submission import PartialSubmission, submit

    rung = record["rungs"][-1]
    for i in tasks:
        sweep_dir.task(i).write_budget(rung["rung"], rung["epochs"])
    try:
        job_ids = submit(sweep_dir, tasks, executor, spec, after=after_task(sweep_dir, executor))
    except PartialSubmission as exc:
        job_ids = exc.submitted
        rung["jobs"].update({str(i): j for i, j in job_ids.items()})
        sweep_dir.write_search(record)
        raise
    rung["jobs"].update({str(i): j for i, j in job_ids.items()})
    rung["decider"] = _decision_job(sweep_dir, executor, job_ids, spec)
    sweep_dir.write_search(record)
    return job_ids


def _decision_job(sweep_dir: SweepDir, executor: str, job_ids: dict[int, str], spec: JobSpec) -> str | None:
    """A job that decides once the rung's arrays have ended, where the executor has such jobs (Slurm)."""
    if not job_ids:
        return None
    arrays = sorted({j.split("_")[0] for j in job_ids.values()})
    return for_executor(executor).after(sweep_dir.submitit_dir, Decider(str(sweep_dir.root)), arrays, spec, "decide")


def after_task(sweep_dir: SweepDir, executor: str) -> RungEnd | None:
    """What a rung's task launcher runs when its trainer ends: the decision, where no decision job does it
    (None outside a search)."""
    if sweep_dir.search() is None:
        return None
    return None if for_executor(executor).has_after_jobs else RungEnd()


def ranking(search: SearchSpec) -> str:
    """``max`` or ``min``: whether a larger value of the search's metric is better (``search.mode``, else the
    metric's registered direction)."""
    from hpcvit.objectives import metric_mode

    return search.mode or metric_mode(search.metric)


class Decider:
    """What the decision job runs (pickled by submitit): :func:`advance` on the sweep."""

    def __init__(self, sweep_root: str):
        self.sweep_root = sweep_root

    def __call__(self) -> dict[str, Any] | None:
        from pathlib import Path

        return advance(SweepDir(Path(self.sweep_root)), by=f"slurm job {os.environ.get('SLURM_JOB_ID', '?')}")


class RungEnd:
    """Handed to a rung's task launchers on an executor without decision jobs: the launcher of the rung's last
    task to end decides it (:func:`advance` does nothing while other tasks of the rung run)."""

    def __call__(self, task: TaskDir) -> None:
        advance(task.sweep, by=f"launcher of task {task.index}")


# -- the decision ------------------------------------------------------------------------------------------
def _value(sweep_dir: SweepDir, index: int, state: TaskState, metric: str) -> float | None:
    if state == TaskState.RUNG_DONE:
        marker = sweep_dir.task(index).rung_done() or {}
        value = (marker.get("metrics") or {}).get(metric)
    elif state == TaskState.COMPLETED:
        value = ((sweep_dir.task(index).progress().get("last")) or {}).get(metric)
    else:
        return None
    return float(value) if isinstance(value, (int, float)) else None


def advance(sweep_dir: SweepDir, by: str = "hpcvit") -> dict[str, Any] | None:
    """Decide the current rung if all its tasks have ended and nobody has yet: promote, stop early, submit the
    next rung. Returns the decision made here, or None (nothing to decide, or decided already)."""
    if sweep_dir.search() is None:
        return None
    with sweep_dir.lock("search"):
        record = sweep_dir.search()
        rung = record["rungs"][-1]
        if record.get("cancelled") or rung["decision"] is not None:
            return None
        from hpcvit.scheduler.status import task_statuses

        states = {s.index: s.state for s in task_statuses(sweep_dir)}
        tasks = rung["tasks"]
        if not all(states[i] in TERMINAL for i in tasks):
            return None
        search = SearchSpec.model_validate(record["search"])
        k, rungs = rung["rung"], [tuple(r) for r in record["plan"]]
        finished = [i for i in tasks if states[i] in (TaskState.RUNG_DONE, TaskState.COMPLETED)]
        lost = [i for i in tasks if i not in finished]
        values = {i: _value(sweep_dir, i, states[i], search.metric) for i in finished}
        d = decide(values, lost, k, rungs, ranking(search))
        order, promoted = d.order, d.promoted
        note = ""
        if lost:
            note = (f"{len(lost)} of {len(tasks)} task(s) did not finish rung {k} ({', '.join(str(states[i]) for i in lost)}); "
                    f"{'the ranking is' if k == len(rungs) - 1 else 'promoted among'} the {len(finished)} that finished")
        decision = {"time": now_iso(), "by": by, "metric": search.metric, "values": {str(i): values[i] for i in order},
                    "promoted": d.promoted, "stopped": d.stopped, "lost": d.lost, "completed": d.completed,
                    "note": note}
        rung["decision"] = decision
        if promoted:
            record["rungs"].append(_rung(k + 1, rungs[k + 1][0], promoted))
        sweep_dir.write_search(record)
        if note:
            log.warning("%s rung %d: %s", sweep_dir.sweep_id, k, note)
        _record_outcomes(sweep_dir, k, decision, values, order)
        if promoted:
            kind = sweep_dir.manifest["executor"]
            _submit_rung(sweep_dir, record, promoted, kind, sweep_dir.run_spec(promoted[0]))
        return decision


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _record_outcomes(sweep_dir: SweepDir, k: int, decision: dict[str, Any], values: dict[int, float | None],
                     order: list[int]) -> None:
    """state.json and the MLflow runs of the rung's tasks: promoted (SUBMITTED again), STOPPED_EARLY, lost."""
    metric = decision["metric"]
    cut = values[decision["promoted"][-1]] if decision["promoted"] else None
    outcomes: dict[int, tuple[str, TaskState | None]] = {}
    for i in decision["promoted"]:
        task = sweep_dir.task(i)
        task.clear_cancel()
        task.write_state(state=TaskState.SUBMITTED, time_limit_stops=0, stop_cause=None,
                         message=f"promoted after rung {k}: {metric}={_fmt(values[i])} (rank {order.index(i) + 1} "
                                 f"of {len(order)})")
        outcomes[i] = ("promoted", None)
    for i in decision["stopped"]:
        sweep_dir.task(i).write_state(
            state=TaskState.STOPPED_EARLY,
            message=f"not promoted after rung {k}: {metric}={_fmt(values[i])} (rank {order.index(i) + 1} of "
                    f"{len(order)}; the last promoted had {_fmt(cut)})")
        outcomes[i] = ("stopped_early", TaskState.STOPPED_EARLY)
    for i in decision["completed"]:
        outcomes[i] = ("completed", None)
    for i in decision["lost"]:
        outcomes[i] = ("lost", None)
    _tag_runs(sweep_dir, k, outcomes)


def _tag_runs(sweep_dir: SweepDir, k: int, outcomes: dict[int, tuple[str, TaskState | None]]) -> None:
    uri = sweep_dir.manifest.get("tracking_uri")
    if not uri:
        return
    from hpcvit.tracking import mlflow_client, names

    client = mlflow_client(uri)
    for i, (outcome, state) in outcomes.items():
        run_id = sweep_dir.task(i).run_id()
        if not run_id:
            continue
        try:
            client.set_tag(run_id, names.OUTCOME_TAG, outcome)
            client.set_tag(run_id, names.RUNG_TAG, str(k + 1 if outcome == "promoted" else k))
            if state is not None:  # stopped early: the run is over, by design
                client.set_tag(run_id, names.STATE_TAG, str(state))
                client.set_terminated(run_id, "FINISHED")
        except Exception as exc:  # noqa: BLE001 - the ledger holds the decision; tags are for the UI
            log.warning("could not tag the MLflow run of task %d (%s: %s)", i, type(exc).__name__, exc)


# -- cancel and resume -------------------------------------------------------------------------------------
def cancel(sweep_dir: SweepDir) -> None:
    """Stop deciding (the decision job, if queued, is cancelled): ``resume`` continues the search."""
    with sweep_dir.lock("search"):
        record = sweep_dir.search()
        if record is None:
            return
        record["cancelled"] = True
        sweep_dir.write_search(record)
    decider = record["rungs"][-1].get("decider")
    if decider and record["rungs"][-1]["decision"] is None:
        for_executor(sweep_dir.manifest["executor"]).cancel_jobs([decider])


def live_tasks(sweep_dir: SweepDir) -> set[int] | None:
    """The tasks a resume may resubmit: those of the undecided current rung (None outside a search)."""
    record = sweep_dir.search()
    if record is None:
        return None
    rung = record["rungs"][-1]
    return set() if rung["decision"] is not None else set(rung["tasks"])


def reopen(sweep_dir: SweepDir) -> None:
    """``resume``'s first step: rungs are decided again (after a ``cancel``)."""
    with sweep_dir.lock("search"):
        record = sweep_dir.search()
        if record is not None and record.get("cancelled"):
            record["cancelled"] = False
            sweep_dir.write_search(record)


def resubmitted(sweep_dir: SweepDir, job_ids: dict[int, str], executor: str, spec: JobSpec) -> None:
    """Record a resume's jobs in the current rung and a new decision job after them (where there are such)."""
    with sweep_dir.lock("search"):
        record = sweep_dir.search()
        rung = record["rungs"][-1]
        rung["jobs"].update({str(i): j for i, j in job_ids.items()})
        rung["decider"] = _decision_job(sweep_dir, executor, job_ids, spec) or rung.get("decider")
        sweep_dir.write_search(record)


# -- what compare shows ------------------------------------------------------------------------------------
def summary(sweep_dir: SweepDir) -> list[str]:
    """One line per rung (who was promoted, with which value) and the epochs spent vs the full grid."""
    record = sweep_dir.search()
    if record is None:
        return []
    labels = sweep_dir.labels
    lines = []
    for rung in record["rungs"]:
        d = rung["decision"]
        head = f"rung {rung['rung']} ({rung['epochs']} epochs, {len(rung['tasks'])} task(s))"
        if d is None:
            lines.append(f"{head}: running" + (" (search cancelled)" if record.get("cancelled") else ""))
            continue
        values = {int(i): v for i, v in d["values"].items()}

        def who(i: int, values: dict[int, Any] = values, metric: str = d["metric"]) -> str:
            v = values.get(i)
            return f"#{i} {labels[i] if i < len(labels) else ''} ({metric} {'n/a' if v is None else f'{v:.4f}'})"

        if d["completed"] or not d["promoted"] and not d["stopped"]:
            text = f"completed: {', '.join(who(i) for i in d['completed'][:3])}" + (" ..." if len(d["completed"]) > 3 else "")
        else:
            text = f"promoted {', '.join(who(i) for i in d['promoted'])}; stopped early {len(d['stopped'])}"
        if d["lost"]:
            text += f"; lost {d['lost']} ({d['note']})"
        lines.append(f"{head}, decided {d['time']} by {d['by']}: {text}")
    full = sweep_dir.n_tasks * record["plan"][-1][0]
    spent = sum(int(t.progress().get("epoch") or 0) for t in sweep_dir.tasks())
    planned = epoch_cost([tuple(r) for r in record["plan"]])
    lines.append(f"epochs trained {spent} (plan: at most {planned}) vs {full} for the full grid "
                 f"({100 * spent / max(full, 1):.0f}%)")
    return lines


def rung_jobs(sweep_dir: SweepDir) -> dict[int, str]:
    """Task index -> job id of the current rung's submission."""
    record = sweep_dir.search() or {"rungs": [{"jobs": {}}]}
    return {int(i): j for i, j in record["rungs"][-1]["jobs"].items()}
