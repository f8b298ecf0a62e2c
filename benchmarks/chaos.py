"""Fault injection over a whole sweep: SIGKILL a random process of a random task at random moments, resume,
and count what survived.

Runs a small sweep twice: once untouched (the twins), once under fire. While the second runs, every few
seconds one process of a running task is killed with SIGKILL (its launcher, its torchrun agent, or one of its
ranks, chosen at random); whatever the task's state then settles to, ``hpcvit resume`` is called, until every
task has completed. Reported, as JSON and as a table:

  kills                  processes killed, by kind
  resumes                ``resume`` calls that resubmitted something
  completed              tasks that completed (of all)
  min_resume_minus_newest_checkpoint
                         over all kills: the step the task restarted from minus the newest checkpoint's step at
                         the kill (>= 0: at most ``checkpoint.every_steps`` = 5 steps lost per kill)
  duplicate_steps        MLflow metric steps logged twice (0 expected)
  runs_left_running      MLflow child runs still RUNNING at the end (0 expected)
  ran_twice              samples (twice a second) in which ranks of two live torchrun agents of one task were
                         alive at once (0 expected)
  orphan_rank_max_s      longest a rank outlived its killed agent (its watchdog ends it 60 s after the agent died)
  bitwise_equal          tasks whose final checkpoint equals their untouched twin's in every tensor and value
                         (weights, optimiser, schedule, every rank's generators); ``differences`` names the rest

Usage: python benchmarks/chaos.py [--tasks 3] [--kills 8] [--epochs 6] [--executor local|slurm] [--nodes 1]
       [--seed 0] [--out chaos.json]   (slurm: a running cluster, e.g. ``eval "$(slurm/local-cluster.sh start)"``)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

SPEC = """
name: chaos
data:
  format: synthetic
  synthetic: {{n_samples: 1200, image_size: 16, channels: 2, seed: 3}}
  val_fraction: 0.25
model:
  name: cnn_small
  kwargs: {{width: 8}}
optim: {{lr: 3e-3, epochs: {epochs}, batch_size: 16}}
checkpoint: {{every_steps: 5, every_minutes: null, keep: 3}}
resources: {{nproc_per_node: 2, nodes: {nodes}, cpus_per_task: 2, array_parallelism: 2, time_min: 30}}
executor: {executor}
sweep:
  grid:
    optim.seed: {seeds}
"""


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) of every process."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            argv = (stat.parent / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ValueError, IndexError):
            continue
        out[int(stat.parent.name)] = (ppid, argv)
    return out


def _ranks(procs: dict[int, tuple[int, list[str]]], task_path: Path) -> list[int]:
    return [pid for pid, (_, argv) in procs.items()
            if "hpcvit.train" in argv and str(task_path) in argv and "torch.distributed.run" not in argv]


def _node(pid: int) -> str:
    """The Slurm node a process runs on (``SLURMD_NODENAME`` in its environment; "" outside Slurm)."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return ""
    return next((e[16:].decode() for e in env if e.startswith(b"SLURMD_NODENAME=")), "")


def _victims(task: Any) -> dict[str, int]:
    """The killable processes of a running task: its (first node's) launcher, and on every node the torchrun
    agent and the ranks it started (``torchrun``, ``rank0``, ``rank1``; ``@2`` for the second node's)."""
    state = task.state()
    procs = _processes()
    found = {}
    if state.get("pid") in procs:
        found["launcher"] = state["pid"]
    # a rank's parent is its agent only while that lives: an orphan's (init, a subreaper) is nobody to kill
    ranks = _ranks(procs, task.path)
    agents = sorted({parent for pid in ranks if (parent := procs[pid][0]) in procs
                     and parent != 1 and "torch.distributed.run" in procs[parent][1]
                     and any(str(task.path) in arg for arg in procs[parent][1])},
                    key=lambda pid: pid != state.get("trainer_pgid"))  # the first node's agent first
    for n, agent in enumerate(agents):
        node = f"@{n + 1}" if n else ""
        found[f"torchrun{node}"] = agent
        for k, pid in enumerate(sorted(p for p in ranks if procs[p][0] == agent)):
            found[f"rank{k}{node}"] = pid
    return found


