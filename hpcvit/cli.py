"""The ``hpcvit`` command line."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hpcvit.sweep import Sweep, load_sweep
from hpcvit.yamlio import SpecError

console = Console()
err = Console(stderr=True)

EXIT_INVALID = 2
_TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "PREEMPTED", "LOST"}


def _run_table(sweep: Sweep, limit: int | None) -> Table:
    keys = [k for k in (sweep.runs[0].overrides if sweep.runs else {}) if k != "model.name"]
    table = Table(title=f"{sweep.base.name}: {len(sweep.runs)} run(s) from {sweep.file}")
    for col in ("#", "model", *keys, "epochs", "batch", "ranks", "executor"):
        table.add_column(col, justify="right" if col in ("#", "epochs", "batch", "ranks") else "left")
    runs = sweep.runs
    shown = runs if limit is None or len(runs) <= limit else runs[: limit - 3] + runs[-3:]
    for i, run in enumerate(shown):
        if limit is not None and len(runs) > limit and i == limit - 3:
            table.add_row("...", f"{len(runs) - limit} more", *([""] * (len(keys) + 4)))
        s = run.spec
        r = s.resources
        table.add_row(str(run.index), s.model.name, *(str(run.overrides[k]) for k in keys), str(s.optim.epochs),
                      str(s.optim.batch_size), f"{r.nodes}x{r.procs_per_node}", s.executor)
    return table


def _load(path: str, executor: str | None = None) -> Sweep:
    sweep = load_sweep(path)
    if executor:
        # The command line overrides the spec's executor for every run.
        from hpcvit.sweep import Run

        runs = [Run(r.index, r.spec.model_copy(update={"executor": executor}), r.overrides) for r in sweep.runs]
        sweep = Sweep(sweep.file, sweep.raw, runs)
    return sweep


def cmd_validate(args: argparse.Namespace) -> int:
    sweep = _load(args.spec)
    _check_kwargs(sweep)
    console.print(_run_table(sweep, None if args.all else 40))
    console.print(f"[green]valid[/]: {len(sweep.runs)} run(s)")
    return 0


def _check_kwargs(sweep: Sweep) -> None:
    """Model kwargs are checked against the builders' signatures (imports torch only when kwargs are set)."""
    from hpcvit.models import check_model_kwargs

    seen: set[tuple[str, str]] = set()
    for run in sweep.runs:
        key = (run.spec.model.name, json.dumps(sorted(run.spec.model.kwargs)))
        if run.spec.model.kwargs and key not in seen:
            seen.add(key)
            try:
                check_model_kwargs(run.spec.model.name, run.spec.model.kwargs)
            except ValueError as exc:
                raise SpecError(str(exc), file=sweep.file, field="model.kwargs") from None


def cmd_submit(args: argparse.Namespace) -> int:
    from hpcvit.manifest import new_sweep_id

    sweep = _load(args.spec, args.executor)
    _check_kwargs(sweep)
    base = sweep.base
    kind = base.executor
    output_dir = Path(args.output_dir or base.output_dir)
    sweep_id = new_sweep_id(base.name)
    if args.dry_run:
        from hpcvit.submission import sbatch_script

        console.print(_run_table(sweep, None if args.all else 40))
        console.rule(f"sbatch script ({'would be submitted' if kind == 'slurm' else 'for --executor slurm'})")
        console.print(sbatch_script(base, output_dir / sweep_id / "submitit", len(sweep.runs)), markup=False,
                      highlight=False)
        console.print(f"[yellow]dry run[/]: nothing submitted ({len(sweep.runs)} run(s), executor {kind})")
        return 0
    sweep_dir = _create(sweep, output_dir, sweep_id, kind)
    console.print(f"submitted sweep [bold]{sweep_id}[/] ({len(sweep.runs)} task(s), executor {kind}) "
                  f"-> {sweep_dir.root}")
    if args.wait:
        return _wait_and_compare(sweep_dir, args)
    console.print(f"follow it with: hpcvit status {sweep_id}")
    return 0


