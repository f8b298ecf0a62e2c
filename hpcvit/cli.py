"""The ``hpcvit`` command line: it parses arguments, calls :mod:`hpcvit.orchestrate`, and prints."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hpcvit.fsio import DamagedFileError, describe_os_error
from hpcvit.states import EXECUTORS, FINAL, TaskState
from hpcvit.sweep import Sweep, check_script_path, load_sweep
from hpcvit.tables import (
    RECORD_FORMATS,
    index_ranges,
    parse_ranges,
    Column,
    console_width,
    duration,
    fit,
    records_text,
    stdout_console,
)
from hpcvit.yamlio import SpecError, UsageError

# In a pipe nothing wraps (a script, a CSV, a file:line error must survive `> file`, `| grep`); on a terminal
# tables fit its width (hpcvit.tables).
console = stdout_console()
err = Console(stderr=True, soft_wrap=True)  # one line per message, whatever the width: grep-able file:line

EXIT_INVALID = 2
SUBCOMMAND_MODULES = ("hpcvit.models.info", "hpcvit.data.commands", "hpcvit.results.ui", "hpcvit.inference.commands",
                      "hpcvit.tracking.serve")
"""Modules that add their own sub-commands (``add_parser(subparsers)``)."""

_COLOURS = {TaskState.COMPLETED: "green", TaskState.RUNNING: "cyan", TaskState.FAILED: "red", TaskState.LOST: "red",
            TaskState.PREEMPTED: "yellow", TaskState.HELD: "yellow"}
_SHOW_MESSAGE = {TaskState.FAILED, TaskState.PREEMPTED, TaskState.CANCELLED, TaskState.LOST, TaskState.HELD,
                 TaskState.TIMEOUT}


def _run_table(sweep: Sweep, limit: int | None, out: Console) -> Table:
    keys = [k for k in (sweep.runs[0].overrides if sweep.runs else {}) if k != "model.name"]
    columns = [Column("#", numeric=True), Column("model"), *(Column(k.rsplit(".", 1)[-1], priority=1) for k in keys),
               Column("epochs", numeric=True, priority=2), Column("batch", numeric=True, priority=3),
               Column("ranks", numeric=True, priority=4), Column("executor", priority=5)]
    runs = sweep.runs
    shown = runs if limit is None or len(runs) <= limit else runs[: limit - 3] + runs[-3:]
    rows = []
    for i, run in enumerate(shown):
        if limit is not None and len(runs) > limit and i == limit - 3:
            rows.append(["...", f"{len(runs) - limit} more", *([""] * (len(keys) + 4))])
        s = run.spec
        r = s.resources
        rows.append([str(run.index), s.model.name, *(escape(str(run.overrides[k])) for k in keys),
                     str(s.optim.epochs), str(s.optim.batch_size), f"{r.nodes}x{r.procs_per_node}", s.executor])
    return fit(f"{sweep.base.name}: {len(sweep.runs)} run(s) from {sweep.file}", columns, rows, console_width(out))


def _status_table(sweep_dir: Any, statuses: list[Any], out: Console) -> Table:
    metric = next((s.metric for s in statuses if s.metric), "metric")
    columns = [Column("#", numeric=True), Column("run", priority=2), Column("state", min_width=9),
               Column("job", priority=3), Column("restarts", numeric=True, priority=4),
               Column("epoch", numeric=True, priority=1), Column(f"best {metric.removeprefix('val_')}", numeric=True),
               Column("ETA", numeric=True, priority=3), Column("log / message", priority=1, min_width=12)]
    rows = []
    for s in statuses:
        epoch = f"{s.epoch}/{s.epochs}" if s.epoch is not None else ""
        best = f"{s.best_metric:.4f}" if s.best_metric is not None else ""
        note = s.message if s.state in _SHOW_MESSAGE and s.message else os.path.relpath(s.log, sweep_dir.root)
        rows.append([str(s.index), escape(s.label), f"[{_COLOURS.get(s.state, 'white')}]{s.state}[/]", s.job_id,
                     str(s.restarts), epoch, best, duration(s.eta_s), escape(note)])
    return fit(f"sweep {sweep_dir.sweep_id}", columns, rows, console_width(out))


def _load(path: str, executor: str | None = None, data: bool = True, overrides: list[str] | None = None
          ) -> tuple[Sweep, list[str]]:
    """The validated sweep (``KEY=VALUE`` overrides applied) and what was checked beyond the spec (the data)."""
    from hpcvit.checks import check_sweep

    sweep = load_sweep(path, overrides)
    if executor:
        sweep = sweep.with_executor(executor)
    return sweep, check_sweep(sweep, data=data)


def _sweep(args: argparse.Namespace):
    from hpcvit.ledger import find_sweep

    return find_sweep(args.sweep, Path(args.output_dir or "runs"))


def _run_records(sweep: Sweep) -> list[dict[str, Any]]:
    """One record per run: its index, model, swept values (by their dotted field names) and resources."""
    out = []
    for run in sweep.runs:
        s, r = run.spec, run.spec.resources
        out.append({"index": run.index, "model": s.model.name,
                    **{k: v for k, v in run.overrides.items() if k != "model.name"},
                    "epochs": s.optim.epochs, "batch_size": s.optim.batch_size, "nodes": r.nodes,
                    "procs_per_node": r.procs_per_node, "executor": s.executor})
    return out


def cmd_validate(args: argparse.Namespace) -> int:
    from hpcvit.orchestrate import array_plan, search_plan

    sweep, checked = _load(args.spec, data=not args.no_data, overrides=args.overrides)
    info = err if args.format in RECORD_FORMATS else console  # with json|csv stdout holds the records alone
    if args.format in RECORD_FORMATS:
        sys.stdout.write(records_text(_run_records(sweep), args.format))
    else:
        console.print(_run_table(sweep, None if args.all else 40, console))
    for line in checked:
        info.print(f"[green]checked[/] {escape(line)}")
    info.print(f"[green]plan[/] {escape(array_plan(sweep))}")
    search = search_plan(sweep)
    if search:
        info.print(f"[green]search[/] {escape(search)}")
    info.print(f"[green]valid[/]: {len(sweep.runs)} run(s)")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from hpcvit import orchestrate

    sweep, checked = _load(args.spec, args.executor, overrides=args.overrides)
    kind = sweep.base.executor
    if args.dry_run:
        from hpcvit.checks import check_tracking

        check_tracking(sweep)  # the server answers and takes these credentials, as a submission needs
    if args.dry_run and args.into:
        from hpcvit.extend import preview

        console.print(preview(sweep, args.into, args.output_dir), highlight=False)
        return 0
    if args.dry_run:
        return _dry_run(sweep, checked, args)
    if args.into:
        from hpcvit.extend import extend_into

        sweep_dir, note = extend_into(sweep, args.into, args.output_dir)
        console.print(note, highlight=False)
    else:
        sweep_dir = orchestrate.create_sweep(sweep, Path(args.output_dir) if args.output_dir else None)
        console.print(f"submitted sweep [bold]{sweep_dir.sweep_id}[/] ({len(sweep.runs)} task(s), executor {kind}) "
                      f"-> {sweep_dir.root}")
    if args.wait:
        return _wait_and_compare(sweep_dir, args)
    console.print(f"follow it with: hpcvit status {sweep_dir.sweep_id}")
    return 0


_OVERRIDE_HELP = "replace a spec value: optim.epochs=2 data.max_samples=500; a list sweeps it: optim.lr=[1e-3,3e-4]"


def _dry_run(sweep: Sweep, checked: list[str], args: argparse.Namespace) -> int:
    """On a terminal: the runs, the checks, the plan and the script(s). In a pipe or with ``-o``: exactly the
    sbatch script(s) on stdout (or in the file), one per array, everything else on stderr."""
    from hpcvit import orchestrate
    from hpcvit.scheduler.adapter import for_executor

    kind = sweep.base.executor
    if args.output:
        check_script_path(Path(args.output), sweep)
    scripts = orchestrate.sbatch_preview(sweep, args.output_dir)
    script_only = bool(args.output) or not sys.stdout.isatty()
    info = err if script_only else console
    info.print(_run_table(sweep, None if args.all else 40, info))
    for line in checked:
        info.print(f"[green]checked[/] {escape(line)}")
    info.print(f"[green]plan[/] {escape(orchestrate.array_plan(sweep))}")
    if orchestrate.search_plan(sweep):
        info.print(f"[green]search[/] {escape(orchestrate.search_plan(sweep))}")
    if script_only:
        text = "".join(script if script.endswith("\n") else script + "\n" for _, script in scripts)
        if args.output:
            from hpcvit import fsio

            fsio.write_text(Path(args.output), text, durable=False)
            err.print(f"sbatch script{'s' if len(scripts) > 1 else ''} written to {args.output}")
        else:
            sys.stdout.write(text)
    else:
        for k, (tasks, script) in enumerate(scripts):
            where = f"array {k + 1} of {len(scripts)}: tasks {tasks.start}-{tasks.stop - 1}, " if len(scripts) > 1 else ""
            console.rule(f"sbatch script ({where}{for_executor(kind).preview_note})")
            console.print(script, markup=False, highlight=False)
    info.print(f"[yellow]dry run[/]: nothing submitted ({len(sweep.runs)} run(s), executor {kind}){for_executor(kind).dry_run_note}")
    return 0


def _wait_and_compare(sweep_dir: Any, args: argparse.Namespace) -> int:
    from hpcvit import orchestrate
    from hpcvit.results.compare import compare_rows

    if console.is_terminal:  # a live table of the tasks, redrawn at every poll
        from rich.live import Live

        with Live(console=console, refresh_per_second=2, transient=True) as live:
            final = orchestrate.wait(sweep_dir, lambda current: live.update(_status_table(sweep_dir, current,
                                                                                           console)))
    else:  # a pipe or a log: one line per task whose state or epoch changed
        seen: dict[int, tuple[str, Any]] = {}

        def show(current: list[Any]) -> None:
            for s in current:
                key = (str(s.state), s.epoch)
                if seen.get(s.index) != key:
                    seen[s.index] = key
                    epoch = f" epoch {s.epoch}/{s.epochs}" if s.epoch is not None else ""
                    best = f" best {s.best_metric:.4f}" if s.best_metric is not None else ""
                    eta = f" ETA {duration(s.eta_s)}" if s.eta_s is not None else ""
                    err.print(f"task {s.index} ({s.label}): {s.state}{epoch}{best}{eta}", markup=False,
                              highlight=False)

        final = orchestrate.wait(sweep_dir, show)
    console.print(_status_table(sweep_dir, final, console))
    _print_comparison(sweep_dir, compare_rows(sweep_dir, getattr(args, "metric", None)))
    return 0 if all(s.state in FINAL for s in final) else 1


def cmd_status(args: argparse.Namespace) -> int:
    from hpcvit import orchestrate

    sweep_dir = _sweep(args)
    # first: stale records written, a search's ended rung decided, the parent run ended after the last task
    statuses, notes = orchestrate.finalize_noting(sweep_dir, orchestrate.statuses(sweep_dir))
    if args.format in RECORD_FORMATS:
        sys.stdout.write(records_text(({**vars(s), "state": str(s.state)} for s in statuses), args.format))
    else:
        console.print(_status_table(sweep_dir, statuses, console))
    for note in notes:
        err.print(escape(note), highlight=False)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from hpcvit import orchestrate

    sweep_dir = _sweep(args)
    indices, job_ids = orchestrate.resume(sweep_dir, args.executor, parse_ranges(args.tasks) if args.tasks else None)
    if not indices:
        console.print(f"nothing to resume in {sweep_dir.sweep_id}: every task is finished, queued or running")
        return 0
    console.print(f"resubmitted {len(indices)} task(s) of {sweep_dir.sweep_id}: {index_ranges(indices)} "
                  f"as job(s) {', '.join(sorted(set(job_ids.values()))[:5])}")
    if args.wait:
        return _wait_and_compare(sweep_dir, args)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from hpcvit import orchestrate

    sweep_dir = _sweep(args)
    indices = orchestrate.cancel(sweep_dir)
    console.print(f"cancelled {len(indices)} task(s) of {sweep_dir.sweep_id}: {index_ranges(indices)}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from hpcvit import orchestrate

    sweep_dir = _sweep(args)
    sent = orchestrate.sync(sweep_dir)
    for index, n in sent.items():
        console.print(f"task {index}: {n} buffered tracking call(s) sent")
    total = sum(sent.values())
    console.print(f"synced {sweep_dir.sweep_id}: {total} call(s)" if total else "nothing buffered: tracking is in sync")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    sweep_dir = _sweep(args)
    if not 0 <= args.task < sweep_dir.n_tasks:
        raise UsageError(f"sweep {sweep_dir.sweep_id} has no task {args.task} (its tasks are 0-{sweep_dir.n_tasks - 1})")
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
    from hpcvit import orchestrate
    from hpcvit.results.compare import compare_rows, plot_overlay, render

    sweep_dir = _sweep(args)
    if args.metric:
        from hpcvit.objectives import get_objective
        from hpcvit.results.rows import check_metric_choice

        try:
            check_metric_choice(get_objective(sweep_dir.run_spec(0).data.task), args.metric)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    for note in orchestrate.finalize_noting(sweep_dir)[1]:
        err.print(escape(note), highlight=False)
    result = compare_rows(sweep_dir, args.metric)
    empty = result.empty_reason()
    if args.format == "table":
        _print_comparison(sweep_dir, result)
    else:
        print(render(result, args.format))
        if empty:
            err.print(escape(empty), highlight=False)
    if args.plot:
        png = plot_overlay(sweep_dir, args.plot, args.split)
        err.print(f"figure over the runs written to {png} and {png.with_suffix('.pdf')}")
    return 1 if empty else 0


def _print_comparison(sweep_dir: Any, result: Any) -> None:
    """The runs' table and, when configurations ran with several seeds, their mean +- std; or the line that
    says why there is nothing to compare."""
    from hpcvit.results.compare import compare_table, seed_table

    empty = result.empty_reason()
    if empty:
        err.print(escape(empty), highlight=False)
        return
    console.print(compare_table(result, width=console_width(console)))
    over_seeds = seed_table(sweep_dir, result)
    if over_seeds is not None:
        console.print(over_seeds)
    from hpcvit.search import summary  # a search's rungs: who was promoted when; epochs spent vs the full grid

    for line in summary(sweep_dir):
        console.print(escape(line), highlight=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcvit", description="Train the Vision Transformer family on detector images (and hit clustering on "
        "calorimeter hits) in Slurm sweeps from one YAML job spec: validate it, submit it, follow it with status, "
        "resume what did not finish, compare the runs, use the winner (predict, evaluate, export). `hpcvit COMMAND --help` tells more.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log hpcvit's debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate a job spec and print its expanded runs")
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDE_HELP)
    p.add_argument("--all", action="store_true", help="list every run, not the first and last ones")
    p.add_argument("--no-data", action="store_true", help="check the spec alone, not its data files")
    p.add_argument("--format", choices=["table", *RECORD_FORMATS], default="table",
                   help="json|csv: the runs as records on stdout, the checks on stderr")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("submit", help="submit a sweep as one array job")
    p.add_argument("spec")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=_OVERRIDE_HELP)
    p.add_argument("--executor", choices=EXECUTORS, help="override the spec's executor")
    p.add_argument("--dry-run", action="store_true", help="print the runs and the sbatch script, submit nothing "
                                                          "(in a pipe: only the script, on stdout)")
    p.add_argument("-o", "--output", help="with --dry-run: write the sbatch script(s) to this file")
    p.add_argument("--wait", action="store_true", help="wait for the tasks, then print the comparison")
    p.add_argument("--output-dir", help="override the spec's output_dir")
    p.add_argument("--into", metavar="SWEEP", help="add the spec's new configurations to this sweep (those it has "
                   "already are not trained again)")
    p.add_argument("--all", action="store_true", help="list every run in the table")
    p.set_defaults(func=cmd_submit)

    def sweep_cmd(name: str, help_: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("sweep", nargs="?", help="sweep id or directory (default: the newest under runs/)")
        p.add_argument("--output-dir", help="directory holding the sweeps (default: runs)")
        p.set_defaults(func=func)
        return p

    p = sweep_cmd("status", "state of each task of a sweep", cmd_status)
    p.add_argument("--format", choices=["table", *RECORD_FORMATS], default="table")
    p = sweep_cmd("resume", "resubmit the tasks of a sweep that did not finish", cmd_resume)
    p.add_argument("--executor", choices=EXECUTORS)
    p.add_argument("--tasks", metavar="LIST", help="only these tasks, e.g. 3,7 or 0-4,9")
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
    p.add_argument("--metric", help="metric to sort by, val_<name> (best epoch) or test_<name> (default: the spec's "
                   "checkpoint.best_metric, else the task's: val_roc_auc, val_mae, val_efficiency)")
    p.add_argument("--format", choices=["table", *RECORD_FORMATS, "markdown"], default="table")
    p.add_argument("--plot", metavar="PNG", help="also write the figure over the sweep's runs to this file (ROC curves of a "
                   "classifier, predicted vs true and resolution of a regression, binned efficiencies of hit clustering)")
    p.add_argument("--split", choices=["val", "test"], help="the split --plot draws (default: test when the sweep has "
                   "one, else val)")

    for module in SUBCOMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)  # a module that fails to import is a broken install
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hpcvit.logs import configure_cli

    configure_cli(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (SpecError, UsageError, DamagedFileError) as exc:  # bad input: a spec, an argument, a run folder
        err.print(f"[red]error[/]: {escape(str(exc))}", highlight=False)
        return EXIT_INVALID
    except (ValueError, RuntimeError) as exc:
        err.print(f"[red]error[/]: {escape(str(exc))}", highlight=False)
        return 1
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as other tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except OSError as exc:  # the environment, not hpcvit: one line, no traceback
        err.print(f"[red]error[/]: {escape(describe_os_error(exc))}", highlight=False)
        return 1
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except Exception as exc:  # a tracking store that does not answer: one line, not MLflow's traceback
        from hpcvit.tracking.outage import outage_line

        if (line := outage_line(exc)) is None:
            raise
        err.print(f"[red]error[/]: {escape(line)}", highlight=False)
        return 1


if __name__ == "__main__":
    sys.exit(main())
