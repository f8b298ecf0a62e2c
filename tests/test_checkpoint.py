"""Checkpoints: atomic writes, keep-K pruning, best copy, checksum verification with fallback."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcvit.checkpoint import CheckpointManager, differences


def _state(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    return {"model": {"w": torch.randn(64, generator=g)}, "step": step, "rng": torch.get_rng_state()}


def test_round_trip_keep_and_best(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=2, keep_best=True)
    for step in (10, 20, 30):
        mgr.save(_state(step), step=step, epoch=step // 10, metric=step / 100, is_best=step == 20)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.json", "best.pt", "ckpt-000000020.json", "ckpt-000000020.pt",
                     "ckpt-000000030.json", "ckpt-000000030.pt"]
    state, meta = mgr.load_latest()
    assert meta["step"] == 30 and meta["epoch"] == 3
    assert torch.equal(state["model"]["w"], _state(30)["model"]["w"])
    best = torch.load(mgr.best(), weights_only=False)
    assert best["step"] == 20


def test_corrupt_newest_falls_back_to_previous(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=3)
    for step in (1, 2, 3):
        mgr.save(_state(step), step=step, epoch=0)
    newest = tmp_path / "ckpt-000000003.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    state, meta = mgr.load_latest()
    assert meta["step"] == 2 and state["step"] == 2
    # A data file without its sidecar (crash between the two renames) does not count.
    (tmp_path / "ckpt-000000002.json").unlink()
    assert mgr.load_latest()[1]["step"] == 1


def test_truncated_file_and_leftover_temp_are_ignored(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=2)
    mgr.save(_state(5), step=5, epoch=0)
    mgr.save(_state(6), step=6, epoch=0)
    (tmp_path / ".ckpt-000000007.pt.123.tmp").write_bytes(b"partial")
    target = tmp_path / "ckpt-000000006.pt"
    target.write_bytes(target.read_bytes()[:100])
    assert mgr.load_latest()[1]["step"] == 5
    assert CheckpointManager(tmp_path / "empty").load_latest() is None
    assert mgr.best() is None


def test_background_save_writes_the_state_as_it_was_when_called(tmp_path: Path) -> None:
    sync_dir, async_dir = tmp_path / "sync", tmp_path / "async"
    live = _state(4)
    CheckpointManager(sync_dir).save(live, step=4, epoch=0, metric=0.5, is_best=True)
    mgr = CheckpointManager(async_dir)
    mgr.save_async(live, step=4, epoch=0, metric=0.5, is_best=True)
    live["model"]["w"].add_(1.0)  # training goes on while the writer works
    live["step"] = 99
    mgr.wait()
    saved, meta = mgr.load_latest()
    expected = torch.load(sync_dir / "ckpt-000000004.pt", weights_only=True)
    assert meta["step"] == 4 and saved["step"] == 4
    assert torch.equal(saved["model"]["w"], expected["model"]["w"])
    assert torch.equal(saved["rng"], expected["rng"])
    assert mgr.best() is not None
    assert sorted(p.name for p in async_dir.iterdir()) == sorted(p.name for p in sync_dir.iterdir())


def test_background_saves_keep_k_and_the_next_save_waits_for_the_last(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3, 4):
        mgr.save_async(_state(step), step=step, epoch=0)
    state, meta = mgr.load_latest()  # a read waits for the write in flight
    assert meta["step"] == 4 and state["step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000000003.json", "ckpt-000000003.pt",
                                                         "ckpt-000000004.json", "ckpt-000000004.pt"]


def test_an_error_of_the_background_writer_is_raised_to_the_caller(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path / "ckpts")
    mgr.save_async(_state(1), step=1, epoch=0)
    mgr.wait()
    # the folder replaced by a file: the writer's temp file cannot be created there
    for p in mgr.dir.iterdir():
        p.unlink()
    mgr.dir.rmdir()
    mgr.dir.write_text("not a folder")
    mgr.save_async(_state(2), step=2, epoch=0)
    while mgr.writing:
        time.sleep(0.01)
    try:
        mgr.raise_if_failed()
    except OSError as exc:
        assert "ckpts" in str(exc)
    else:
        raise AssertionError("the writer's error was not raised")
    mgr.wait()  # raised once, then cleared


def test_best_outlives_the_pruning_of_the_checkpoint_it_came_from(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path, keep=1)
    mgr.save(_state(1), step=1, epoch=0, metric=0.9, is_best=True)
    mgr.save(_state(2), step=2, epoch=1, metric=0.8)
    assert not (tmp_path / "ckpt-000000001.pt").exists()
    best = mgr.best()
    assert best is not None and torch.load(best, weights_only=True)["step"] == 1
    mgr.save(_state(3), step=3, epoch=2, metric=0.95, is_best=True)  # replaced, not written through the link
    assert torch.load(mgr.best(), weights_only=True)["step"] == 3
    assert torch.load(tmp_path / "ckpt-000000003.pt", weights_only=True)["step"] == 3


def test_background_saves_refill_one_snapshot_and_each_file_holds_its_own_state(tmp_path: Path) -> None:
    """The second and later snapshots are copied into the first one's CPU tensors (no fresh memory); each
    checkpoint still holds the state as it was when its save was called."""
    mgr = CheckpointManager(tmp_path, keep=10)
    live = {"model": {"w": torch.zeros(256), "b": torch.zeros(3, 4).t()}, "step": 0, "rng": torch.get_rng_state(),
            "opt": [{"m": torch.zeros(8, dtype=torch.float64)}, {"lr": 0.1}]}
    pointers = None
    for step in range(1, 5):
        live["model"]["w"].add_(step)
        live["model"]["b"].add_(-step)
        live["opt"][0]["m"].add_(0.5)
        live["step"] = step
        live["rng"] = torch.get_rng_state()
        if step == 4:
            live["model"]["w"] = torch.full((300,), 4.0)  # another shape: a fresh tensor
        mgr.save_async(live, step=step, epoch=0)
        staged = mgr._staging
        now = (staged["model"]["w"].data_ptr(), staged["model"]["b"].data_ptr(), staged["opt"][0]["m"].data_ptr())
        if pointers is not None:
            assert now[1:] == pointers[1:]
            assert (now[0] == pointers[0]) == (step != 4)
        pointers = now
        expected = {"w": live["model"]["w"].clone(), "b": live["model"]["b"].clone(),
                    "m": live["opt"][0]["m"].clone(), "rng": live["rng"].clone()}
        live["model"]["w"].add_(1000.0)  # training goes on while the writer works
        live["model"]["b"].add_(1000.0)
        mgr.wait()
        live["model"]["w"].sub_(1000.0)
        live["model"]["b"].sub_(1000.0)
        saved = torch.load(tmp_path / f"ckpt-{step:09d}.pt", weights_only=True)
        assert saved["step"] == step and saved["opt"][1] == {"lr": 0.1}
        assert torch.equal(saved["model"]["w"], expected["w"]) and torch.equal(saved["model"]["b"], expected["b"])
        assert saved["model"]["b"].stride() == expected["b"].stride()
        assert torch.equal(saved["opt"][0]["m"], expected["m"]) and torch.equal(saved["rng"], expected["rng"])


def test_the_background_writer_yields_the_cores_to_training(tmp_path: Path) -> None:
    import os
    import threading

    mgr = CheckpointManager(tmp_path)
    seen: list[int] = []
    write = mgr.save

    def save(*args, **kwargs):
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return write(*args, **kwargs)

    mgr.save = save
    mgr.save_async(_state(1), step=1, epoch=0)
    mgr.wait()
    assert seen and seen[0] > os.getpriority(os.PRIO_PROCESS, 0)
    assert mgr.load_latest()[1]["step"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_gpu_snapshot_is_freed_once_written(tmp_path: Path) -> None:
    mgr = CheckpointManager(tmp_path)
    live = {"w": torch.randn(1024, device="cuda"), "rng": torch.get_rng_state()}
    mgr.save_async(live, step=1, epoch=0)
    expected = live["w"].cpu()
    live["w"].add_(1.0)
    mgr.wait()
    assert mgr._staging is None
    assert torch.equal(torch.load(tmp_path / "ckpt-000000001.pt", weights_only=True)["w"], expected)


def test_differences_names_every_entry_that_differs() -> None:
    a = {"model": {"w": torch.tensor([1.0, float("nan")]), "n": torch.tensor([3])},
         "rng": [{"python": (3, (1, 2), None), "numpy": ["MT19937", torch.arange(4)]}], "epoch": 2}
    same = {"model": {"w": torch.tensor([1.0, float("nan")]), "n": torch.tensor([3])},
            "rng": [{"python": (3, (1, 2), None), "numpy": ["MT19937", torch.arange(4)]}], "epoch": 2}
    assert differences(a, same) == []  # NaN equals NaN
    b = {"model": {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor([3.0])},
         "rng": [{"python": (3, (1, 3), None), "numpy": ["MT19937", torch.arange(4)]}], "step": 2}
    assert differences(a, b) == ["epoch", "step", "model.n", "model.w", "rng[0].python[1][1]"]
    assert differences(a, {**a, "model": {"w": torch.zeros(3), "n": a["model"]["n"]}}) == ["model.w"]  # shape
    arrays = {"x": np.array([1.0, np.nan]), "y": np.arange(3), "z": 1}
    assert differences(arrays, {"x": np.array([1.0, np.nan]), "y": np.arange(3), "z": 1}) == []
    assert differences(arrays, {"x": np.array([1.0, 2.0]), "y": np.arange(3.0), "z": 1.0}) == ["x", "y", "z"]