def _create(sweep: Sweep, output_dir: Path, sweep_id: str, kind: str):
    """Sweep folder, data, tracking, submission; on any failure before submission nothing is left behind."""
    from hpcvit import data
    from hpcvit.manifest import create_sweep_dir
    from hpcvit.submission import submit
    from hpcvit.tracking import resolve_uri, setup_sweep

    base = sweep.base
    if base.data.format != "synthetic":
        data.prepare(base.data, output_dir)  # fails fast on missing files, before anything is written
    output_dir.mkdir(parents=True, exist_ok=True)
    # Tasks may run in another directory (a Slurm node, a requeue): their specs carry absolute paths.
    specs = [r.spec.model_copy(update={"data": data.with_absolute_paths(r.spec.data)}) for r in sweep.runs]
    sweep_dir = create_sweep_dir(output_dir, sweep_id, Path(sweep.file), specs, kind, [r.label for r in sweep.runs])
    try:
        for spec in {s.data.model_dump_json(): s for s in specs}.values():
            data.prepare(spec.data, sweep_dir.root)
        uri = resolve_uri(base.tracking.uri, output_dir)
        experiment_id, parent = setup_sweep(uri, base.tracking.experiment or base.name, sweep_id, output_dir,
                                            sweep_dir.root / "spec.yaml", len(specs), base.description)
        sweep_dir.update_manifest(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent)
    except BaseException:
        shutil.rmtree(sweep_dir.root, ignore_errors=True)
        raise
    submit(sweep_dir, list(range(len(specs))), kind, base)
    return sweep_dir


