"""Training features of the trainer run for real on tiny synthetic sweeps: EMA, gradient accumulation,
exact resume with both, channels-last and deterministic kernels.

In-process tests build a sweep folder the way ``hpcvit submit`` does (folder, data, MLflow parent run) and run
:class:`hpcvit.training.loop.Trainer` on a task; the resume test goes through ``hpcvit submit`` and the local executor
(submitit, torchrun, 2 gloo ranks), SIGTERMs one twin mid-epoch and resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from hpcvit.data import build_datasets
from hpcvit.ledger import SweepDir, find_sweep
from hpcvit.objectives.binary import classifier_metrics
from hpcvit.models import build_model
from hpcvit.orchestrate import create_sweep
from hpcvit.sweep import load_sweep
from hpcvit.training.loop import Trainer
from tests.conftest import (SPEC, checkpoint_differences, children, hpcvit, kill_tree, start_lines, wait_for,
                            write_spec)

TINY = """
name: {name}
data:
  format: synthetic
  synthetic: {{n_samples: {n}, image_size: 16, channels: 2, seed: 3}}
  val_fraction: 0.25
{data}model:
  name: {model}
  kwargs: {kwargs}
optim:
  lr: {lr}
  epochs: {epochs}
  batch_size: {batch}
  seed: 7
{optim}
checkpoint:
  every_steps: {every}
  every_minutes: null
  keep: {keep}
resources:
  nproc_per_node: 2
  cpus_per_task: 2
  array_parallelism: 2
"""


def tiny(name: str, optim: str, *, n: int = 400, model: str = "cnn_small", kwargs: str = "{width: 8}",
         lr: float = 3e-3, epochs: int = 2, batch: int = 16, every: int = 5, keep: int = 3, sweep: str = "",
         data: str = "") -> str:
    lines = "\n".join(f"  {line}" for line in optim.strip().splitlines())
    data = "".join(f"  {line}\n" for line in data.strip().splitlines())
    return TINY.format(name=name, n=n, model=model, kwargs=kwargs, lr=lr, epochs=epochs, batch=batch, optim=lines,
                       every=every, keep=keep, data=data) + sweep


def make_sweep(workdir: Path, text: str, tracking: bool = True) -> SweepDir:
    """What ``hpcvit submit`` does before it submits: sweep folder, data, MLflow experiment and parent run."""
    return create_sweep(load_sweep(write_spec(workdir, text)), workdir / "runs", submit=False, tracking=tracking)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def checkpoint(sweep: SweepDir, index: int, step: int | None = None) -> dict:
    ckpts = sorted(sweep.task(index).checkpoints.glob("ckpt-*.pt"))
    path = ckpts[-1] if step is None else sweep.task(index).checkpoints / f"ckpt-{step:09d}.pt"
    return torch.load(path, map_location="cpu", weights_only=False)


def val_outputs(sweep: SweepDir, index: int, state: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model built independently of the trainer, with ``state`` loaded, on the task's validation set."""
    spec = sweep.task(index).spec()
    bundle = build_datasets(spec.data, sweep.root)
    model = build_model(spec.model.name, bundle.in_chans, bundle.img_size, 1, **spec.model.kwargs)
    model.load_state_dict(state)
    model.eval()
    x, y = zip(*(bundle.val[i] for i in range(len(bundle.val))))
    with torch.no_grad():
        return model(torch.stack(x)).view(-1).numpy(), torch.stack(y).numpy()


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def test_ema_weights_are_what_is_evaluated_and_kept(workdir: Path) -> None:
    sweep = make_sweep(workdir, tiny("ema", "ema_decay: 0.8", every=1))
    trainer = Trainer(sweep.task(0))
    assert trainer.run() == 0
    result = json.loads((sweep.task(0).path / "result.json").read_text())
    assert result["status"] == "completed"

    last = checkpoint(sweep, 0)
    assert last["epoch"] == 2 and last["ema"] is not None
    assert max_diff(last["ema"], last["model"]) > 1e-4, "the EMA must differ from the raw weights"
    # ... and be their moving average, updated after every optimiser step (parameters and BatchNorm buffers).
    before = checkpoint(sweep, 0, step=last["global_step"] - 1)
    for key, value in last["ema"].items():
        raw = last["model"][key]
        expected = 0.8 * before["ema"][key] + 0.2 * raw if value.is_floating_point() else raw
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=key)

    # val_* of the last epoch are the EMA's metrics; val_raw_* the raw weights'.
    ema_out, y = val_outputs(sweep, 0, last["ema"])
    raw_out, _ = val_outputs(sweep, 0, last["model"])
    ema_metrics = classifier_metrics(ema_out, y)
    raw_metrics = classifier_metrics(raw_out, y)
    assert abs(ema_metrics["loss"] - raw_metrics["loss"]) > 1e-4
    client = MlflowClient(sweep.manifest["tracking_uri"])
    run = client.get_run(result["mlflow_run_id"])
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_loss")}
    raw_history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_raw_loss")}
    assert history[1] == pytest.approx(ema_metrics["loss"], rel=1e-5)
    assert raw_history[1] == pytest.approx(raw_metrics["loss"], rel=1e-5)

    # The best checkpoint's EMA is what the final evaluation, predictions and best_model.pt hold.
    best = torch.load(sweep.task(0).checkpoints / "best.pt", map_location="cpu", weights_only=False)
    kept = torch.load(sweep.task(0).path / "best_model.pt", map_location="cpu", weights_only=False)
    assert kept.keys() == best["ema"].keys()
    assert all(torch.equal(kept[k], best["ema"][k]) for k in kept)
    best_out, _ = val_outputs(sweep, 0, best["ema"])
    predictions = np.load(sweep.task(0).path / "predictions.npz")
    np.testing.assert_allclose(predictions["val_out"], best_out, rtol=1e-5, atol=1e-6)
    assert result["best_metric"] == pytest.approx(classifier_metrics(best_out, y)["roc_auc"], rel=1e-6)


