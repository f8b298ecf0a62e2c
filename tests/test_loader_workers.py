"""Loader workers start from the trainer's fork server, never forked from the trainer itself (whose threads can
leave a forked child stuck in CPython's after-fork clean-up): every objective's data sets pickle to them, and
they give the batches read in-process."""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hpcvit.objectives import get_objective
from hpcvit.training import stop, workers as worker_procs
from tests.conftest import REPO, signals_in, wait_for
from tests.test_hits_training import SMALL, SPEC as HITS, _events
from tests.test_objectives import REGRESSION, _blobs
from tests.test_train_features import make_sweep


def record_parent(folder: Path, worker_id: int) -> None:
    stop.ignore_in_worker(worker_id)
    (folder / f"{os.getpid()}.ppid").write_text(str(os.getppid()))


def _spec(workdir: Path, case: str) -> str:
    if case == "image-synthetic":
        return "name: w\ndata: {format: synthetic, synthetic: {n_samples: 120, image_size: 8}}\nmodel: {name: cnn_small}\n"
    if case == "regression-cache":
        text = REGRESSION.format(path=_blobs(workdir / "blobs.h5", n=120))
        return text.replace("  scalar_inputs: [pt]\n", f"  scalar_inputs: [pt]\n  cache_dir: {workdir / 'cache'}\n")
    return HITS.format(name="w", path=_events(workdir / "calo.h5", 24), scaling="standard",
                       model="hit_graph_transformer", kwargs=SMALL["hit_graph_transformer"], epochs=1, ranks=1)


def _flat(batch) -> list[torch.Tensor]:
    if torch.is_tensor(batch):
        return [batch.clone()]
    if isinstance(batch, dict):
        return [t for k in sorted(batch) for t in _flat(batch[k])]
    if isinstance(batch, (list, tuple)):
        return [t for part in batch for t in _flat(part)]
    return []


@pytest.mark.parametrize("case", ["image-synthetic", "regression-cache", "hits"])
def test_each_objectives_loader_reads_the_same_batches_in_fork_server_workers(workdir: Path, case: str) -> None:
    sweep = make_sweep(workdir, _spec(workdir, case), tracking=False)
    spec = sweep.task(0).spec()
    objective = get_objective(spec.data.task)(spec, sweep.root)
    data = objective.build_data(None)
    parents = workdir / "parents"
    parents.mkdir()

    def batches(dataset, workers: int) -> list[list[torch.Tensor]]:
        loader = objective.loader(dataset, None, 5, workers=workers, generator=torch.Generator().manual_seed(2),
                                  pin_memory=False, persistent=False, context=worker_procs.context(workers),
                                  worker_init_fn=functools.partial(record_parent, parents) if workers else None)
        return [_flat(b) for b in loader]

    for dataset in (data.train, data.val):
        alone, shared = batches(dataset, 0), batches(dataset, 2)
        assert len(alone) == len(shared) > 1
        for a, b in zip(alone, shared):
            assert len(a) == len(b) > 0 and all(torch.equal(x, y) for x, y in zip(a, b))
    ppids = {int(p.read_text()) for p in parents.glob("*.ppid")}
    assert len(list(parents.glob("*.ppid"))) == 4 and os.getpid() not in ppids, "workers forked from the trainer"


KILLED_LOADER = """
import os, signal, torch
from multiprocessing import forkserver
from torch.utils.data import DataLoader, TensorDataset
from hpcvit.training import workers
loader = DataLoader(TensorDataset(torch.arange(1000.0)), batch_size=1, num_workers=2,
                    multiprocessing_context=workers.context(2))
it = iter(loader)
next(it)
print(forkserver._forkserver._forkserver_pid, *(w.pid for w in it._workers), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_killed_trainer_leaves_no_fork_server_nor_worker_behind(tmp_path: Path) -> None:
    # the workers watch their parent, the server; the server dies with the process that started it
    proc = subprocess.run([sys.executable, "-c", KILLED_LOADER], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 3
    try:
        wait_for(lambda: not any(_alive(p) for p in pids), 30, "the fork server and its workers to exit")
    finally:
        for pid in pids:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def held_then_ignoring(folder: Path, worker_id: int) -> None:
    """A worker_init_fn that waits for the test's signals first: torch's own worker SIGTERM handler is
    installed by then, and the stop signals not yet ignored."""
    server = os.getppid()
    (folder / f"{os.getpid()}.held").touch()
    while not (folder / "go").exists() and os.getppid() == server:  # a failed test's server is gone: go on
        time.sleep(0.02)
    stop.ignore_in_worker(worker_id)


SIGNALLED_LOADER = """
import functools, sys, torch
from multiprocessing import forkserver, resource_tracker
from torch.utils.data import DataLoader, TensorDataset
from hpcvit.training import workers
from tests.test_loader_workers import held_then_ignoring
loader = DataLoader(TensorDataset(torch.arange(64.0)), batch_size=4, num_workers=2,
                    worker_init_fn=functools.partial(held_then_ignoring, __import__("pathlib").Path(sys.argv[1])),
                    multiprocessing_context=workers.context(2))
it = iter(loader)
print(forkserver._forkserver._forkserver_pid, resource_tracker._resource_tracker._pid, *(w.pid for w in it._workers),
      flush=True)
print(sum(float(b[0].sum()) for b in it), flush=True)
"""


def test_the_stop_signals_leave_the_fork_server_its_tracker_and_workers_running(tmp_path: Path) -> None:
    # a preemption or time-limit warning signals every process of the job, whenever it comes; here while the
    # workers are starting, and the trainer saves and goes on reading
    proc = subprocess.Popen([sys.executable, "-c", SIGNALLED_LOADER, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 4, proc.stderr.read()[-2000:] if proc.poll() is not None else pids
        wait_for(lambda: len(list(tmp_path.glob("*.held"))) == 2, 60, "both workers to start")
        # the server was started with them blocked, so none could reach it before it ignored them
        assert set(stop.STOP_SIGNALS) <= signals_in(pids[0], "SigBlk")
        for pid in pids:
            for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
                os.kill(pid, sig)
        time.sleep(1.0)
        assert all(_alive(p) for p in pids), [p for p in pids if not _alive(p)]
        (tmp_path / "go").touch()
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and float(out) == sum(range(64)), err[-2000:]
    finally:
        (tmp_path / "go").touch()
        proc.kill()