def _wait_and_compare(sweep_dir: Any, args: argparse.Namespace) -> int:
    from hpcvit.lifecycle import task_statuses

    with console.status("waiting for the tasks") as status:
        while True:
            states = [s.state for s in task_statuses(sweep_dir)]
            counts = {s: states.count(s) for s in sorted(set(states))}
            status.update(f"waiting for {len(states)} task(s): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            if all(s in _TERMINAL for s in states):
                break
            time.sleep(2)
    _finish_parent(sweep_dir)
    console.print(_status_table(sweep_dir))
    from hpcvit.compare import compare_table

    console.print(compare_table(sweep_dir, getattr(args, "metric", None)))
    return 0 if all(s == "COMPLETED" for s in states) else 1


def _finish_parent(sweep_dir: Any) -> None:
    from hpcvit.compare import finalize_parent
    from hpcvit.lifecycle import task_statuses

    states = [s.state for s in task_statuses(sweep_dir)]
    if all(s in _TERMINAL for s in states) and sweep_dir.manifest.get("parent_run_id"):
        finalize_parent(sweep_dir, all(s == "COMPLETED" for s in states))


def _status_table(sweep_dir: Any, statuses: list[Any] | None = None) -> Table:
    from hpcvit.lifecycle import task_statuses

    statuses = task_statuses(sweep_dir) if statuses is None else statuses
    metric = next((s.metric for s in statuses if s.metric), "metric")
    table = Table(title=f"sweep {sweep_dir.sweep_id} ({sweep_dir.root})")
    for col in ("#", "run", "state", "job", "restarts", "epoch", f"best {metric}", "log / message"):
        table.add_column(col, overflow="fold")
    colours = {"COMPLETED": "green", "RUNNING": "cyan", "FAILED": "red", "LOST": "red", "PREEMPTED": "yellow"}
    for s in statuses:
        epoch = f"{s.epoch}/{s.epochs}" if s.epoch is not None else ""
        best = f"{s.best_metric:.4f}" if s.best_metric is not None else ""
        note = s.message if s.state in ("FAILED", "PREEMPTED", "CANCELLED", "LOST") and s.message else \
            str(s.log.relative_to(sweep_dir.root))
        table.add_row(str(s.index), s.label, f"[{colours.get(s.state, 'white')}]{s.state}[/]", s.job_id,
                      str(s.restarts), epoch, best, escape(note))
    return table


def _sweep(args: argparse.Namespace):
    from hpcvit.manifest import find_sweep

    return find_sweep(args.sweep, Path(args.output_dir or "runs"))


def cmd_status(args: argparse.Namespace) -> int:
    from hpcvit.lifecycle import close_lost_runs, task_statuses

    sweep_dir = _sweep(args)
    statuses = task_statuses(sweep_dir)
    if args.format == "json":
        from dataclasses import asdict

        print(json.dumps([asdict(s) for s in statuses], default=str, indent=1))
    else:
        console.print(_status_table(sweep_dir, statuses))
    if any(s.state == "LOST" for s in statuses):
        close_lost_runs(sweep_dir, statuses)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from hpcvit.lifecycle import resume

    sweep_dir = _sweep(args)
    indices, job_ids = resume(sweep_dir, args.executor)
    if not indices:
        console.print(f"nothing to resume in {sweep_dir.sweep_id}: every task is finished, queued or running")
        return 0
    console.print(f"resubmitted {len(indices)} task(s) of {sweep_dir.sweep_id}: {indices} "
                  f"as job(s) {sorted(set(job_ids.values()))[:5]}")
    if args.wait:
        return _wait_and_compare(sweep_dir, args)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from hpcvit.lifecycle import cancel

    sweep_dir = _sweep(args)
    indices = cancel(sweep_dir)
    console.print(f"cancelled {len(indices)} task(s) of {sweep_dir.sweep_id}: {indices}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from hpcvit.tracking import sync_task

    sweep_dir = _sweep(args)
    m = sweep_dir.manifest
    total = 0
    for task in sweep_dir.tasks():
        sent = sync_task(m["tracking_uri"], m["experiment_id"], m["parent_run_id"], task.path, task.key,
                         task.run_name)
        if sent:
            console.print(f"task {task.index}: {sent} buffered tracking call(s) sent")
        total += sent
    console.print(f"synced {sweep_dir.sweep_id}: {total} call(s)" if total else "nothing buffered: tracking is in sync")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    sweep_dir = _sweep(args)
    log = sweep_dir.task(args.task).log
    if not log.exists():
        err.print(f"no log yet for task {args.task} of {sweep_dir.sweep_id} ({log})")
        return 1
    with open(log, "rb") as f:
        sys.stdout.buffer.write(f.read())
        sys.stdout.flush()
        while args.follow:
            chunk = f.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
            else:
                time.sleep(0.5)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from hpcvit.compare import compare_rows, compare_table, render, seed_table

    sweep_dir = _sweep(args)
    _finish_parent(sweep_dir)
    rows = compare_rows(sweep_dir, args.metric)
    if args.format == "table":
        console.print(compare_table(sweep_dir, args.metric, rows))
        over_seeds = seed_table(sweep_dir, rows)
        if over_seeds is not None:
            console.print(over_seeds)
    else:
        print(render(rows, args.format))
    if args.plot:
        from hpcvit.compare import plot_overlay

        err.print(f"ROC overlay written to {plot_overlay(sweep_dir, args.plot)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcvit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate a job spec and print its expanded runs")
    p.add_argument("spec")
    p.add_argument("--all", action="store_true", help="list every run, not the first and last ones")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("submit", help="submit a sweep as one array job")
    p.add_argument("spec")
    p.add_argument("--executor", choices=["local", "slurm"], help="override the spec's executor")
    p.add_argument("--dry-run", action="store_true", help="print the runs and the sbatch script, submit nothing")
    p.add_argument("--wait", action="store_true", help="wait for the tasks, then print the comparison")
    p.add_argument("--output-dir", help="override the spec's output_dir")
    p.add_argument("--all", action="store_true", help="list every run in the table")
    p.set_defaults(func=cmd_submit)

    def sweep_cmd(name: str, help_: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("sweep", nargs="?", help="sweep id or directory (default: the newest under runs/)")
        p.add_argument("--output-dir", help="directory holding the sweeps (default: runs)")
        p.set_defaults(func=func)
        return p

    p = sweep_cmd("status", "state of each task of a sweep", cmd_status)
    p.add_argument("--format", choices=["table", "json"], default="table")
    p = sweep_cmd("resume", "resubmit the tasks of a sweep that did not finish", cmd_resume)
    p.add_argument("--executor", choices=["local", "slurm"])
    p.add_argument("--wait", action="store_true")
    sweep_cmd("cancel", "cancel the unfinished tasks of a sweep (they checkpoint first)", cmd_cancel)
    sweep_cmd("sync", "send tracking calls buffered while MLflow was unreachable", cmd_sync)
    p = sub.add_parser("logs", help="print a task's training log")
    p.add_argument("sweep")
    p.add_argument("task", type=int)
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--output-dir")
    p.set_defaults(func=cmd_logs)
    p = sweep_cmd("compare", "compare the runs of a sweep by their metrics", cmd_compare)
    p.add_argument("--metric", help="metric to sort by (default: val_roc_auc or val_mae)")
    p.add_argument("--format", choices=["table", "csv", "json", "markdown"], default="table")
    p.add_argument("--plot", metavar="PNG", help="also write the ROC overlay of the sweep's runs to this file")

    for module in ("hpcvit.models.info", "hpcvit.data.commands", "hpcvit.ui"):
        try:
            __import__(module, fromlist=["add_parser"]).add_parser(sub)
        except ModuleNotFoundError:
            pass
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpecError as exc:
        err.print(f"[red]error[/]: {escape(str(exc))}", highlight=False)
        return EXIT_INVALID
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        err.print(f"[red]error[/]: {escape(str(exc))}", highlight=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