def _newest_checkpoint(task: Any) -> int:
    steps = [int(p.name[5:14]) for p in task.checkpoints.glob("ckpt-*.json")]
    return max(steps, default=0)


def _run_sweep(root: Path, args: argparse.Namespace, chaos: bool, report: dict[str, Any]) -> Any:
    from hpcvit import orchestrate
    from hpcvit.states import RESUMABLE, TaskState
    from hpcvit.sweep import load_sweep

    root.mkdir(parents=True, exist_ok=True)
    spec = root / "spec.yaml"
    spec.write_text(SPEC.format(epochs=args.epochs, executor=args.executor, nodes=args.nodes,
                                seeds=list(range(args.tasks))))
    sweep_dir = orchestrate.create_sweep(load_sweep(spec), root / "runs")
    if not chaos:
        orchestrate.wait(sweep_dir, poll_s=1.0)
        return sweep_dir
    rng = random.Random(args.seed)
    kills: Counter[str] = Counter()
    ran_twice, orphan_life = [0], [0.0]
    done = threading.Event()

    orphan_seen: dict[int, float] = {}

    def watch() -> None:  # sampled twice a second: ranks of two live torchrun agents of one task on one node
        while not done.is_set():  # = running twice (a task on two nodes has one agent on each)
            procs = _processes()
            for task in sweep_dir.tasks():
                ranks = _ranks(procs, task.path)
                agents = Counter(_node(agent) for agent in
                                 {procs[pid][0] for pid in ranks if pid in procs and procs[pid][0] != 1})
                if any(n > 1 for n in agents.values()):
                    ran_twice[0] += 1
                for pid in ranks:  # a rank whose agent died: how long it lives on (bounded by its watchdog)
                    if procs.get(pid, (0,))[0] == 1:
                        orphan_seen.setdefault(pid, time.monotonic())
                        orphan_life[0] = max(orphan_life[0], time.monotonic() - orphan_seen[pid])
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    resumes, at_kill, killed_at = 0, [], {}
    while True:
        statuses = orchestrate.statuses(sweep_dir)
        if all(s.state == TaskState.COMPLETED for s in statuses):
            break
        # a kill counts only once the gang trains: one that lands in start-up measures nothing about lost steps,
        # and a second one before the task started again would only finish off what the first one began
        running = [s for s in statuses
                   if s.state == TaskState.RUNNING and _trained_since_start(sweep_dir.task(s.index))
                   and _starts(sweep_dir.task(s.index)) > killed_at.get(s.index, -1)]
        if sum(kills.values()) < args.kills and running:
            time.sleep(rng.uniform(0.5, 4.0))
            task = sweep_dir.task(rng.choice(running).index)
            victims = _victims(task)
            if victims:
                kind = rng.choice(sorted(victims))
                try:
                    newest = _newest_checkpoint(task)
                    os.kill(victims[kind], signal.SIGKILL)
                    kills[kind] += 1
                    killed_at[task.index] = _starts(task)
                    at_kill.append((task.index, time.time(), newest))
                    report.setdefault("kill_log", []).append({"task": task.index, "process": kind,
                                                             "newest_checkpoint": newest})
                except ProcessLookupError:
                    pass
            continue
        if any(s.state in RESUMABLE for s in statuses):
            indices, _ = orchestrate.resume(sweep_dir)
            resumes += bool(indices)
        time.sleep(1.0)
    done.set()
    watcher.join()
    orchestrate.finalize(sweep_dir)
    per_kill = _steps_lost(sweep_dir, at_kill)
    for entry, value in zip(report.get("kill_log", []), per_kill):
        entry["restart_minus_newest_checkpoint"] = value
    lost = [v for v in per_kill if v is not None]
    report.update(kills=dict(kills), kills_total=sum(kills.values()), resumes=resumes, ran_twice=ran_twice[0],
                  orphan_rank_max_s=round(orphan_life[0], 1),
                  restarts_after_kills=len(lost), min_resume_minus_newest_checkpoint=min(lost, default=0),
                  resume_minus_newest_checkpoint=lost, max_steps_lost=5)
    return sweep_dir


