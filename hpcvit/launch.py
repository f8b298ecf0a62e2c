"""What one array task runs: wait for a slot (local), start torchrun, watch it, record the outcome.

:class:`TaskLauncher` is the function submitit pickles. It starts ``torchrun -m hpcvit.train TASK_DIR`` as a
child and polls it. On Slurm the time-limit warning (USR2) reaches every process of the step; submitit then
calls :meth:`TaskLauncher.checkpoint`, which waits for the trainer to save and lets submitit requeue the
task. A preemption or ``scontrol requeue`` (SIGTERM) needs nothing from the launcher: the trainer saves,
Slurm requeues. On the local executor, signals reach only this process, so they are forwarded.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from hpcvit.manifest import SweepDir, TaskDir, process_start_time, read_json

TRAINER_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2"
_MARKERS = ("result.json", "stopped.json", "failed.json")


def _die_with_parent() -> None:
    # If the launcher is killed, torchrun gets SIGTERM (and its workers save) instead of running on orphaned.
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _exited(pid: int) -> bool:
    return process_start_time(pid) is None


def torchrun_command(task: TaskDir, nodes: int, procs_per_node: int, env: dict[str, str]) -> list[str]:
    """The torchrun argument list (no shell involved) for this node of the task."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={procs_per_node}",
           f"--signals-to-handle={TRAINER_SIGNALS}", "--shutdown-timeout=60", "--max-restarts=0"]
    if nodes > 1:
        job = env.get("SLURM_JOB_ID", "0")
        hosts = subprocess.run(["scontrol", "show", "hostnames", env["SLURM_JOB_NODELIST"]],
                               check=True, capture_output=True, text=True).stdout.split()
        port = 29500 + int(job) % 20000
        cmd += [f"--nnodes={nodes}", f"--node-rank={env.get('SLURM_NODEID', '0')}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={hosts[0]}:{port}", f"--rdzv-id=hpcvit-{job}"]
    else:
        cmd.append("--standalone")
    return cmd + ["-m", "hpcvit.train", str(task.path)]


class _Slot:
    """One of ``limit`` lock files: the local executor's stand-in for ``--array=...%K``."""

    def __init__(self, sweep: SweepDir, limit: int):
        self.dir, self.limit, self.fd = sweep.root / ".slots", limit, None

    def __enter__(self) -> _Slot:
        self.dir.mkdir(exist_ok=True)
        while True:
            for k in range(self.limit):
                fd = os.open(self.dir / f"slot-{k}", os.O_CREAT | os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self.fd = fd
                    return self
                except BlockingIOError:
                    os.close(fd)
            time.sleep(0.5)

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.close(self.fd)


class TaskLauncher(submitit.helpers.Checkpointable):
    """Runs task ``index`` of the sweep in ``sweep_root``; pickled by submitit."""

    def __init__(self, sweep_root: str):
        self.sweep_root = sweep_root
        self._proc: subprocess.Popen[bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"sweep_root": self.sweep_root}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.sweep_root, self._proc = state["sweep_root"], None

    def __call__(self, index: int) -> dict[str, Any]:
        sweep = SweepDir(Path(self.sweep_root))
        task = sweep.task(index)
        spec = task.spec()
        env = dict(os.environ)
        executor = env.get("SUBMITIT_EXECUTOR", "local")
        starts = int(task.state().get("starts", 0)) + 1
        restarts = int(env.get("SLURM_RESTART_COUNT", starts - 1))
        task.path.mkdir(parents=True, exist_ok=True)
        if read_json(task.path / "result.json"):
            return task.write_state(state="COMPLETED", message="already complete")
        slot = _Slot(sweep, spec.resources.array_parallelism) if executor == "local" else None
        if slot:
            task.write_state(state="QUEUED", pid=os.getpid(), pid_start=process_start_time(os.getpid()))
            slot.__enter__()
        try:
            return self._run(task, spec, env, executor, restarts, starts)
        finally:
            if slot:
                slot.__exit__(None, None, None)

    def _run(self, task: TaskDir, spec: Any, env: dict[str, str], executor: str, restarts: int,
             starts: int) -> dict[str, Any]:
        for marker in ("stopped.json", "failed.json"):
            (task.path / marker).unlink(missing_ok=True)
        procs = spec.resources.procs_per_node
        env["OMP_NUM_THREADS"] = str(max(1, spec.resources.cpus_per_task // procs))
        env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "60")
        cmd = torchrun_command(task, spec.resources.nodes, procs, env)
        job_id = submitit.JobEnvironment().job_id
        with open(task.log, "ab") as log:
            log.write(f"\n=== start {time.strftime('%Y-%m-%d %H:%M:%S')} on {socket.gethostname()} "
                      f"(restart {restarts}): {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True, preexec_fn=_die_with_parent)
        task.write_state(state="RUNNING", pid=os.getpid(), pid_start=process_start_time(os.getpid()),
                         trainer_pgid=self._proc.pid, host=socket.gethostname(), job_id=job_id,
                         executor=executor, restarts=restarts, starts=starts, started=time.time())
        while (rc := self._proc.poll()) is None:
            time.sleep(0.5)
        return self._outcome(task, rc)

    def _outcome(self, task: TaskDir, rc: int) -> dict[str, Any]:
        if read_json(task.path / "result.json"):
            return task.write_state(state="COMPLETED", returncode=rc, ended=time.time(), message="")
        stopped = read_json(task.path / "stopped.json")
        where = f" at epoch {stopped['epoch']} step {stopped['step_in_epoch']}" if stopped else " before training"
        if (task.path / "cancel").exists():
            # Cancelled even if the signal came before the trainer could save: resume restarts it cleanly.
            return task.write_state(state="CANCELLED", returncode=rc, ended=time.time(), message=f"cancelled{where}")
        if stopped:
            return task.write_state(state="PREEMPTED", returncode=rc, ended=time.time(),
                                    message=f"stopped by {stopped['signal']}{where}")
        failed = read_json(task.path / "failed.json") or {}
        last = (failed.get("error") or "").strip().splitlines()[-1:] or [f"torchrun exited with {rc}"]
        task.write_state(state="FAILED", returncode=rc, ended=time.time(), message=last[0])
        raise RuntimeError(f"task {task.key} failed: {last[0]} (log: {task.log})")

    def checkpoint(self, index: int) -> submitit.helpers.DelayedSubmission:  # type: ignore[override]
        """Called by submitit in its USR2 handler: let the trainer save, then be requeued."""
        proc = self._proc
        if proc is not None:
            if os.environ.get("SUBMITIT_EXECUTOR", "local") != "slurm":
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGUSR2)
            # poll()/wait() are unreliable inside a signal handler that interrupted poll(): watch /proc.
            deadline = time.monotonic() + 120
            while not _exited(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            task = SweepDir(Path(self.sweep_root)).task(index)
            task.write_state(state="PREEMPTED", message="time limit: checkpointed, requeued")
        return super().checkpoint(index)


