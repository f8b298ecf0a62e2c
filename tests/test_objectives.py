"""The objective seam: the registry (each metric once, with one direction), what the spec may name, every
objective's checkpoint state round-tripping, and a new objective trained by the unchanged trainer."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hpcvit.objectives import Metric, get_objective, metric_mode, metrics, objective_names, register_objective
from hpcvit.objectives.base import Evaluator
from hpcvit.objectives.binary import classifier_metrics
from hpcvit.objectives.image import ImageObjective
from hpcvit.objectives.regression import regression_metrics
from hpcvit.objectives.registry import check_metric, is_better, register_metric
from hpcvit.search import decide
from hpcvit.sweep import load_sweep
from hpcvit.training.loop import Trainer
from hpcvit.yamlio import SpecError
from tests.conftest import hpcvit
from tests.test_train_features import make_sweep


def test_every_metric_has_one_direction_and_every_objective_its_metrics() -> None:
    assert {"binary", "regression"} <= set(objective_names())
    registered = metrics()
    for name in objective_names():
        objective = get_objective(name)
        own = [m.name for m in objective.metrics]
        assert len(own) == len(set(own)) and objective.default_metric in own
        for m in objective.metrics:
            assert registered[m.name].mode == m.mode in ("max", "min"), m
            assert m.doc, f"{name}.{m.name} says what it measures"
    assert metric_mode("val_roc_auc") == "max" and metric_mode("test_mae") == "min"
    assert metric_mode("val_raw_accuracy") == "max" and metric_mode("best_val_mre") == "min"
    with pytest.raises(ValueError, match="registered as max and as min"):
        register_metric(Metric("roc_auc", "min", "the same name the other way round"))
    with pytest.raises(ValueError, match="unknown metric 'val_nonsense'"):
        metric_mode("val_nonsense")


def test_evaluation_reports_exactly_the_declared_metrics_and_flags() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(200) > 0.5).astype(np.float32)
    out = rng.normal(size=200) + 2 * y
    binary = get_objective("binary")
    assert set(classifier_metrics(out, y)) == {m.name for m in binary.metrics} | set(binary.flags)
    regression = get_objective("regression")
    assert set(regression_metrics(out, y + 1)) == {m.name for m in regression.metrics}
    # hand-computed: errors 1 and -1 on targets 2 and 4
    r = regression_metrics(np.array([3.0, 3.0]), np.array([2.0, 4.0]), target_std=2.0)
    assert r == {"loss": 0.25, "mae": 1.0, "mre": pytest.approx((1 / 2 + 1 / 4) / 2),
                 "resolution": pytest.approx((0.84 - 0.16) * 0.75 / 2)}  # +0.5 and -0.25, interpolated
    rng = np.random.default_rng(0)
    truth = rng.uniform(50, 200, 200_000)
    wide = regression_metrics(truth * (1 + rng.normal(0, 0.1, truth.size)), truth)
    assert wide["resolution"] == pytest.approx(0.1, rel=0.02), "a Gaussian relative error's sigma"
    tails = regression_metrics(np.where(np.arange(truth.size) % 20 == 0, truth * 5, truth * 1.1), truth)
    assert tails["resolution"] == pytest.approx(0.0, abs=1e-9) and tails["mre"] > 0.2, "the 68 % core ignores tails"


def test_better_and_the_primary_metric_come_from_the_registry() -> None:
    assert is_better(0.9, 0.8, "max") and not is_better(0.9, 0.8, "min")
    assert is_better(0.1, None, "min") and is_better(0.1, float("nan"), "max") and not is_better(float("nan"), None, "max")
    assert get_objective("binary").primary_metric() == ("val_roc_auc", "max")
    assert get_objective("regression").primary_metric("val_mre") == ("val_mre", "min")
    assert check_metric("regression", "val_roc_auc", "") == (
        "val_roc_auc does not apply to a regression task (its metrics: val_mae, val_mre, val_resolution, val_loss)")
    assert check_metric("binary", "val_loss", "") is None and check_metric("binary", "auto", "") is None


def test_the_search_decision_is_a_pure_function() -> None:
    rungs = [(1, 9), (3, 3), (9, 1)]
    values = {0: 0.7, 1: float("nan"), 2: 0.9, 3: None, 4: 0.9, 5: 0.1}
    d = decide(values, lost=[6, 7, 8], rung=0, rungs=rungs, mode="max")
    assert d.order == [2, 4, 0, 5, 1, 3], "best first, ties by index, NaN and missing last"
    assert d.promoted == [2, 4, 0] and d.stopped == [5, 1, 3] and d.lost == [6, 7, 8] and d.completed == []
    assert decide({1: 0.2, 0: 0.1}, [], 0, rungs, "min").promoted == [0, 1]
    last = decide({2: 0.5, 4: 0.6}, [0], 2, rungs, "max")
    assert last.completed == [4, 2] and last.promoted == [] and last.stopped == []


BAD = """
name: bad
data: {{format: synthetic, task: {task}}}
model: {{name: cnn_small}}
checkpoint: {{best_metric: {best}}}
{sweep}"""


@pytest.mark.parametrize("task,best,sweep,where,words", [
    ("multiclass", "auto", "", "spec.yaml:2 data.task",
     "unknown task 'multiclass': Input should be 'binary', 'hit_clustering' or 'regression'"),
    ("regression", "val_roc_auc", "", "spec.yaml:4 checkpoint.best_metric",
     "val_roc_auc does not apply to a regression task"),
    ("binary", "val_r2", "", "spec.yaml:4 checkpoint.best_metric", "unknown metric 'val_r2'"),
    ("binary", "auto", "sweep: {grid: {data.task: [binary, regresion]}}", "spec.yaml:5 data.task",
     "unknown task 'regresion'"),
    ("regression", "auto", "sweep: {grid: {optim.lr: [0.1, 0.2]}, search: {metric: val_accuracy}}",
     "spec.yaml:5 sweep.search.metric", "val_accuracy does not apply to a regression task"),
])
def test_the_spec_names_only_registered_objectives_and_their_metrics(tmp_path: Path, task: str, best: str,
                                                                      sweep: str, where: str, words: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(BAD.format(task=task, best=best, sweep=sweep)).lstrip())
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    message = str(info.value)
    assert message.startswith(str(tmp_path / where)) and words in message and "\n" not in message, message


MODELS = """
name: bad
data: {{format: {fmt}, paths: [x.h5], task: {task}}}
model: {{name: {model}}}
{sweep}"""


@pytest.mark.parametrize("fmt,task,model,sweep,where,words", [
    ("hdf5", "hit_clustering", "cnn_small", "", "spec.yaml:3 model.name",
     "model 'cnn_small' reads image, this task's data are hits "
     "(its models: clusters_finder, hit_condensation_transformer, hit_graph_transformer, hit_set_transformer)"),
    ("hdf5", "binary", "hit_set_transformer", "", "spec.yaml:3 model.name",
     "model 'hit_set_transformer' reads hits, this task's data are image"),
    ("hdf5", "hit_clustering", "hit_set_transformer", "sweep: {grid: {optim.lr: [0.1, 0.2]}, search: {metric: "
     "val_roc_auc}}", "spec.yaml:4 sweep.search.metric", "val_roc_auc does not apply to a hit_clustering task"),
    ("synthetic", "hit_clustering", "hit_set_transformer", "", "spec.yaml:2 data.format",
     "hit clustering reads hit lists from hdf5 or parquet files"),
])
def test_each_objective_takes_only_its_models_data_and_metrics(tmp_path: Path, fmt: str, task: str, model: str,
                                                               sweep: str, where: str, words: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(MODELS.format(fmt=fmt, task=task, model=model, sweep=sweep)).lstrip())
    done = hpcvit("validate", str(path), cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert where in lines[0] and words in lines[0], lines[0]


REGRESSION = """
name: state-regression
data:
  format: hdf5
  paths: [{path}]
  task: regression
  target_key: m
  scalar_inputs: [pt]