def _starts(task: Any) -> int:
    """How many times the task's launcher has started it (its log's start lines)."""
    try:
        return task.log.read_text(errors="replace").count("=== start ")
    except FileNotFoundError:
        return 0


def _trained_since_start(task: Any) -> bool:
    """Whether the task's current start has trained a step (its log says so after its last start line)."""
    try:
        text = task.log.read_text(errors="replace")
    except FileNotFoundError:
        return False
    return " first step after " in text[text.rfind("=== start "):]


def _steps_lost(sweep_dir: Any, at_kill: list[tuple[int, float, int]]) -> list[int | None]:
    """For each kill: the step its task restarted from minus the newest checkpoint's step at the kill (>= 0
    means no more than one checkpoint interval was lost: the trainer was at most ``every_steps`` past it), or
    None when the task did not start again after it (it had finished training)."""
    import datetime as dt

    out: list[int | None] = []
    for index, when, newest in at_kill:
        task = sweep_dir.task(index)
        starts = [line for line in task.log.read_text().splitlines() if " start: epoch " in line]
        per_epoch = int(starts[0].split(" step 0/")[1].split()[0])
        later = [line for line in starts[1:] if dt.datetime.fromisoformat(line[1:line.index("]")]).timestamp() > when]
        if not later:
            out.append(None)
            continue
        epoch = int(later[0].split(" start: epoch ")[1].split()[0])
        step = int(later[0].split(" step ")[1].split("/")[0])
        out.append(epoch * per_epoch + step - newest)
    return out


def _mlflow_figures(sweep_dir: Any) -> tuple[int, int]:
    from hpcvit.tracking import child_runs, mlflow_client

    m = sweep_dir.manifest
    client = mlflow_client(m["tracking_uri"])
    duplicates = running = 0
    for run in child_runs(m["tracking_uri"], m["experiment_id"], m["parent_run_id"]):
        running += run.info.status == "RUNNING"
        history = [h.step for h in client.get_metric_history(run.info.run_id, "val_loss")]
        duplicates += len(history) - len(set(history))
    return duplicates, running


def _newest(task: Any) -> Any:
    from hpcvit.checkpoint import load_weights

    return load_weights(max(task.checkpoints.glob("ckpt-*.pt")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--executor", choices=["local", "slurm"], default="local")
    parser.add_argument("--nodes", type=int, default=1, help="nodes per task (slurm)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    report: dict[str, Any] = {"executor": args.executor, "nodes": args.nodes, "tasks": args.tasks}
    with tempfile.TemporaryDirectory(prefix="hpcvit-chaos-") as tmp:
        t0 = time.monotonic()
        twins = _run_sweep(Path(tmp) / "twins", args, False, {})
        chaos = _run_sweep(Path(tmp) / "chaos", args, True, report)
        report["seconds"] = round(time.monotonic() - t0, 1)
        from hpcvit.orchestrate import statuses
        from hpcvit.states import TaskState

        states = [s.state for s in statuses(chaos)]
        report["completed"] = sum(s == TaskState.COMPLETED for s in states)
        report["restarts"] = sum(len([ln for ln in t.log.read_text().splitlines() if " start: epoch " in ln]) - 1
                                 for t in chaos.tasks())
        report["duplicate_steps"], report["runs_left_running"] = _mlflow_figures(chaos)
        from hpcvit.checkpoint import differences

        report["differences"] = [differences(_newest(a), _newest(b)) for a, b in zip(twins.tasks(), chaos.tasks())]
        report["bitwise_equal"] = sum(not d for d in report["differences"])
    print(json.dumps(report, indent=1))
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    bad = (report["completed"] != args.tasks or report["duplicate_steps"] or report["runs_left_running"]
           or report["ran_twice"] or report["bitwise_equal"] != args.tasks
           or report["min_resume_minus_newest_checkpoint"] < 0)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
