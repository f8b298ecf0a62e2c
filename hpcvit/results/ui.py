"""The MLflow UI on a sweep store: ``hpcvit ui`` (a lean server of :mod:`hpcvit.tracking.server` on the sweeps'
SQLite file, or the tracking server a sweep was logged to) and the URLs of a sweep's views."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from hpcvit.tracking.server import LOOPBACK, exit_on_hangup, start_server, stop_server, wait_in_foreground

def runs_url(base_url: str, experiment_id: str | None = None) -> str:
    """The runs table of an experiment (``#/experiments/<id>`` opens a GenAI overview in MLflow 3)."""
    if experiment_id is None:
        return f"{base_url}/#/experiments"
    return f"{base_url}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def compare_url(base_url: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's run-comparison page for ``run_ids`` of one experiment."""
    runs = json.dumps(list(run_ids), separators=(",", ":"))
    return f"{base_url}/#/compare-runs?runs={runs}&experiments={json.dumps([experiment_id])}"


def _find_experiment(output_dir: Path, backend_uri: str, sweep: str | None) -> tuple[str | None, str | None]:
    """(experiment_id, sweep_id) of the named or newest sweep in ``output_dir`` tracked in ``backend_uri``."""
    from hpcvit.ledger import find_sweep

    try:
        sweep_dir = find_sweep(sweep, output_dir)
    except FileNotFoundError:
        if sweep:
            raise
        return None, None
    m = sweep_dir.manifest
    if m.get("tracking_uri") != backend_uri:
        if sweep:
            raise ValueError(f"sweep {sweep_dir.sweep_id} is tracked in {m.get('tracking_uri')}, not in "
                             f"{backend_uri}: open that store's own UI")
        return None, None
    return m.get("experiment_id"), sweep_dir.sweep_id


def sweep_view_url(output_dir: Path, sweep_id: str, base_url: str) -> str:
    """The URL of the sweep's runs table in its shared view (set again here: sweeps made before it existed)."""
    from hpcvit.ledger import find_sweep
    from hpcvit.results.view import share, view_url
    from hpcvit.tracking import mlflow_client

    from hpcvit.results.view import view_key
    from hpcvit.tracking.outage import refused_access

    sweep = find_sweep(sweep_id, output_dir)
    try:
        key = share(mlflow_client(sweep.manifest["tracking_uri"]), sweep)
    except Exception as exc:
        if refused_access(exc) != 403:  # a reader may not set it: the view submit set is there
            raise
        key = view_key(sweep.sweep_id)
    return view_url(base_url, sweep.manifest["experiment_id"], key)


def _finished_runs(output_dir: Path, sweep_id: str) -> list[str]:
    """Run ids of the sweep's finished child runs, in task order."""
    from hpcvit.ledger import find_sweep
    from hpcvit.tracking import child_runs, names

    m = find_sweep(sweep_id, output_dir).manifest
    runs = [r for r in child_runs(m["tracking_uri"], m["experiment_id"], m["parent_run_id"])
            if r.info.status == "FINISHED"]
    return [r.info.run_id for r in sorted(runs, key=lambda r: int(r.data.tags.get(names.TASK_INDEX_TAG, 0)))]


def _on_a_server(args: argparse.Namespace, output_dir: Path) -> int | None:
    """A sweep tracked on a tracking server (``hpcvit tracking serve``): its pages there; no server of our own.
    None when the sweep is tracked in a file here."""
    from hpcvit.ledger import find_sweep

    try:
        sweep = find_sweep(args.sweep, output_dir)
    except FileNotFoundError:
        if args.sweep:
            raise
        return None
    uri = sweep.manifest.get("tracking_uri") or ""
    if not uri.startswith(("http://", "https://")):
        return None
    base = uri.rstrip("/")
    target = sweep_view_url(output_dir, sweep.sweep_id, base)
    print(f"sweep {sweep.sweep_id} is tracked on {base}; its runs side by side: {target}", flush=True)
    finished = _finished_runs(output_dir, sweep.sweep_id)
    if finished:
        print(f"MLflow's comparison of its {len(finished)} finished run(s): "
              f"{compare_url(base, sweep.manifest['experiment_id'], finished)}", flush=True)
    if args.open:
        import webbrowser

        if not webbrowser.open(target):
            print("no browser found here: open the URL above in yours", flush=True)
    return 0


def _run(args: argparse.Namespace) -> int:
    output_dir = Path(args.output_dir).resolve()
    served = _on_a_server(args, output_dir)
    if served is not None:
        return served
    db = output_dir / "mlflow.db"
    if not db.exists():
        raise FileNotFoundError(f"no MLflow store at {db} (submit a sweep first, or pass --output-dir)")
    backend_uri = f"sqlite:///{db}"
    experiment_id, sweep_id = _find_experiment(output_dir, backend_uri, args.sweep)
    print(f"starting the MLflow UI on {backend_uri} (lean: 1 worker, no job runner; ready in ~15 s)", flush=True)
    exit_on_hangup()
    proc, url = start_server(backend_uri, output_dir / "mlartifacts", args.port, args.host,
                             log_path=output_dir / "mlflow-ui.log")
    try:
        target = runs_url(url, experiment_id)
        if sweep_id:
            target = sweep_view_url(output_dir, sweep_id, url)
            print(f"sweep {sweep_id}, its runs side by side (ranking metric of each split, swept parameters, sorted): "
                  f"{target}", flush=True)
            finished = _finished_runs(output_dir, sweep_id)
            if finished:
                print(f"MLflow's comparison of its {len(finished)} finished run(s): "
                      f"{compare_url(url, experiment_id, finished)}", flush=True)
        else:
            print(f"MLflow UI (experiments): {target}", flush=True)
        if args.open:
            import webbrowser

            if not webbrowser.open(target):
                print("no browser found here: open the URL above in yours (through an SSH tunnel from a laptop)",
                      flush=True)
        if args.host not in LOOPBACK:
            port = url.rsplit(":", 1)[1]
            print(f"listening on {args.host}:{port}; from another machine open it by this host's name or "
                  f"address, or through an SSH tunnel: ssh -L {port}:127.0.0.1:{port} <this host>", flush=True)
        print("press Ctrl-C to stop", flush=True)
        return wait_in_foreground(proc, output_dir / "mlflow-ui.log")
    except KeyboardInterrupt:
        return 0
    finally:
        stop_server(proc)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``ui`` command to an ``argparse`` sub-parser set; sets ``func(args) -> int``."""
    parser = subparsers.add_parser(
        "ui", help="open the MLflow UI on the sweeps' tracking store",
        description="Start a lean MLflow server (one worker, no job runner) on <output-dir>/mlflow.db and print "
                    "the URL of the runs page of the newest (or the given) sweep's experiment. Ctrl-C stops it.")
    parser.add_argument("sweep", nargs="?", help="sweep id or directory whose experiment to show (default: newest)")
    parser.add_argument("--output-dir", default="runs", help="directory holding the sweeps and mlflow.db "
                                                             "(default: runs)")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--open", action="store_true", help="open the comparison (or runs) page in a browser")
    parser.set_defaults(func=_run)
    return parser


__all__ = ["add_parser", "compare_url", "runs_url", "sweep_view_url"]
