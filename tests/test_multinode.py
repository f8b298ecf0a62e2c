"""Two-node tasks on a real two-node Slurm cluster (slurm/local-cluster.sh start --nodes 2: two slurmd, each in
network, UTS and mount namespaces of its own): c10d rendezvous across the nodes, preemption and node loss ending
in an exact resume, the kill of one node's ranks torn down as a gang, and the rendezvous errors."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hpcvit.scheduler.launch import RDZV_PORT_BASE, RDZV_PORT_SPAN
from hpcvit.ledger import SweepDir, find_sweep
from tests.conftest import (
    REPO,
    SPEC,
    children,
    checkpoint_differences,
    final_weights,
    hpcvit,
    start_lines,
    steps,
    wait_for,
    write_spec,
)

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

STATE_DIR = "/tmp/hpcvit-slurm-2n"
CLUSTER_ENV = {"HPCVIT_SLURM_DIR": STATE_DIR, "HPCVIT_SLURMCTLD_PORT": "16917", "HPCVIT_SLURMD_PORT": "16918"}
TWO_NODES = "executor: slurm\n"


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / "slurm" / "local-cluster.sh"), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **CLUSTER_ENV})


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """A two-node cluster of its own (state dir and ports apart from the single-node one); yields SLURM_CONF."""
    if os.geteuid() != 0:
        pytest.skip("the two-node cluster makes network namespaces: root only")
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("this kernel refuses new network namespaces (unshare --net), which the two nodes need")
    proc = _script("start", "--nodes", "2")
    assert proc.returncode == 0, f"local-cluster.sh start --nodes 2 failed:\n{proc.stderr}"
    conf = proc.stdout.strip().rsplit("=", 1)[1].strip("'\"")
    before = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    stop = _script("stop")
    if before is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = before
    assert stop.returncode == 0, stop.stderr
    assert not [n for n in _netns() if n.startswith("hv16917")], "stop must remove the nodes' namespaces"


def _netns() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()


def spec_2x2(workdir: Path, name: str, epochs: int = 2, n: int = 960) -> Path:
    text = SPEC.format(name=name, n=n, size=16, epochs=epochs) + TWO_NODES
    return write_spec(workdir, text.replace("nproc_per_node: 2", "nproc_per_node: 2\n  nodes: 2"), f"{name}.yaml")


def trainers() -> dict[str, list[int]]:
    """Rank processes of hpcvit trainers of the two-node cluster, by the node they run on."""
    out: dict[str, list[int]] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = b" ".join(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
            if b"hpcvit.train" not in cmd or b"torch.distributed.run" in cmd:
                continue  # not a trainer, or the torchrun agent
            env = dict(e.split(b"=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if env.get(b"SLURM_CONF", b"").startswith(STATE_DIR.encode()):  # this cluster's, not another's
            out.setdefault(env.get(b"SLURMD_NODENAME", b"?").decode(), []).append(int(pid))
    return out


def submit(workdir: Path, spec: Path, out: str) -> SweepDir:
    proc = hpcvit("submit", str(spec), "--output-dir", out, cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return find_sweep(None, workdir / out)


def in_queue(job: str) -> bool:
    return bool(subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip())


def _queue() -> str:
    """The queue and the nodes, for a failure's message."""
    run = functools.partial(subprocess.run, capture_output=True, text=True)
    return run(["squeue", "-a", "-o", "%i %P %T %r %N"]).stdout + run(["sinfo", "-N", "-o", "%N %T %E"]).stdout


def state(sweep: SweepDir) -> str:
    return sweep.task(0).state().get("state", "")


def first_checkpoint(sweep: SweepDir) -> None:
    ckpts = sweep.task(0).checkpoints
    wait_for(lambda: ckpts.exists() and any(ckpts.glob("ckpt-*.json")), 300, "the first checkpoint")


def equal(a: SweepDir, b: SweepDir) -> bool:
    """The final checkpoints equal in every tensor and value: weights, optimiser, every rank's generators."""
    x, y = final_weights(a, 0), final_weights(b, 0)
    return all(torch.equal(x[k], y[k]) for k in x) and checkpoint_differences(a, b) == []


