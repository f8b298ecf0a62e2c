"""Finding a trained run and loading it: ``SWEEP/TASK`` or an MLflow run id -> weights, state and spec."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcvit.config import JobSpec
from hpcvit.ledger import SweepDir, TaskDir, find_sweep

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class RunNotFound(ValueError):
    """A run reference that names no trained run (one line saying what was looked for)."""


def find_task(ref: str, output_dir: Path) -> TaskDir:
    """The task folder of ``ref``: ``SWEEP/TASK`` (a sweep id under ``output_dir`` or a sweep folder, and the task
    index) or the 32-hex MLflow run id of a task of a sweep under ``output_dir``."""
    ref = ref.strip()
    if _RUN_ID.fullmatch(ref):
        for manifest in sorted(Path(output_dir).glob(f"*/{SweepDir.MANIFEST}")):
            sweep = SweepDir(manifest.parent)
            for task in sweep.tasks():
                if task.run_id() == ref:
                    return task
        raise RunNotFound(f"{ref}: no task of a sweep under {output_dir}/ has this MLflow run id "
                          "(name the run as SWEEP/TASK, or pass --output-dir)")
    sweep_ref, sep, index = ref.rpartition("/")
    if not sep or not index.isdigit():
        raise RunNotFound(f"{ref}: not a run (name it SWEEP/TASK, e.g. smoke-20261205-210413-cbb2/0, or by its "
                          "MLflow run id)")
    try:
        sweep = find_sweep(sweep_ref, Path(output_dir))
    except FileNotFoundError as exc:
        raise RunNotFound(str(exc)) from None
    if not 0 <= int(index) < sweep.n_tasks:
        raise RunNotFound(f"{ref}: sweep {sweep.sweep_id} has no task {int(index)} (it has {sweep.n_tasks})")
    return sweep.task(int(index))


@dataclass
class TrainedRun:
    """A run's weights (best or last epoch), the state its objective keeps, and its spec."""

    task: TaskDir
    spec: JobSpec
    weights: dict[str, Any]
    """The model's state dict (the EMA's where the run kept one)."""
    state: dict[str, Any]
    """The checkpoint's entries other than weights and optimiser (statistics, scales, input shape)."""
    checkpoint: Path
    epoch: int
    which: str

    @property
    def ref(self) -> str:
        return f"{self.task.sweep.sweep_id}/{self.task.index}"

    def objective(self) -> Any:
        """The run's objective with its trained state restored (no data built)."""
        from hpcvit.objectives import get_objective

        objective = get_objective(self.spec.data.task)(self.spec, self.task.sweep.root)
        if not hasattr(objective, "restore"):
            raise RunNotFound(f"{self.ref}: using a trained {objective.name} run on new files is not available")
        objective.restore(self.state)
        return objective


_NOT_STATE = ("model", "ema", "optimizer", "scheduler", "scaler", "rng", "epoch_partial")


def load_run(task: TaskDir, which: str = "best") -> TrainedRun:
    """The weights of the run's best epoch (``best``; the EMA's when it kept one) or its newest checkpoint
    (``last``), loaded without pickle, with the state beside them."""
    from hpcvit.checkpoint import CheckpointManager

    if not task.checkpoints.is_dir():
        raise RunNotFound(f"{task.key}: no checkpoints folder ({task.checkpoints}): the task has not trained yet")
    manager = CheckpointManager(task.checkpoints, keep=10**9)
    if which == "best":
        path = manager.best()
        if path is None:
            raise RunNotFound(f"{task.key}: no verified best checkpoint in {task.checkpoints} (the task has not "
                              "finished a validation epoch; --checkpoint last takes the newest)")
        state = manager.load(path)
    else:
        found = manager.load_latest()
        if found is None:
            raise RunNotFound(f"{task.key}: no loadable checkpoint in {task.checkpoints}")
        state, meta = found
        path = task.checkpoints / str(meta.get("file", ""))
    weights = state.get("ema") or state.get("model")
    if not isinstance(weights, dict):
        raise RunNotFound(f"{path}: holds no model weights")
    epoch = int(state.get("best_epoch" if which == "best" else "epoch", -1))
    if which == "last":
        epoch -= 1  # the counter says how many epochs were done: the last one done is one less
    return TrainedRun(task, task.spec(), weights, {k: v for k, v in state.items() if k not in _NOT_STATE},
                      path, epoch, which)


def weights_file(ref: str, output_dir: Path) -> Path:
    """The file ``model.init_from`` names: a weights or checkpoint file as it is, a safetensors export's weights,
    or a trained run's (``SWEEP/TASK`` or MLflow run id) verified best checkpoint; absolute."""
    from hpcvit.checkpoint import CheckpointManager
    from hpcvit.models.init import WEIGHT_SUFFIXES

    path = Path(ref).expanduser()
    if path.is_dir():
        card = path / "model.json"
        if not card.exists():
            raise RunNotFound(f"{ref}: a folder that is neither an export (no model.json) nor a run")
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise RunNotFound(f"{ref}: an export without safetensors weights (export the run with "
                              "--format safetensors to start from it)")
        return files[0].resolve()
    if path.is_file():
        if path.suffix not in WEIGHT_SUFFIXES:
            raise RunNotFound(f"{ref}: not a weights file (one of {', '.join(WEIGHT_SUFFIXES)})")
        return path.resolve()
    if path.suffix in WEIGHT_SUFFIXES:
        raise RunNotFound(f"{ref}: file not found")
    task = find_task(ref, output_dir)
    best = CheckpointManager(task.checkpoints, keep=10**9).best() if task.checkpoints.is_dir() else None
    if best is None:
        raise RunNotFound(f"{ref}: run {task.key} has no verified best checkpoint yet (it has not finished a "
                          "validation epoch)")
    return best.resolve()
