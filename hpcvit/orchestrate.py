"""The library API of a sweep's life: check, create and submit, watch, finalise, resume, cancel, sync.

The command line, the tests and the benchmarks all go through these functions; ``hpcvit.cli`` only parses
arguments and prints what they return.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from hpcvit.checks import check_data, init_files, tracking_error
from hpcvit.ledger import SweepDir, create_sweep_dir, new_sweep_id
from hpcvit.states import FINAL, RESUMABLE, TERMINAL, TaskState
from hpcvit.scheduler.status import TaskStatus, task_statuses
from hpcvit.sweep import Sweep

log = logging.getLogger(__name__)


def sbatch_preview(sweep: Sweep, output_dir: Path | None = None) -> list[tuple[range, str]]:
    """(task indices, sbatch script) of each array submitit would write for this sweep (nothing is created or
    submitted)."""
    from hpcvit.scheduler.slurm import sbatch_scripts

    base = sweep.base
    folder = Path(output_dir or base.output_dir) / new_sweep_id(base.name) / "submitit"
    return sbatch_scripts(base, folder, len(sweep.runs))


def array_plan(sweep: Sweep) -> str:
    """How the sweep goes to the scheduler, in one line (validate and dry-run print it)."""
    from hpcvit.scheduler.adapter import for_executor

    return for_executor(sweep.base.executor).plan(len(sweep.runs), sweep.base, _adaptive(sweep))


def _adaptive(sweep: Sweep) -> bool:
    from hpcvit.search import adaptive

    return adaptive(sweep.search)


def search_plan(sweep: Sweep) -> str | None:
    """The search's rungs and their most epochs vs the full grid, in one line; None without a search."""
    if sweep.search is None:
        return None
    from hpcvit.search import describe, ranking

    return describe(sweep.search, len(sweep.runs), sweep.base.optim.epochs, ranking(sweep.search))


