"""What one array task runs: wait for a slot (local), start torchrun, watch it, record the outcome.

:class:`TaskLauncher` is the function submitit pickles. It starts ``torchrun -m hpcvit.train TASK_DIR`` as a
child and polls it. On Slurm the time-limit warning (USR2) reaches every process of the step; submitit then
calls :meth:`TaskLauncher.checkpoint`, which waits for the trainer to save and lets submitit requeue the
task. A preemption or ``scontrol requeue`` (SIGTERM) needs nothing from the launcher: the trainer saves,
Slurm requeues. On the local executor, signals reach only this process, so they are forwarded.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import submitit

from hpcvit.fsio import is_locked
from hpcvit.ledger import SweepDir, TaskDir
from hpcvit.scheduler import slurm
from hpcvit.scheduler.jobenv import RESTARTS_VAR, JobEnv
from hpcvit.scheduler.local import Slot
from hpcvit.scheduler.procs import die_with_parent, libc, pid_alive, process_start_time, signal_group
from hpcvit.config import JobSpec
from hpcvit.states import TaskState

log = logging.getLogger(__name__)

TRAINER_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR2"
SAVE_WAIT_S = 120
"""How long the launcher waits, after a time-limit warning, for the trainer to save and exit."""
MARK_READY_WAIT_S = 5.0
"""How long the trainer's start waits for MLflow's import and the store's opening in the launcher (so that
they do not run beside the trainer's own start-up and MLflow learns of the start as state.json does)."""


def _die_with_launcher() -> None:
    # If the launcher is killed, torchrun gets SIGTERM (and its workers save) instead of running on orphaned.
    die_with_parent(signal.SIGTERM)


RDZV_PORT_BASE, RDZV_PORT_SPAN = 29500, 20000
"""A multi-node task's c10d rendezvous port on its first node: ``RDZV_PORT_BASE + job id % RDZV_PORT_SPAN``."""


class LaunchError(RuntimeError):
    """This node cannot start its part of the task; ``str()`` is the one-line reason."""


def rendezvous(env: JobEnv) -> tuple[str, int]:
    """The rendezvous host (the allocation's first node) and port of a multi-node task."""
    try:
        hosts = slurm.hostnames(env.nodelist)
    except slurm.SlurmError as exc:
        raise LaunchError(str(exc)) from None
    if not hosts:
        raise LaunchError(f"SLURM_JOB_NODELIST={env.nodelist!r} names no node")
    return hosts[0], RDZV_PORT_BASE + int(env.job_id or "0") % RDZV_PORT_SPAN


def check_rendezvous(host: str, port: int, serve: bool) -> None:
    """Fail at once, saying why, where torchrun would fail late and vaguely: ``host`` must resolve on this
    node, and on the node that serves the rendezvous (``serve``) ``port`` must be free."""
    here = socket.gethostname()
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise LaunchError(f"rendezvous host {host!r} does not resolve on {here} ({exc.strerror or exc}); "
                          "every node of the allocation must resolve the others' names") from None
    if serve:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("", port))
            except OSError as exc:
                raise LaunchError(f"rendezvous port {port} on {here} is in use ({exc.strerror or exc}): another "
                                  "task or process on the node holds it") from None