@pytest.fixture(scope="module")
def twin(two_nodes: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SweepDir]:
    """The uninterrupted 2-node x 2-rank run every interrupted one must equal."""
    workdir = tmp_path_factory.mktemp("twin")
    sweep = submit(workdir, spec_2x2(workdir, "twin"), "runs")
    wait_for(lambda: state(sweep) in ("COMPLETED", "FAILED"), 600, "the two-node twin to finish")
    assert state(sweep) == "COMPLETED", sweep.task(0).log.read_text()[-3000:]
    log = sweep.task(0).log.read_text()
    assert "node 0 of 2" in log and "node 1 of 2" in log, "one launcher on each node"
    assert "--nnodes=2" in log and "--rdzv-backend=c10d" in log
    return workdir, sweep


def test_two_nodes_train_together(twin: tuple[Path, SweepDir]) -> None:
    _, sweep = twin
    runs = children(sweep)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert steps(sweep, runs[0].info.run_id, "val_loss") == [0, 1]
    assert int(runs[0].data.params["resources.nodes"]) == 2


def test_preempting_a_two_node_task_checkpoints_once_and_resumes_exactly(twin: tuple[Path, SweepDir]) -> None:
    workdir, reference = twin
    sweep = submit(workdir, spec_2x2(workdir, "twin"), "preempted")
    first_checkpoint(sweep)
    blocker = subprocess.run(["sbatch", "--parsable", "--partition=high", "--nodes=2", "--cpus-per-task=2",
                              "--mem=300", "--output=/dev/null", "--wrap", "sleep 15"],
                             check=True, capture_output=True, text=True).stdout.strip()
    task = sweep.task(0)
    wait_for(lambda: task.stopped() is not None, 120, "the preemption to stop the task")
    wait_for(lambda: not any(trainers().values()), 60, "the gang to be torn down on both nodes")
    wait_for(lambda: state(sweep) == "COMPLETED", 600, "the preempted task to complete")
    assert not in_queue(blocker)
    log = task.log.read_text()
    assert log.count("stopped by SIGTERM") == 1, "one stop, one checkpoint: rank 0 speaks for the gang"
    assert task.state()["restarts"] >= 1
    assert steps(sweep, children(sweep)[0].info.run_id, "val_loss") == [0, 1], "no epoch logged twice"
    assert equal(sweep, reference), "the preempted two-node task diverged from its uninterrupted twin"


