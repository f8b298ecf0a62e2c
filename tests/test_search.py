"""Adaptive search: the rung plan, the spec's errors, the ranking, and the promotion twin (in-process, CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hpcvit.search import epoch_cost, plan, rank
from hpcvit.config import SearchSpec
from hpcvit.sweep import load_sweep
from hpcvit.training.loop import Trainer
from hpcvit.yamlio import SpecError
from tests.conftest import SPEC, checkpoint_differences, final_weights, steps, write_spec
from tests.test_train_features import make_sweep

SEARCH = """
sweep:
  grid:
    optim.lr: [{lrs}]
  search: {{method: halving, metric: val_roc_auc, min_epochs: 1, max_epochs: {max_epochs}, eta: 3}}
"""


def fresh(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def search_spec(name: str, lrs: str = "3e-3", max_epochs: int = 3, nproc: int = 1, n: int = 96) -> str:
    base = SPEC.format(name=name, n=n, size=16, epochs=1).replace("nproc_per_node: 2", f"nproc_per_node: {nproc}")
    return base + SEARCH.format(lrs=lrs, max_epochs=max_epochs)


def twin_spec(name: str, lr: str, epochs: int, nproc: int = 1, n: int = 96) -> str:
    """The same configuration as a plain run trained straight to ``epochs``."""
    base = SPEC.format(name=name, n=n, size=16, epochs=epochs).replace("nproc_per_node: 2", f"nproc_per_node: {nproc}")
    return base.replace("lr: 3e-3", f"lr: {lr}")


def test_rungs_keep_a_third_and_end_at_max_epochs() -> None:
    s = SearchSpec(min_epochs=2, max_epochs=18, eta=3)
    assert plan(s, 27, 18) == [(2, 27), (6, 9), (18, 3)]
    assert epoch_cost(plan(s, 27, 18)) == 27 * 2 + 9 * 4 + 3 * 12
    assert plan(s, 9, 18) == [(2, 9), (6, 3), (18, 1)]
    assert plan(s, 4, 18) == [(2, 4), (18, 1)], "a lone survivor goes straight to the last rung"
    assert plan(s, 1, 18) == [(18, 1)]
    assert plan(SearchSpec(min_epochs=5, eta=2), 8, 5) == [(5, 8)]


def test_ranking_is_deterministic_with_ties_nan_and_missing_values() -> None:
    values = {0: 0.8, 1: 0.9, 2: float("nan"), 3: 0.9, 4: None, 5: 0.7}
    assert rank(values, "max") == [1, 3, 0, 5, 2, 4]
    assert rank(values, "min") == [5, 0, 1, 3, 2, 4]


@pytest.mark.parametrize(("block", "message"), [
    ("search: {min_epochs: 5, max_epochs: 3}", "min_epochs 5 must not exceed max_epochs 3"),
    ("search: {eta: 1}", "greater than or equal to 2"),
    ("search: {method: random}", "method random needs space and n_trials"),
    ("search: {n_trials: 3, space: {optim.lr: {loguniform: [0, 1]}}}", "loguniform needs low > 0"),
    ("search: {n_trials: 3, space: {optim.lr: {uniform: [1, 1e-3]}}}", "low 1 must be below high 0.001"),
    ("search: {n_trials: 3, space: {optim.nope: {choice: [1]}}}", "unknown field 'nope'"),
    ("search: {n_trials: 3, space: {optim.epochs: {int: [1, 3]}}}", "cannot vary in a search"),
    ("search: {metric: val_mae}", "val_mae does not apply to a binary task"),
    ("search: {min_epochs: 4}", "min_epochs 4 exceeds the 1 epochs of the runs"),
])
def test_bad_search_blocks_name_file_line_and_field(workdir: Path, block: str, message: str) -> None:
    text = SPEC.format(name="bad", n=64, size=16, epochs=1) + f"sweep:\n  grid:\n    optim.seed: [1, 2]\n  {block}\n"
    path = write_spec(workdir, text)
    with pytest.raises(SpecError) as err:
        load_sweep(path)
    line = path.read_text().splitlines().index(f"  {block}") + 1
    assert message in str(err.value) and f"{path}:{line} sweep.search" in str(err.value), str(err.value)


def test_random_draws_are_the_same_for_a_seed_and_inside_their_bounds(workdir: Path) -> None:
    extra = ("sweep:\n  search: {method: random, n_trials: 6, seed: 11, space: {optim.lr: {loguniform: [1e-4, 1e-2]}, "
             "optim.batch_size: {int: [8, 32]}, model.name: {choice: [cnn_small, resnet15]}}}\n")
    path = write_spec(workdir, SPEC.format(name="rand", n=64, size=16, epochs=2) + extra)
    a, b = load_sweep(path), load_sweep(path)
    assert [r.overrides for r in a.runs] == [r.overrides for r in b.runs]
    assert len(a.runs) == 6 and len({r.spec.optim.lr for r in a.runs}) == 6
    assert all(1e-4 <= r.spec.optim.lr <= 1e-2 and 8 <= r.spec.optim.batch_size <= 32 for r in a.runs)
    other = load_sweep(write_spec(workdir, SPEC.format(name="rand", n=64, size=16, epochs=2)
                                  + extra.replace("seed: 11", "seed: 12"), name="other.yaml"))
    assert [r.overrides for r in other.runs] != [r.overrides for r in a.runs]


def test_a_promoted_configuration_ends_bitwise_identical_to_its_straight_twin(workdir: Path) -> None:
    sweep = make_sweep(fresh(workdir / "search"), search_spec("promo", max_epochs=4))
    assert sweep.run_spec(0).optim.epochs == 4, "max_epochs sets the epochs the schedule is defined over"
    task = sweep.task(0)
    for rung, epochs in ((0, 1), (1, 2), (2, 4)):  # three rungs, each a new trainer from the last checkpoint
        task.write_budget(rung, epochs)
        task.clear_outcome()
        trainer = Trainer(task)
        assert trainer.run() == 0
        trainer.run_lock.release()  # as the trainer process's exit would
        if epochs < 4:
            marker = task.rung_done()
            assert marker["rung"] == rung and marker["epoch"] == epochs and "val_roc_auc" in marker["metrics"]
            assert task.result() is None
    assert task.result() is not None and task.rung_done() is None

    twin = make_sweep(fresh(workdir / "twin"), twin_spec("twin", "3e-3", 4))
    assert Trainer(twin.task(0)).run() == 0
    a, b = final_weights(sweep, 0), final_weights(twin, 0)
    assert all(torch.equal(a[k], b[k]) for k in a), "a promotion must be an exact resume"
    assert checkpoint_differences(sweep, twin) == [], "every tensor and generator state of the checkpoint too"
    run = task.run_id()
    assert steps(sweep, run, "val_loss") == [0, 1, 2, 3], "one run per configuration, every epoch once"
    assert sweep.task(0).result()["best_metric"] == twin.task(0).result()["best_metric"]


def test_a_rung_ends_only_once_its_checkpoint_is_durable(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rung's marker may promote the task at once: a new trainer must find the rung's last checkpoint whole,
    however slowly the background writer goes (a loaded node)."""
    import time

    from hpcvit.checkpoint import CheckpointManager

    save = CheckpointManager.save

    def slow_save(self, *args, **kwargs):
        time.sleep(1.0)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(CheckpointManager, "save", slow_save)
    sweep = make_sweep(fresh(workdir / "slow"), search_spec("slow", max_epochs=4))
    task = sweep.task(0)
    task.write_budget(0, 1)
    trainer = Trainer(task)
    assert trainer.run() == 0 and task.rung_done() is not None
    newest = CheckpointManager(task.checkpoints).candidates()[0][0]
    assert newest["step"] == trainer.global_step and newest["epoch"] == 1, "the rung's checkpoint is on disk"
    trainer.run_lock.release()