def test_grad_accumulation_equals_one_large_batch(workdir: Path) -> None:
    # A model without batch statistics and without dropout; SGD, so the update is proportional to the gradient
    # (Adam's first step is nearly sign(gradient) and would hide a wrongly scaled loss).
    sweep = make_sweep(workdir, tiny("accum", """
optimizer: sgd
momentum: 0.5
weight_decay: 0.0
grad_clip: null
schedule: constant
""", n=400, model="vit_seed", kwargs="{dim: 32, depth: 2, heads: 2, dropout: 0.0}", lr=0.5, epochs=1, every=1,
        keep=100, sweep="""
sweep:
  zip:
    optim.batch_size: [24, 8, 8]
    optim.grad_accum_steps: [1, 3, 1]
    optim.max_steps_per_epoch: [null, null, 1]
"""), tracking=False)
    start, first, final, trainers = {}, {}, {}, {}
    for i in range(3):
        trainer = trainers[i] = Trainer(sweep.task(i))
        start[i] = weights(trainer.model)
        assert trainer.train_epoch() is not None
        trainer.wait_for_checkpoint()  # checkpoints are written in the background: read step 1's once it is on disk
        first[i] = checkpoint(sweep, i, step=1)["model"]
        final[i] = weights(trainer.model)
    assert all(max_diff(start[0], start[i]) == 0 for i in (1, 2)), "same seed, same initial weights"
    # 300 training samples: 13 steps of 24 (the last 12), or 13 steps of 3 micro-batches of 8 (the last 8 + 4).
    assert trainers[0].steps_per_epoch == trainers[1].steps_per_epoch == 13
    assert trainers[0].global_step == trainers[1].global_step == 13 and trainers[2].global_step == 1

    update = {i: {k: first[i][k] - start[i][k] for k in start[i]} for i in range(3)}
    scale = max(float(u.abs().max()) for u in update[0].values())
    assert scale > 1e-3
    assert max_diff(update[1], update[0]) < 1e-4 * scale, "3 micro-batches of 8 must give the update of one batch of 24"
    assert max_diff(update[2], update[0]) > 1e-2 * scale, "one micro-batch alone differs (the check has teeth)"
    # The whole epoch, uneven last step included (its micro-batches weighted by their sizes), stays the same.
    # (1/3 per micro-batch instead of 8/12 and 4/12 in the last step moves the weights by ~4e-4; rounding: ~4e-7.)
    assert max_diff(final[1], final[0]) < 1e-5 * max(float(v.abs().max()) for v in final[0].values())