def test_killing_one_nodes_ranks_ends_the_gang_and_resume_is_exact(twin: tuple[Path, SweepDir]) -> None:
    workdir, reference = twin
    sweep = submit(workdir, spec_2x2(workdir, "twin"), "killed")
    first_checkpoint(sweep)
    wait_for(lambda: len(trainers().get("node2", [])) == 2, 120, "node2's two ranks")
    for pid in trainers()["node2"]:
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: state(sweep) in ("FAILED", "LOST", "PREEMPTED", "REQUEUED", "CANCELLED"), 300,
             "the task to end after node2's ranks were killed")
    wait_for(lambda: not any(trainers().values()), 120, "node1's ranks to be torn down too")
    job = sweep.latest_jobs()[0][0]
    wait_for(lambda: not in_queue(job), 120, "the job to leave the queue (resume never starts a queued task twice)")
    message = sweep.task(0).state().get("message", "")
    assert state(sweep) == "FAILED" and message, "a clear FAILED, saying why"
    status = hpcvit("status", "--output-dir", "killed", "--format", "json", cwd=workdir, check=True).stdout
    assert '"state": "FAILED"' in status, status
    proc = hpcvit("resume", "--output-dir", "killed", "--wait", cwd=workdir, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert state(sweep) == "COMPLETED", proc.stdout[-3000:] + proc.stderr[-3000:]
    assert equal(sweep, reference), "resumed from its checkpoint, the task must equal its twin"


KILL_WAIT_S = 10
"""The local cluster's ``KillWait``: SIGKILL this long after a preemption's SIGTERM."""


def test_a_preemption_during_a_long_evaluation_loses_no_training(two_nodes: str, tmp_path: Path) -> None:
    """Preempted on two nodes during an evaluation longer than the cluster's KillWait: Slurm's SIGKILL ends the
    ranks before they can save after it. The checkpoint made before the evaluation holds the whole epoch, so
    the restart begins at the epoch's last step and only evaluates again; the epoch is logged once."""
    assert f"KillWait={KILL_WAIT_S}" in Path(two_nodes).read_text()
    text = SPEC.format(name="evalstop", n=20000, size=32, epochs=1) + TWO_NODES
    text = text.replace("val_fraction: 0.25", "val_fraction: 0.97")
    text = text.replace("  every_steps: 5\n", "  every_steps: null\n")  # the only saves: before and after evaluating
    text = text.replace("kwargs: {width: 8}", "kwargs: {depth: 16}").replace("cnn_small", "vit_seed")  # slow to evaluate
    text = text.replace("nproc_per_node: 2", "nproc_per_node: 2\n  nodes: 2")
    sweep = submit(tmp_path, write_spec(tmp_path, text, "evalstop.yaml"), "runs")
    task = sweep.task(0)

    def trained_not_evaluated() -> bool:  # only the save before evaluating is at epoch 0 with steps done
        metas = [json.loads(p.read_text()) for p in task.checkpoints.glob("ckpt-*.json")] \
            if task.checkpoints.exists() else []
        return any(m["epoch"] == 0 and m["step"] > 0 for m in metas)

    # the blocker waits held, so that its release is one quick call once the evaluation has begun
    blocker = subprocess.run(["sbatch", "--parsable", "--hold", "--partition=high", "--nodes=2", "--cpus-per-task=2",
                              "--mem=300", "--output=/dev/null", "--wrap", "sleep 5"],
                             check=True, capture_output=True, text=True).stdout.strip()
    try:
        wait_for(trained_not_evaluated, 600, "the checkpoint saved before epoch 0's evaluation")
    finally:
        subprocess.run(["scontrol", "release", blocker], check=True)

    def signalled_or_said_why() -> bool:  # torchrun's agents log the SIGTERM they pass on
        log = task.log.read_text()
        assert " epoch 0: " not in log, f"the evaluation ended before the preemption began:\n{_queue()}"
        return "Received 15 death signal" in log

    try:
        wait_for(signalled_or_said_why, 120, "the preemption's SIGTERM")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{_queue()}\n{task.log.read_text()[-3000:]}") from None
    # the ranks then live until Slurm's SIGKILL
    signalled = time.monotonic()
    wait_for(lambda: not any(trainers().values()), 120, "the gang to be gone from both nodes")
    gone_after = time.monotonic() - signalled
    first_start = task.log.read_text()
    assert " epoch 0: " not in first_start, "the evaluation ended before the preemption: make it longer"
    assert gone_after >= KILL_WAIT_S - 1, f"the ranks were gone {gone_after:.1f} s after SIGTERM: not at KillWait"
    wait_for(lambda: state(sweep) in ("COMPLETED", "FAILED", "HELD", "LOST"), 900, "the preempted task to end")
    assert state(sweep) == "COMPLETED", task.state()
    assert not in_queue(blocker)
    starts = start_lines(task.log)
    per_epoch = int(starts[0].split(" step 0/")[1].split()[0])
    assert len(starts) == 2 and f" start: epoch 0 step {per_epoch}/{per_epoch} " in starts[1], starts
    assert steps(sweep, children(sweep)[0].info.run_id, "val_loss") == [0], "the epoch logged once"


def node_state(node: str) -> str:
    return subprocess.run(["sinfo", "-h", "-N", "-n", node, "-o", "%T"], capture_output=True, text=True
                          ).stdout.split()[0]


def test_a_node_taken_down_requeues_the_task_and_it_resumes_exactly(twin: tuple[Path, SweepDir]) -> None:
    workdir, reference = twin
    sweep = submit(workdir, spec_2x2(workdir, "twin"), "nodedown")
    first_checkpoint(sweep)
    # Slurm kills the job's steps on every node of a job that loses a node, and requeues it (--requeue);
    # ReturnToService=2 brings the node back as soon as its slurmd answers again.
    subprocess.run(["scontrol", "update", "NodeName=node2", "State=DOWN", "Reason=hpcvit-test"], check=True)
    try:
        wait_for(lambda: not any(trainers().values()), 120, "the gang to be torn down on both nodes")
    finally:
        if node_state("node2").startswith("down"):
            subprocess.run(["scontrol", "update", "NodeName=node2", "State=RESUME"], check=True)
    wait_for(lambda: state(sweep) in ("COMPLETED", "FAILED", "HELD", "LOST"), 900, "the task to end")
    if state(sweep) == "HELD":  # a site may hold a job that a node failure requeued: resume releases it
        assert hpcvit("resume", "--output-dir", "nodedown", cwd=workdir).returncode == 0
        wait_for(lambda: state(sweep) in ("COMPLETED", "FAILED"), 900, "the released task to end")
    assert state(sweep) == "COMPLETED", sweep.task(0).state()
    assert sweep.task(0).state()["restarts"] >= 1
    assert steps(sweep, children(sweep)[0].info.run_id, "val_loss") == [0, 1], "no epoch logged twice"
    assert equal(sweep, reference), "after the node came back the task must equal its twin"


def test_a_rendezvous_port_in_use_fails_with_a_clear_error(two_nodes: str, tmp_path: Path) -> None:
    subprocess.run(["scontrol", "update", "PartitionName=debug", "State=DOWN"], check=True)
    holder = None
    try:
        sweep = submit(tmp_path, spec_2x2(tmp_path, "port"), "runs")
        job = sweep.latest_jobs()[0][0].split("_")[0]
        port = RDZV_PORT_BASE + int(job) % RDZV_PORT_SPAN
        # another process on node1 holds the port the task's rendezvous would serve on
        ns = "/var/run/netns/hv16917n1"
        holder = subprocess.Popen(["nsenter", f"--net={ns}", "python3", "-c",
                                   "import socket,sys,time; s=socket.socket(); s.bind(('',int(sys.argv[1]))); "
                                   "s.listen(); print('ready', flush=True); time.sleep(600)", str(port)],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "ready"
    finally:
        subprocess.run(["scontrol", "update", "PartitionName=debug", "State=UP"], check=True)
    try:
        wait_for(lambda: state(sweep) in ("FAILED", "COMPLETED"), 300, "the task to fail")
    finally:
        holder.kill()
    message = sweep.task(0).state()["message"]
    assert state(sweep) == "FAILED" and f"rendezvous port {port} on node1 is in use" in message, message
    assert "\n" not in message
    wait_for(lambda: not in_queue(job), 120, "the gang to leave the queue")
    assert not any(trainers().values())


def test_an_unresolvable_rendezvous_host_fails_with_a_clear_error(two_nodes: str, tmp_path: Path) -> None:
    hosts = Path(STATE_DIR) / "hosts"
    original = hosts.read_text()
    # node1 unknown to the nodes (written in place: the file is bind-mounted over their /etc/hosts)
    with open(hosts, "r+") as f:
        f.write("\n".join(line for line in original.splitlines() if "node1" not in line.split()[1:]) + "\n")
        f.truncate()
    try:
        sweep = submit(tmp_path, spec_2x2(tmp_path, "host"), "runs")
        wait_for(lambda: state(sweep) in ("FAILED", "COMPLETED"), 300, "the task to fail")
    finally:
        with open(hosts, "r+") as f:
            f.write(original)
            f.truncate()
    message = sweep.task(0).state()["message"]
    assert state(sweep) == "FAILED" and "rendezvous host 'node1' does not resolve" in message, message
    assert "every node of the allocation must resolve the others' names" in message