model: {{name: cnn_small, kwargs: {{width: 8}}}}
optim: {{epochs: 1, batch_size: 32}}
resources: {{nproc_per_node: 1}}
"""


def _blobs(path: Path, n: int = 200) -> Path:
    import h5py

    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=rng.random((n, 8, 8, 1), dtype=np.float32))
        f.create_dataset("m", data=rng.uniform(80, 500, n))
        f.create_dataset("pt", data=rng.uniform(20, 100, n))
    return path


@pytest.mark.parametrize("task", ["binary", "regression"])
def test_each_objectives_checkpoint_state_round_trips(workdir: Path, task: str) -> None:
    if task == "binary":
        text = "name: state-binary\ndata: {format: synthetic, synthetic: {n_samples: 200, image_size: 8}}\n" \
               "model: {name: cnn_small}\n"
    else:
        text = REGRESSION.format(path=_blobs(workdir / "blobs.h5"))
    sweep = make_sweep(workdir, text, tracking=False)
    spec = sweep.task(0).spec()
    objective = get_objective(task)(spec, sweep.root)
    objective.build_data(None)
    state = objective.state_dict()
    assert set(state) == set(objective.state_keys) and state["data_stats"] is not None
    if task == "regression":
        assert state["target_scale"] is not None and state["scalar_scale"] is not None
    # what a checkpoint holds: plain values that torch.load(weights_only=True) takes back
    path = workdir / "state.pt"
    torch.save(state, path)
    again = get_objective(task)(spec, sweep.root)
    again.build_data(torch.load(path, weights_only=True))
    assert again.state_dict() == state
    assert again.data.info["stats_from"] == "checkpoint"


# -- a new objective, registered here, trained by the unchanged trainer --------------------------------------
class _Votes(Evaluator):
    def __init__(self) -> None:
        self.logits: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []

    def add(self, out: torch.Tensor, y: torch.Tensor) -> None:
        self.logits.append(out.float().cpu())
        self.ys.append(y.view(-1))

    def local(self) -> tuple[np.ndarray, np.ndarray]:
        return torch.cat(self.logits).numpy(), torch.cat(self.ys).numpy()


class TwoLogits(ImageObjective):
    """The same images as two-class softmax classification: two outputs, cross-entropy, accuracy."""

    name = "test_two_logits"
    metrics = (Metric("accuracy", "max", "fraction classified right"), Metric("loss", "min", "cross-entropy"))
    default_metric = "accuracy"

    @classmethod
    def target_rule(cls) -> Any:
        from hpcvit.objectives.binary import ClassLabels

        return ClassLabels()

    def build_model(self) -> torch.nn.Module:
        from hpcvit.models import build_model

        return build_model(self.spec.model.name, self.data.in_chans, self.data.img_size, 2, **self.spec.model.kwargs)

    def target(self, y: torch.Tensor, device: torch.device) -> torch.Tensor:
        return y.to(device).long()

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(out.float(), target)

    def evaluator(self) -> _Votes:
        return _Votes()

    def evaluate(self, parts: list[Any]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        logits = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts]).astype(np.int64)
        loss = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)).item()
        return {"accuracy": float(np.mean(logits.argmax(1) == y)), "loss": loss}, {"logits": logits, "y": y}


@pytest.fixture
def two_logits(monkeypatch: pytest.MonkeyPatch) -> type[TwoLogits]:
    """TwoLogits registered for one test (the registry is left as it was)."""
    from hpcvit.objectives import registry

    monkeypatch.setattr(registry, "_OBJECTIVES", dict(registry._OBJECTIVES))
    return register_objective(TwoLogits)


def test_a_new_objective_is_a_room_the_trainer_runs_unchanged(workdir: Path, two_logits: type[TwoLogits]) -> None:
    text = """
name: two-logits
data: {format: synthetic, synthetic: {n_samples: 300, image_size: 16, seed: 4}, task: test_two_logits}
model: {name: cnn_small, kwargs: {width: 8}}
optim: {epochs: 2, batch_size: 32, lr: 3e-3}
checkpoint: {every_minutes: null}
resources: {nproc_per_node: 1}
"""
    sweep = make_sweep(workdir, text, tracking=False)
    trainer = Trainer(sweep.task(0))
    assert isinstance(trainer.objective, TwoLogits) and trainer.metric_name == "val_accuracy"
    assert trainer.run() == 0
    result = sweep.task(0).result()
    assert result["metric"] == "val_accuracy" and 0.5 < result["best_metric"] <= 1.0, result
    with np.load(sweep.task(0).file("predictions.npz")) as p:
        assert p["val_logits"].shape == (len(trainer.data.val), 2) and set(p.files) == {"val_logits", "val_y", "val_file", "val_row"}
    assert not (sweep.task(0).path / "artifacts").exists(), "an objective without artifacts writes none"