def torchrun_command(task: TaskDir, nodes: int, procs_per_node: int, env: JobEnv) -> list[str]:
    """The torchrun argument list (no shell involved) for this node of the task."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={procs_per_node}",
           f"--signals-to-handle={TRAINER_SIGNALS}", "--shutdown-timeout=60", "--max-restarts=0"]
    if nodes > 1:
        host, port = rendezvous(env)
        cmd += [f"--nnodes={nodes}", f"--node-rank={env.node_rank}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={host}:{port}", f"--rdzv-id=hpcvit-{env.job_id or '0'}"]
    else:
        cmd.append("--standalone")
    return cmd + ["-m", "hpcvit.train", str(task.path)]


def trainer_command(task: TaskDir, nodes: int, procs_per_node: int, env: JobEnv) -> tuple[list[str], dict[str, str]]:
    """The trainer's argument list for this node, and the environment variables it adds.

    One rank on one node needs no torchrun: the trainer runs as the launcher's child itself, which saves
    starting a second Python and importing torch in it first. It gets the stop signals directly (Slurm sends
    them to every process of the step; locally the launcher signals its process group) and reads the same
    rank variables as under torchrun; with no ``MASTER_ADDR`` it forms no process group.
    """
    if nodes == 1 and procs_per_node == 1:
        rank_env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "GROUP_RANK": "0"}
        return [sys.executable, "-m", "hpcvit.train", str(task.path)], rank_env
    return torchrun_command(task, nodes, procs_per_node, env), {}


def _cancelled_unstarted(task: TaskDir, message: str) -> dict[str, Any]:
    """Record a task cancelled before its training started, and close its MLflow run (made at submit) as
    KILLED: no trainer is there to do it."""
    record = task.write_state(state=TaskState.CANCELLED, ended=time.time(), message=message)
    _tell_tracking(task, TaskState.CANCELLED)
    return record


def _start_mark(task: TaskDir, restarts: int, job_id: str) -> Any:
    """MLflow made ready to be told that the task runs, by the launcher, before the trainer starts (None
    without tracking)."""
    if not task.sweep.manifest.get("tracking_uri"):
        return None
    from hpcvit.tracking import names
    from hpcvit.tracking.upkeep import StartMark

    return StartMark(task, {names.RESTARTS_TAG: str(restarts), names.SLURM_JOB_TAG: str(job_id),
                            names.HOST_TAG: socket.gethostname()})


def _tell_tracking(task: TaskDir, state: TaskState) -> None:
    """The task's MLflow run told the state only the launcher knows (closed, if still open)."""
    if task.sweep.manifest.get("tracking_uri") and task.run_id():
        from hpcvit.tracking.upkeep import close_stale_run

        try:
            close_stale_run(task.sweep, task.index, state)
        except Exception as exc:  # noqa: BLE001 - status tells it later; the state itself is recorded
            log.warning("could not tell the MLflow run of %s it is %s (%s)", task.key, state, exc)


