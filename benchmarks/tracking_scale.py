"""Tracking under a burst of concurrent tasks, as an array starts and ends them.

N task processes (hpcvit's own :class:`TaskTracker`, each on its run made at submit) start at one moment,
log 89 parameters, two text artifacts and a file artifact, 10 epochs of 11 metrics, and end. Per backend and N:

- ``landed``: the metric points in the store right after the burst, then after the automatic replay of the
  tasks' buffers (the one made before a sweep's summary), as a fraction of those logged;
- ``duplicates``: runs beyond one per task; ``running``: runs left RUNNING or SCHEDULED; ``failed``: task
  processes that exited with an error; ``p95_ms``: the 95th percentile of one tracking call's latency;
- ``register_s``: making the N runs at submit.

Backends: ``sqlite`` (the default SQLite file, written by every task directly), ``server-sqlite`` (``mlflow
server`` on that file) and ``server-postgres`` (``mlflow server`` on a private PostgreSQL cluster started here,
when PostgreSQL's binaries and psycopg2 are installed). Targets: everything landed, no duplicate, nothing
left running and no failed task at N = 200 on the PostgreSQL server and at N = 50 on the SQLite file.

    python benchmarks/tracking_scale.py [--backend sqlite server-sqlite server-postgres] [-n 50 100 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

PARAMS, METRICS, EPOCHS = 89, 11, 10
WORKERS = 4
"""Server workers: ``hpcvit tracking serve``'s default."""
SPEC = "name: scale\nmodel: {name: cnn_small}\n"


def make_sweep(root: Path, uri: str, n: int) -> tuple[Any, float]:
    """A sweep of ``n`` tasks on ``uri`` as ``submit`` makes it (parent run, one run per task); the time its
    task runs took."""
    from hpcvit.ledger import create_sweep_dir, new_sweep_id
    from hpcvit.sweep import load_sweep
    from hpcvit.tracking import setup_sweep
    from hpcvit.tracking.children import register_tasks

    spec_file = root / "scale.yaml"
    spec_file.write_text(SPEC)
    base = load_sweep(spec_file).base
    sweep_dir = create_sweep_dir(root / "runs", new_sweep_id("scale"), spec_file, [base] * n, "local",
                                 [f"t{i}" for i in range(n)])
    experiment_id, parent = setup_sweep(uri, f"scale-{sweep_dir.sweep_id}", sweep_dir.sweep_id, root, spec_file, n)
    sweep_dir.update_manifest(tracking_uri=uri, experiment_id=experiment_id, parent_run_id=parent)
    t0 = time.perf_counter()
    register_tasks(sweep_dir, list(range(n)))
    return sweep_dir, time.perf_counter() - t0


def write_task(sweep_root: Path, index: int, go: Path, epochs: int = EPOCHS) -> list[float]:
    """One task's tracking, started when ``go`` exists; returns its calls' latencies (seconds)."""
    from hpcvit.ledger import SweepDir
    from hpcvit.tracking import names
    from hpcvit.tracking.task_run import TaskTracker

    task = SweepDir(sweep_root).task(index).ensure()
    m = task.sweep.manifest
    while not go.exists():
        time.sleep(0.02)
    latencies = []

    def timed(call: Any, *args: Any) -> None:
        t0 = time.perf_counter()
        call(*args)
        latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    tracker = TaskTracker(m["tracking_uri"], m["experiment_id"], m["parent_run_id"], task,
                          tags={names.STATE_TAG: "RUNNING", names.TASK_INDEX_TAG: str(index)})
    latencies.append(time.perf_counter() - t0)
    timed(tracker.log_params, {f"group.param_{k}": f"value {k}" for k in range(PARAMS)})
    timed(tracker.log_text, "spec", "spec.json")
    timed(tracker.log_text, "requirements", "requirements.txt")
    artifact = task.path / "notes.txt"
    artifact.write_text(f"task {index}\n")
    timed(tracker.log_artifact, artifact)
    for epoch in range(epochs):
        timed(tracker.log_epoch, epoch, {"val_loss": 1.0 / (epoch + 1),
                                         **{f"metric_{k}": epoch + k / 100 for k in range(METRICS - 1)}})
    timed(tracker.end, "FINISHED")
    return latencies