def create_sweep(sweep: Sweep, output_dir: Path | None = None, *, submit: bool = True,
                 tracking: bool = True) -> SweepDir:
    """Sweep folder, data, tracking (experiment and parent run), then the submission of every task.

    On any failure before submission nothing is left behind. ``submit=False`` stops before submitting (the
    tasks can then be run in-process); ``tracking=False`` also skips MLflow.
    """
    from hpcvit import data

    base = sweep.base
    output_dir = Path(output_dir or base.output_dir)
    check_data(sweep)  # fails fast on data the spec does not fit, before anything is written
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)
    # Tasks may run in another directory (a Slurm node, a requeue): their specs carry absolute paths.
    inits = init_files(sweep)
    specs = [r.spec.model_copy(update={
        "data": data.with_absolute_paths(r.spec.data),
        "model": r.spec.model.model_copy(update={"init_from": inits.get(r.spec.model.init_from)})})
        for r in sweep.runs]
    sweep_dir = create_sweep_dir(output_dir, new_sweep_id(base.name), Path(sweep.file), specs, base.executor,
                                 [r.label for r in sweep.runs])
    if sweep.overrides:
        sweep_dir.update_manifest(overrides=list(sweep.overrides))
    try:
        from hpcvit.objectives import get_objective

        for spec in {s.data.model_dump_json(): s for s in specs}.values():
            get_objective(spec.data.task).prepare_data(spec.data, sweep_dir.root)
        if tracking:
            from hpcvit.tracking import resolve_uri, setup_sweep

            uri = resolve_uri(base.tracking.uri, output_dir)
            try:
                experiment_id, parent = setup_sweep(uri, base.tracking.experiment or base.name, sweep_dir.sweep_id,
                                                    output_dir, sweep_dir.root / SweepDir.SPEC, len(specs),
                                                    base.description)
                sweep_dir.update_manifest(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent)
                from hpcvit.tracking.children import register_tasks

                register_tasks(sweep_dir, list(range(len(specs))))
            except Exception as exc:  # noqa: BLE001 - one line for whatever the tracking store answered
                raise tracking_error(sweep, uri, exc) from None
            from hpcvit.results.view import share
            from hpcvit.tracking import mlflow_client

            client = mlflow_client(uri)
            share(client, sweep_dir)  # the UI's view of this sweep: hpcvit ui prints its URL
            if sweep.overrides:
                client.set_tag(parent, "hpcvit.overrides", " ".join(sweep.overrides))
    except BaseException:
        shutil.rmtree(sweep_dir.root, ignore_errors=True)
        if created:
            _remove_if_empty(output_dir)
        raise
    if submit:
        from hpcvit.scheduler.submission import PartialSubmission
        from hpcvit.scheduler.submission import submit as submit_tasks

        try:
            if _adaptive(sweep):
                from hpcvit import search

                search.start(sweep_dir, sweep.search, base.executor, base)
            else:
                submit_tasks(sweep_dir, list(range(len(specs))), base.executor, base)
        except PartialSubmission:
            raise  # the ledger holds what went in; resume submits the rest
        except BaseException:
            _discard(sweep_dir)  # nothing went in: leave nothing behind
            raise
    return sweep_dir


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` (made by this submission) when nothing but an empty tracking store is in it."""
    try:
        left = [p for p in folder.iterdir() if p.name not in ("mlflow.db", "mlartifacts")]
        if not left:
            shutil.rmtree(folder)
    except OSError:
        pass


def _discard(sweep_dir: SweepDir) -> None:
    """Remove a sweep none of whose tasks was submitted: its folder, and its runs in MLflow."""
    m = sweep_dir.manifest
    if m.get("parent_run_id"):
        try:
            from hpcvit.tracking import mlflow_client

            client = mlflow_client(m["tracking_uri"])
            for run_id in [*sweep_dir.task_runs().values(), m["parent_run_id"]]:
                client.delete_run(run_id)
        except Exception as exc:  # noqa: BLE001 - the folder goes anyway; the run is marked FAILED if it can be
            log.warning("could not delete the sweep's MLflow run %s (%s)", m["parent_run_id"], exc)
    shutil.rmtree(sweep_dir.root, ignore_errors=True)


def statuses(sweep_dir: SweepDir) -> list[TaskStatus]:
    return task_statuses(sweep_dir)


def all_terminal(states: list[TaskStatus]) -> bool:
    return all(s.state in TERMINAL for s in states)


def wait(sweep_dir: SweepDir, on_update: Callable[[list[TaskStatus]], None] | None = None,
         poll_s: float = 2.0) -> list[TaskStatus]:
    """Poll until no task is queued or running; ``on_update`` sees every poll. Finalises the sweep."""
    while True:
        current = task_statuses(sweep_dir)
        if on_update is not None:
            on_update(current)
        if all_terminal(current):
            if _decide(sweep_dir):  # a search's rung ended: its next rung may have been submitted
                current = task_statuses(sweep_dir)
                if not all_terminal(current):
                    continue
            break
        time.sleep(poll_s)
    finalize(sweep_dir, current)
    return current


RECONCILED = frozenset({TaskState.LOST, TaskState.CANCELLED, TaskState.TIMEOUT})
"""Terminal states that status derives when the record is stale (nobody was left to write them)."""


def reconcile(sweep_dir: SweepDir, current: list[TaskStatus]) -> int:
    """Write the true state where the record lags behind it (a LOST task, a job scancel'led or out of requeues):
    into state.json and onto the MLflow run (closed KILLED), so that status, state.json and MLflow agree."""
    fixed = 0
    for s in current:
        if s.state == TaskState.COMPLETED and s.recorded != s.state:
            # the trainer's result is written; its launcher records the same in a moment, unless it is gone
            sweep_dir.task(s.index).write_state(state=s.state, message="")
            fixed += 1
        elif s.state in RECONCILED and s.recorded != s.state:
            sweep_dir.task(s.index).write_state(state=s.state, message=s.message)
            if sweep_dir.manifest.get("tracking_uri"):
                from hpcvit.tracking.upkeep import close_stale_run

                close_stale_run(sweep_dir, s.index, s.state)
            fixed += 1
    return fixed


def _decide(sweep_dir: SweepDir) -> bool:
    """Decide a search's ended rung if nobody has yet (idempotent); True for a sweep with a search."""
    if sweep_dir.search() is None:
        return False
    from hpcvit import search

    search.advance(sweep_dir, by="hpcvit")
    return True


def finalize(sweep_dir: SweepDir, current: list[TaskStatus] | None = None) -> list[TaskStatus]:
    """:func:`reconcile` stale records, decide a search's ended rung, and, once every task is terminal, close the
    sweep's parent run (with its summary table and ROC overlay). Returns the tasks' statuses after all that (a
    decided rung changes them: what a caller prints must be these)."""
    current = task_statuses(sweep_dir) if current is None else current
    reconcile(sweep_dir, current)
    if all_terminal(current) and _decide(sweep_dir):
        current = task_statuses(sweep_dir)
    m = sweep_dir.manifest
    if not (all_terminal(current) and m.get("parent_run_id")):
        return current
    # as a task's run reads (FAILED if one failed; a sweep cancelled, preempted or lost reads KILLED)
    outcome = ("FINISHED" if all(s.state in FINAL for s in current)
               else "FAILED" if any(s.state == TaskState.FAILED for s in current) else "KILLED")
    if m.get("finalized") == outcome:  # done by whoever looked first (status, compare, wait, resume)
        return current
    from hpcvit.results.compare import finalize_parent
    from hpcvit.tracking.upkeep import pending_buffers, replay_buffers

    replay_buffers(sweep_dir)  # the summary is made from every call the tasks logged
    if not pending_buffers(sweep_dir):
        finalize_parent(sweep_dir, outcome)
        sweep_dir.update_manifest(finalized=outcome)
    return current


def finalize_noting(sweep_dir: SweepDir, current: list[TaskStatus] | None = None
                    ) -> tuple[list[TaskStatus], list[str]]:
    """:func:`finalize` for a command that reads a sweep: a tracking store that does not answer now is a note
    (MLflow is brought up to date by the next look), not an error; tasks with buffered calls are one too."""
    from hpcvit.tracking.outage import outage_line
    from hpcvit.tracking.upkeep import buffered_note

    notes = []
    try:
        current = finalize(sweep_dir, current)
    except Exception as exc:
        line = outage_line(exc)
        if line is None:
            raise
        current = task_statuses(sweep_dir) if current is None else current
        notes.append(f"tracking ({sweep_dir.manifest.get('tracking_uri')}): {line}; MLflow is brought up to date "
                     "once it can be")
    note = buffered_note(sweep_dir)
    return current, [*notes, *([note] if note else [])]


def resume(sweep_dir: SweepDir, executor: str | None = None, only: list[int] | None = None
           ) -> tuple[list[int], dict[int, str]]:
    """Resubmit, as one new array, every task (of ``only``, when given) that is neither finished nor
    queued/running.

    Holds the sweep's resume lock while it decides and submits, so two ``resume`` calls at once cannot
    submit a task twice: the second sees the first one's submission as queued or running.
    """
    from hpcvit.scheduler.adapter import for_executor
    from hpcvit.scheduler.submission import submit

    with sweep_dir.lock("resume"):
        current = task_statuses(sweep_dir)
        if only is not None:
            unknown = sorted(set(only) - {s.index for s in current})
            if unknown:
                raise ValueError(f"--tasks: sweep {sweep_dir.sweep_id} has no task {unknown[0]} (it has "
                                 f"{len(current)}: 0-{len(current) - 1})")
            done = [s for s in current if s.index in only and s.state not in RESUMABLE and s.state != TaskState.HELD]
            if done:
                raise ValueError(f"--tasks: task {done[0].index} is {done[0].state}, nothing to resume (only "
                                 f"failed, cancelled, preempted, lost or held tasks are)")
            current = [s for s in current if s.index in only]
        held = [s for s in current if s.state == TaskState.HELD]
        for kind in sorted({s.executor for s in held}):  # held by the scheduler (a launch failure after a node
            jobs = [s.job_id for s in held if s.executor == kind]  # came back): released, they run again
            for_executor(kind).release(jobs)
            log.info("released %d held job(s) of %s: %s", len(jobs), sweep_dir.sweep_id, jobs)
        promoted: dict[int, str] = {}
        if sweep_dir.search() is not None:  # a search continues where it stopped: its current rung only
            from hpcvit import search

            search.reopen(sweep_dir)
            live = search.live_tasks(sweep_dir) or set()
            # the current rung's unfinished tasks are resubmitted; with none left, the rung is decided now
            ended = not any(s.state in RESUMABLE for s in current if s.index in live)
            decision = search.advance(sweep_dir, by="hpcvit resume") if ended else None
            if decision and decision["promoted"]:
                jobs = search.rung_jobs(sweep_dir)
                promoted = {i: jobs.get(i, "") for i in decision["promoted"]}
                current = task_statuses(sweep_dir)
            live = search.live_tasks(sweep_dir) or set()
            current = [s for s in current if s.index in live or s.state == TaskState.HELD]
        todo = [s for s in current if s.state in RESUMABLE]
        if not todo:
            if promoted:
                _reopen_parent(sweep_dir)
                sweep_dir.update_manifest(finalized=None)
            return [*(s.index for s in held), *promoted], {**{s.index: s.job_id for s in held}, **promoted}
        if sweep_dir.manifest.get("tracking_uri"):
            from hpcvit.tracking.upkeep import mark_submitted

            mark_submitted(sweep_dir, [s.index for s in todo])  # MLflow says they wait, as status will
        for s in todo:
            task = sweep_dir.task(s.index)
            task.clear_cancel()
            if task.path.exists():
                task.write_state(state=TaskState.SUBMITTED, message=f"resubmitted after {s.state}",
                                 time_limit_stops=0, stop_cause=None)
        kind = executor or sweep_dir.manifest["executor"]
        indices = [s.index for s in todo]
        after = None
        if sweep_dir.search() is not None:
            from hpcvit import search

            after = search.after_task(sweep_dir, kind)
        job_ids = submit(sweep_dir, indices, kind, sweep_dir.run_spec(indices[0]), after=after)
        if sweep_dir.search() is not None:
            search.resubmitted(sweep_dir, job_ids, kind, sweep_dir.run_spec(indices[0]))
        updates = {"finalized": None}  # the sweep runs again: its parent run will be finalised again
        _reopen_parent(sweep_dir)
        if kind != sweep_dir.manifest["executor"]:
            updates["executor"] = kind
        sweep_dir.update_manifest(**updates)
        job_ids.update({s.index: s.job_id for s in held})
        return [*(s.index for s in held), *indices], job_ids


def _reopen_parent(sweep_dir: SweepDir) -> None:
    """A resumed sweep's parent run is RUNNING again, its summary to be logged anew when the last task ends."""
    m = sweep_dir.manifest
    if not m.get("parent_run_id"):
        return
    from hpcvit.tracking import mlflow_client, names

    client = mlflow_client(m["tracking_uri"])
    client.update_run(m["parent_run_id"], status="RUNNING")
    client.set_tag(m["parent_run_id"], names.SUMMARY_TAG, "pending")


def cancel(sweep_dir: SweepDir) -> list[int]:
    """Stop every unfinished task; the trainers save a checkpoint first, so ``resume`` continues them."""
    from hpcvit.scheduler.adapter import for_executor

    if sweep_dir.search() is not None:  # no rung is decided (nor submitted) until resume
        from hpcvit import search

        search.cancel(sweep_dir)
    active = [s for s in task_statuses(sweep_dir) if s.state not in TERMINAL | RESUMABLE]
    for s in active:
        sweep_dir.task(s.index).request_cancel()
    for kind in sorted({s.executor for s in active if s.executor}):
        for_executor(kind).stop([(s.job_id, sweep_dir.task(s.index).state()) for s in active if s.executor == kind])
    return [s.index for s in active]


def sync(sweep_dir: SweepDir) -> dict[int, int]:
    """Send every task's buffered tracking calls; task index -> calls sent (tasks with none left out). A sweep
    summarised before they landed has its summary made again."""
    from hpcvit.tracking import names, mlflow_client
    from hpcvit.tracking.upkeep import replay_buffers

    sent = replay_buffers(sweep_dir)
    m = sweep_dir.manifest
    if sent and m.get("finalized"):
        mlflow_client(m["tracking_uri"]).set_tag(m["parent_run_id"], names.SUMMARY_TAG, "pending")
        sweep_dir.update_manifest(finalized=None)
        finalize(sweep_dir)
    return sent
