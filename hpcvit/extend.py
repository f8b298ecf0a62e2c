"""Extending a sweep with more configurations (``hpcvit submit SPEC --into SWEEP``).

The spec's runs are resolved as a new sweep's would be; a run whose resolved configuration is already a task of
the sweep is recognised and not trained again; the new ones become the sweep's next tasks: the same ledger,
MLflow parent run, comparison and shared view. An adaptive search is not extended (its rungs are decided over
the configurations it started with).
"""

from __future__ import annotations

import json
from typing import Any

from hpcvit.ledger import SweepDir
from hpcvit.sweep import Sweep
from hpcvit.yamlio import SpecError

_NOT_IDENTITY = ("description", "executor", "name")
"""Fields that do not make a configuration another one (where and under which name it runs)."""


def identity(spec: Any) -> str:
    """A resolved run's configuration as a comparable string (what it trains on, with what, how)."""
    doc = spec.model_dump(mode="json")
    for key in _NOT_IDENTITY:
        doc.pop(key, None)
    return json.dumps(doc, sort_keys=True)


def plan(specs: list[Any], sweep_dir: SweepDir) -> tuple[list[int], dict[int, int]]:
    """(the runs of ``specs`` that ``sweep_dir`` lacks, once each; run index -> existing task for the others)."""
    have = {identity(s): i for i, s in enumerate(sweep_dir.run_specs())}
    known = {k: have[identity(s)] for k, s in enumerate(specs) if identity(s) in have}
    fresh = [k for k in range(len(specs)) if k not in known]
    fresh = [k for n, k in enumerate(fresh) if identity(specs[k]) not in {identity(specs[j]) for j in fresh[:n]}]
    return fresh, known


def preview(sweep: Sweep, ref: str, output_dir: str | None) -> str:
    """``submit --into --dry-run``: the line :func:`extend_into` would print, as a plan; nothing is written."""
    from pathlib import Path

    from hpcvit import data
    from hpcvit.ledger import find_sweep
    from hpcvit.tables import index_ranges

    sweep_dir = find_sweep(ref, Path(output_dir or sweep.base.output_dir))
    if sweep.search is not None or sweep_dir.search() is not None:
        raise SpecError("an adaptive search cannot be extended (its rungs are decided over the configurations it "
                        "started with): submit a new sweep", file=sweep.file, line=sweep.line_of("sweep.search"),
                        field="sweep.search")
    specs = [r.spec.model_copy(update={"data": data.with_absolute_paths(r.spec.data)}) for r in sweep.runs]
    if any(r.spec.model.init_from for r in sweep.runs):
        from hpcvit.checks import init_files

        inits = init_files(sweep)
        specs = [s.model_copy(update={"model": s.model.model_copy(update={"init_from": inits.get(s.model.init_from)})})
                 for s in specs]
    fresh, known = plan(specs, sweep_dir)
    first = sweep_dir.n_tasks
    labels = ", ".join(sweep.runs[k].label for k in fresh[:8]) + (", ..." if len(fresh) > 8 else "")
    return (f"dry run: {sweep_dir.sweep_id} would get {len(fresh)} new configuration(s)"
            + (f" as task(s) {index_ranges(list(range(first, first + len(fresh))))} ({labels})" if fresh else "")
            + f"; {len(known)} already in it"
            + (f" (task(s) {index_ranges(sorted(set(known.values())))}, not trained again)" if known else "")
            + tracked_elsewhere(sweep, sweep_dir) + "; nothing was submitted")


def extend(sweep: Sweep, sweep_dir: SweepDir) -> tuple[list[int], dict[int, int]]:
    """Add ``sweep``'s configurations that ``sweep_dir`` lacks and submit them; returns (the new tasks, run
    index -> existing task for the runs already in it)."""
    from hpcvit import checks, data
    from hpcvit.objectives import get_objective

    if sweep.search is not None or sweep_dir.search() is not None:
        raise SpecError("an adaptive search cannot be extended (its rungs are decided over the configurations it "
                        "started with): submit a new sweep", file=sweep.file, line=sweep.line_of("sweep.search"),
                        field="sweep.search")
    m = sweep_dir.manifest
    checks.check_data(sweep)
    inits = checks.init_files(sweep)
    specs = [r.spec.model_copy(update={
        "data": data.with_absolute_paths(r.spec.data),
        "model": r.spec.model.model_copy(update={"init_from": inits.get(r.spec.model.init_from)})})
        for r in sweep.runs]
    fresh, known = plan(specs, sweep_dir)
    if not fresh:
        return [], known
    added = sweep_dir.append_runs([specs[k] for k in fresh], [sweep.runs[k].label for k in fresh])
    for spec in {specs[k].data.model_dump_json(): specs[k] for k in fresh}.values():
        get_objective(spec.data.task).prepare_data(spec.data, sweep_dir.root)
    extensions = [*m.get("extensions", []), {"spec_file": sweep.file, "overrides": list(sweep.overrides),
                                             "tasks": added}]
    sweep_dir.update_manifest(finalized=None, extensions=extensions)
    if m.get("parent_run_id"):
        from hpcvit.results.view import share
        from hpcvit.tracking import mlflow_client, names

        client = mlflow_client(m["tracking_uri"])
        client.update_run(m["parent_run_id"], status="RUNNING")
        client.set_tag(m["parent_run_id"], names.SUMMARY_TAG, "pending")  # made again when the new tasks end
        client.set_tag(m["parent_run_id"], names.N_TASKS_TAG, str(sweep_dir.n_tasks))
        from hpcvit.tracking.children import register_tasks

        register_tasks(sweep_dir, added)
        share(client, sweep_dir)  # the swept columns may have grown
    from hpcvit.scheduler.submission import submit

    submit(sweep_dir, added, sweep.base.executor, sweep.base)
    return added, known


def extend_into(sweep: Sweep, ref: str, output_dir: str | None) -> tuple[SweepDir, str]:
    """``submit --into``: the sweep named ``ref`` extended with ``sweep``'s new configurations, and one line
    saying what was added and what it had already."""
    from pathlib import Path

    from hpcvit.ledger import find_sweep
    from hpcvit.tables import index_ranges

    sweep_dir = find_sweep(ref, Path(output_dir or sweep.base.output_dir))
    added, known = extend(sweep, sweep_dir)
    again = f" (task(s) {index_ranges(sorted(set(known.values())))}, not trained again)" if known else ""
    return sweep_dir, (f"{sweep_dir.sweep_id}: {len(added)} new configuration(s)"
                       + (f" as task(s) {index_ranges(added)}" if added else "") + f"; {len(known)} already in it{again}"
                       + tracked_elsewhere(sweep, sweep_dir))


def tracked_elsewhere(sweep: Sweep, sweep_dir: SweepDir) -> str:
    """A note when the spec names another tracking store than the sweep's (its new tasks join the sweep's)."""
    from hpcvit.tracking import resolve_uri

    mine = sweep_dir.manifest.get("tracking_uri")
    named = resolve_uri(sweep.base.tracking.uri, sweep_dir.root.parent)
    return f"; tracked in the sweep's store {mine}, not in {named}" if mine and named != mine else ""