def fork_tasks(sweep_root: Path, n: int, epochs: int) -> dict[str, Any]:
    """``n`` task processes forked from this one once MLflow is imported (as many Python processes, each
    importing MLflow, would not fit in memory), released at one moment; their failures and latencies."""
    import mlflow.tracking  # noqa: F401 - imported once, shared by the forks
    import traceback

    import hpcvit.tracking.task_run  # noqa: F401

    go = sweep_root / "go"
    pids = {}
    for i in range(n):
        pid = os.fork()
        if pid == 0:
            out = sweep_root / "tasks" / f"{i:05d}"
            code = 1
            try:
                latencies = write_task(sweep_root, i, go, epochs)
                (out / "latencies.json").write_text(json.dumps(latencies))
                code = 0
            except BaseException:
                out.mkdir(parents=True, exist_ok=True)
                (out / "error.txt").write_text(traceback.format_exc())
            finally:
                os._exit(code)
        pids[pid] = i
    go.touch()
    t0 = time.perf_counter()
    failed = []
    for pid, i in pids.items():
        if os.waitpid(pid, 0)[1] != 0:
            failed.append(i)
    return {"failed": failed, "burst_s": time.perf_counter() - t0}


def landed(sweep_dir: Any) -> tuple[int, int, int]:
    """(metric points in the store, runs beyond one per task, runs left RUNNING or SCHEDULED)."""
    from hpcvit.tracking import child_runs, mlflow_client, names

    m = sweep_dir.manifest
    client = mlflow_client(m["tracking_uri"])
    runs = child_runs(m["tracking_uri"], m["experiment_id"], m["parent_run_id"])
    points = sum(len(client.get_metric_history(r.info.run_id, key)) for r in runs for key in r.data.metrics)
    keys = [r.data.tags.get(names.TASK_KEY_TAG) for r in runs]
    return points, len(keys) - len(set(keys)), sum(r.info.status in ("RUNNING", "SCHEDULED") for r in runs)


def burst(root: Path, uri: str, n: int, epochs: int = EPOCHS) -> dict[str, Any]:
    """One burst of ``n`` task processes on ``uri``; the figures of the module docstring."""
    from hpcvit.tracking.upkeep import pending_buffers, replay_buffers

    sweep_dir, register_s = make_sweep(root, uri, n)
    # the forks start from a process that never opened a store (a forked SQLAlchemy pool is shared, not copied)
    done = subprocess.run([sys.executable, __file__, "--fork", str(sweep_dir.root), str(n), str(epochs)],
                          capture_output=True, text=True, check=True)
    outcome = json.loads(done.stdout.splitlines()[-1])
    failed = outcome["failed"]
    latencies = sorted(x for i in range(n) if (f := sweep_dir.task(i).path / "latencies.json").exists()
                       for x in json.loads(f.read_text()))
    expected = n * epochs * METRICS
    before, _, _ = landed(sweep_dir)
    waiting = len(pending_buffers(sweep_dir))
    replay_buffers(sweep_dir)
    after, duplicates, running = landed(sweep_dir)
    first_error = ((sweep_dir.task(failed[0]).path / "error.txt").read_text().strip().splitlines()[-1:]
                   if failed else [])
    return {"n": n, "register_s": round(register_s, 1), "burst_s": round(outcome["burst_s"], 1),
            "landed_before": round(before / expected, 3), "tasks_buffering": waiting,
            "landed_after": round(after / expected, 3), "duplicates": duplicates, "running": running,
            "failed": len(failed), "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))])
            if latencies else None, "first_error": first_error}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", nargs="+", default=["sqlite", "server-sqlite", "server-postgres"])
    parser.add_argument("-n", nargs="+", type=int, default=[50, 100, 200])
    parser.add_argument("--fork", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fork:
        root, n, epochs = args.fork
        print(json.dumps(fork_tasks(Path(root), int(n), int(epochs))))
        return 0
    from hpcvit.tracking.server import start_server, stop_server

    results = []
    for backend in args.backend:
        for n in args.n:
            with tempfile.TemporaryDirectory(prefix=f"tracking-{backend}-{n}-") as tmp:
                root = Path(tmp)
                server = pg = None
                try:
                    from hpcvit.tracking.serve import POOL, max_connections

                    pool = {"MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": str(POOL),
                            "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": str(POOL)}
                    if backend == "sqlite":
                        uri = f"sqlite:///{root / 'mlflow.db'}"
                    else:
                        if backend == "server-postgres":
                            from hpcvit.tracking.postgres import start_postgres

                            root.chmod(0o755)  # PostgreSQL runs as its own user
                            pg = start_postgres(root / "pg", max_connections=max_connections(WORKERS))
                            store = pg.uri
                            pool.update(pg.env)
                        else:
                            store = f"sqlite:///{root / 'mlflow.db'}"
                        # as hpcvit tracking serve runs it
                        server, uri = start_server(store, root / "artifacts", log_path=root / "server.log",
                                                   workers=WORKERS, env=pool)
                    row = {"backend": backend, **burst(root, uri, n)}
                finally:
                    if server is not None:
                        stop_server(server)
                    if pg is not None:
                        pg.stop()
                results.append(row)
                print(json.dumps(row), flush=True)
    out = Path(__file__).with_name("results_tracking_scale.json")
    out.write_text(json.dumps({"host_cpus": os.cpu_count(), "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