class TaskLauncher(submitit.helpers.Checkpointable):
    """Runs task ``index`` of the sweep in ``sweep_root``; pickled by submitit.

    ``after`` runs once the task's trainer has ended, whatever its outcome (what submitted the task decides
    what: a search's rung decision on the local executor); an error in it is logged, never the task's.
    """

    def __init__(self, sweep_root: str, after: Callable[[TaskDir], Any] | None = None):
        self.sweep_root, self.after = sweep_root, after
        self._proc: subprocess.Popen[bytes] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"sweep_root": self.sweep_root, "after": self.after}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.sweep_root, self.after, self._proc = state["sweep_root"], state.get("after"), None

    def __call__(self, index: int) -> dict[str, Any]:
        task = SweepDir(Path(self.sweep_root)).task(index).ensure()
        spec = task.spec()
        env = JobEnv.read()
        if task.result():
            return task.write_state(state=TaskState.COMPLETED, message="already complete")
        slot = Slot(task.sweep.root / ".slots", spec.resources.array_parallelism) if not env.on_slurm else None
        if slot:
            task.write_state(state=TaskState.QUEUED, pid=os.getpid(), pid_start=process_start_time(os.getpid()))
            # submitit's job ignores SIGTERM: a cancelled task waiting for its slot learns it from the marker
            if not slot.acquire(give_up=task.cancel_requested):
                return _cancelled_unstarted(task, "cancelled (hpcvit cancel) while waiting for a slot")
        if task.cancel_requested():  # cancelled between its start and now: no training starts
            if slot:
                slot.__exit__(None, None, None)
            return _cancelled_unstarted(task, "cancelled (hpcvit cancel) before its training started")
        try:
            return self._run(task, spec, env)
        finally:
            if slot:
                slot.__exit__(None, None, None)
            if self.after is not None:
                try:
                    self.after(task)
                except Exception:  # status, wait and resume run it again where it matters (a search's rung)
                    log.exception("task %s: what runs after it failed", task.key)

    def _run(self, task: TaskDir, spec: JobSpec, env: JobEnv) -> dict[str, Any]:
        nodes, first = spec.resources.nodes, env.node_rank == 0
        # one launcher per node: the first node's keeps the task's record, the others only run their torchrun
        if first:
            task.clear_outcome()
            task.keep_reserve()
        starts = int(task.state().get("starts", 0)) + int(first)
        restarts = max(0, starts - 1)  # another node's launcher may read the record before the first one writes it
        job_id = submitit.JobEnvironment().job_id
        libc()  # loaded before the mark's thread runs: the trainer's preexec_fn then only calls into it
        mark = _start_mark(task, restarts, job_id) if first else None
        if nodes > 1:
            try:
                check_rendezvous(*rendezvous(env), serve=first)
            except LaunchError as exc:
                self._launch_failed(task, env, str(exc), first)
        procs = spec.resources.procs_per_node
        child_env = dict(os.environ)
        child_env["OMP_NUM_THREADS"] = str(max(1, spec.resources.cpus_per_task // procs))
        child_env[RESTARTS_VAR] = str(restarts)
        child_env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "60")
        cmd, rank_env = trainer_command(task, spec.resources.nodes, procs, env)
        if rank_env:
            for name in ("MASTER_ADDR", "MASTER_PORT"):
                child_env.pop(name, None)
            child_env.update(rank_env)
        if mark is not None:
            mark.ready(MARK_READY_WAIT_S)
        with open(task.log, "ab") as log:
            where = socket.gethostname() + (f", node {env.node_rank} of {nodes}" if nodes > 1 else "")
            log.write(f"\n=== start {time.strftime('%Y-%m-%d %H:%M:%S')} on {where} "
                      f"(restart {restarts}): {' '.join(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env,
                                          start_new_session=True, preexec_fn=_die_with_launcher)
        if first:
            task.write_state(state=TaskState.RUNNING, pid=os.getpid(), pid_start=process_start_time(os.getpid()),
                             trainer_pgid=self._proc.pid, host=socket.gethostname(), job_id=job_id,
                             executor=env.executor, restarts=restarts, starts=starts, started=time.time(),
                             message="")  # the last stop's message is not this start's
            if mark is not None:
                mark.send()
        while (rc := self._proc.poll()) is None:
            time.sleep(0.5)
        if not first:  # the first node's launcher records the outcome (its rank 0 writes it)
            with open(task.log, "ab") as log:
                log.write(f"=== node {env.node_rank} ({socket.gethostname()}): torchrun exited with {rc}\n".encode())
            return {"node": env.node_rank, "returncode": rc}
        self._wait_for_trainer(task)
        return self._outcome(task, rc, mark)

    @staticmethod
    def _launch_failed(task: TaskDir, env: JobEnv, reason: str, first: bool) -> None:
        """This node cannot start its part: the first node records FAILED. Either raises, and the non-zero exit
        ends the whole step (srun ``--kill-on-bad-exit``), so no node waits in a rendezvous that cannot form."""
        with open(task.log, "ab") as log:
            log.write(f"\n=== node {env.node_rank} ({socket.gethostname()}): {reason}\n".encode())
        if first:
            task.write_state(state=TaskState.FAILED, message=reason, ended=time.time())
        raise RuntimeError(f"task {task.key} failed: {reason}")

    @staticmethod
    def _wait_for_trainer(task: TaskDir) -> None:
        """torchrun may exit before its ranks (an agent killed, its workers still saving): the outcome is read
        only once rank 0 has released the task's trainer lock."""
        deadline = time.monotonic() + SAVE_WAIT_S
        while is_locked(task.file(TaskDir.RUN_LOCK)) and time.monotonic() < deadline:
            time.sleep(0.2)

    def _outcome(self, task: TaskDir, rc: int, mark: Any = None) -> dict[str, Any]:
        ended = {"returncode": rc, "ended": time.time()}

        def record(state: TaskState, only_here: bool = False, **fields: Any) -> dict[str, Any]:
            # MLflow first: once state.json says how the task ended, status may decide on it (the job ends now).
            # ``only_here``: a state the trainer never told MLflow, which the launcher alone knows.
            if mark is not None:
                mark.settle(state, only_here)
            elif only_here:
                _tell_tracking(task, state)
            return task.write_state(state=state, **fields)
        if task.result():
            return record(TaskState.COMPLETED, message="", **ended)
        rung = task.rung_done()
        if rung and rc == 0:
            name = ((task.sweep.search() or {}).get("search") or {}).get("metric", "")
            value = (rung.get("metrics") or {}).get(name)
            shown = f": {name}={value:.4g}" if isinstance(value, (int, float)) else ""
            return record(TaskState.RUNG_DONE, **ended,
                                    message=f"rung {rung['rung']} done at epoch {rung['epoch']}{shown}")
        stopped = task.stopped()
        where = f" at epoch {stopped['epoch']} step {stopped['step_in_epoch']}" if stopped else " before training"
        if task.cancel_requested():
            # Cancelled even if the signal came before the trainer could save: resume restarts it cleanly.
            return record(TaskState.CANCELLED, message=f"cancelled{where}", **ended)
        what = "torchrun's agent" if self._proc is not None and "torch.distributed.run" in self._proc.args else \
            "the trainer"
        if stopped and rc == -signal.SIGKILL:  # the ranks saved because their agent died, not for a stop request
            return record(TaskState.LOST, only_here=True, **ended,  # the ranks told MLflow of a stop
                          message=f"{what} was killed (SIGKILL); its ranks saved{where}: `hpcvit resume` continues it")
        if stopped:
            return record(TaskState.PREEMPTED, message=f"stopped by {stopped['signal']}{where}",
                                    **ended)
        failed = task.failure() or {}
        killed = f"{what} was killed by {signal.Signals(-rc).name}" if rc < 0 and -rc in signal.valid_signals() \
            else None
        summary = failed.get("summary") or (
            f"{killed} (the kernel's out-of-memory killer sends SIGKILL; log: {task.log})" if killed
            else f"torchrun exited with {rc} (log: {task.log})")
        record(TaskState.FAILED, message=summary, **ended)
        raise RuntimeError(f"task {task.key} failed: {summary} (log: {task.log})")

    def checkpoint(self, index: int) -> submitit.helpers.DelayedSubmission | None:  # type: ignore[override]
        """Called by submitit in its USR2 handler: let the trainer save, then be requeued (None: not requeued)."""
        proc = self._proc
        task = SweepDir(Path(self.sweep_root)).task(index)
        if proc is not None:
            if not JobEnv.read().on_slurm:
                signal_group(proc.pid, signal.SIGUSR2)
            # poll()/wait() are unreliable inside a signal handler that interrupted poll(): watch /proc.
            deadline = time.monotonic() + SAVE_WAIT_S
            while pid_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            self._wait_for_trainer(task)
        if task.result():  # the warning came after (or during) the last epoch: done, nothing to requeue
            task.write_state(state=TaskState.COMPLETED, message="finished before its time limit")
            return None
        stops = int(task.state().get("time_limit_stops", 0)) + 1
        limit = task.spec().resources.max_requeues
        if stops > limit:
            task.write_state(state=TaskState.TIMEOUT, time_limit_stops=stops,
                             message=f"hit its time limit {stops} times (resources.max_requeues = {limit}); "
                                     "checkpointed: `hpcvit resume` continues it")
            return None
        task.write_state(state=TaskState.PREEMPTED, time_limit_stops=stops, stop_cause="time_limit",
                         message=f"time limit: checkpointed, requeued ({stops} of {limit})")
        return super().checkpoint(index)