def _wait_for_file(pattern_dir: Path, pattern: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pattern_dir.exists() and any(pattern_dir.glob(pattern)):
            return
        time.sleep(0.02)  # polled fast: the SIGTERM must land mid-epoch
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {pattern_dir}/{pattern}")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers-cache"])
def test_preempted_ema_grad_accum_task_resumes_bitwise_identical(workdir: Path, workers: int) -> None:
    # 750 training samples on 2 ranks: 375 each, 47 micro-batches of 8 (the last 7), 12 steps of 4 micro-batches
    # (the last 3): resume must restart at the right micro-batch and keep EMA, BatchNorm and dropout state.
    # With workers: the memory-mapped cache, read through the loader's shared ring by 2 worker processes.
    data = f"num_workers: 2\ncache_dir: {workdir / 'cache'}" if workers else ""
    spec = write_spec(workdir, tiny("exact-accum", "ema_decay: 0.9\ngrad_accum_steps: 4", n=1000, epochs=3,
                                    batch=8, every=2, data=data, sweep="""
sweep:
  zip:
    description: [uninterrupted, interrupted]
"""))
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    task = sweep.task(1)
    _wait_for_file(task.checkpoints, "ckpt-*.json", 240)
    os.killpg(task.state()["trainer_pgid"], signal.SIGTERM)
    wait_for(lambda: task.state().get("state") == "PREEMPTED", 120, "task 1 to checkpoint and stop")
    stopped = json.loads((task.path / "stopped.json").read_text())
    assert stopped["signal"] == "SIGTERM" and stopped["global_step"] >= 2
    assert 0 < stopped["step_in_epoch"] < 12, f"not stopped mid-epoch: {stopped}"
    wait_for(lambda: sweep.task(0).state().get("state") == "COMPLETED", 240, "task 0 to finish")

    resumed = hpcvit("resume", "--wait", cwd=workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    starts = start_lines(task.log)
    assert f"epoch {stopped['epoch']} step {stopped['step_in_epoch']}/12 " in starts[1], starts[1]
    assert "4 micro-batches per step, EMA 0.9" in starts[1]
    a, b = checkpoint(sweep, 0), checkpoint(sweep, 1)
    assert a["global_step"] == b["global_step"] == 36
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs after resume"
    assert checkpoint_differences(sweep, sweep, 0, 1) == [], "every tensor and generator state, every rank"
    runs = {r.data.tags["hpcvit.task_index"]: r for r in children(sweep)}
    for metric in ("val_loss", "val_raw_loss", "train_loss"):  # a resumed epoch's train_loss covers the whole epoch
        assert runs["0"].data.metrics[metric] == runs["1"].data.metrics[metric], metric


def test_channels_last_and_deterministic_run_completes(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sweep = make_sweep(workdir, tiny("fmt", "channels_last: true\ndeterministic: true\nema_decay: 0.99\n"
                                            "ema_warmup: true\ngrad_accum_steps: 2", epochs=1))
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        trainer = Trainer(sweep.task(0))
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"]
        conv = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert not conv.weight.is_contiguous()
        assert trainer.run() == 0
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
        if saved[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    assert json.loads((sweep.task(0).path / "result.json").read_text())["status"] == "completed"
    run = children(sweep)[0]
    assert run.info.status == "FINISHED" and "val_raw_roc_auc" in run.data.metrics
    assert "2 micro-batches per step, EMA 0.99, channels-last, deterministic" in capsys.readouterr().out
    # The EMA with warm-up follows the weights closely in a short run.
    last = checkpoint(sweep, 0)
    assert 0 < max_diff(last["ema"], last["model"]) < 1.0


@pytest.mark.slow
def test_a_kill_during_evaluation_loses_only_the_evaluation(workdir: Path) -> None:
    """KillWait's SIGKILL during a long evaluation, after the stop signal: the checkpoint saved when the epoch's
    training ended holds it all; the restart evaluates that epoch again and ends equal to its twin in every
    tensor and generator state."""
    text = SPEC.format(name="evalkill", n=6000, size=32, epochs=2).replace("val_fraction: 0.25", "val_fraction: 0.9")
    text = text.replace("  every_steps: 5\n", "  every_steps: null\n")  # the only saves: before and after evaluation
    text = text.replace("  name: cnn_small\n  kwargs: {width: 8}\n", "  name: vit_seed\n")  # a slower evaluation
    spec = write_spec(workdir, text + "sweep:\n  zip:\n    description: [uninterrupted, killed]\n")
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    task = sweep.task(1)

    def trained_not_evaluated() -> bool:  # epoch 0's training saved, its evaluation under way
        metas = [json.loads(p.read_text()) for p in task.checkpoints.glob("ckpt-*.json")] \
            if task.checkpoints.exists() else []
        return any(m["epoch"] == 0 and m["step"] > 0 for m in metas)

    wait_for(trained_not_evaluated, 300, "the checkpoint saved before epoch 0's evaluation")
    assert task.progress().get("epoch", 0) == 0, "evaluation ended before the kill: make it longer"
    kill_tree(task.state()["pid"])  # what KillWait does: launcher, agent and ranks, with no chance to save
    wait_for(lambda: json.loads(hpcvit("status", "--format", "json", cwd=workdir, check=True).stdout)[1]["state"]
             == "LOST", 60, "status to find the task LOST")
    resumed = hpcvit("resume", "--wait", cwd=workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    starts = start_lines(task.log)
    per_epoch = int(starts[0].split(" step 0/")[1].split()[0])
    assert f" start: epoch 0 step {per_epoch}/{per_epoch} " in starts[1], starts[1]  # no training step lost
    assert checkpoint_differences(sweep, sweep, 0, 1) == [], "every tensor and generator state, every rank"
