"""What an objective is: the part of a training that differs between kinds of task.

The trainer (:mod:`hpcvit.training.loop`) owns what every task shares: the process group, the resumable
sampler, gradient accumulation, the stop collective, the non-finite guard, checkpoints and reports. It asks
its :class:`Objective` for everything else: the data bundle and how it is batched, the model and its inputs,
the loss, the evaluation and its metrics, the state a checkpoint must carry, and the artifacts of a finished
run. A new kind of task is a subclass registered with :func:`~hpcvit.objectives.registry.register_objective`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hpcvit.objectives.registry import Column, Metric, Mode, metric_mode

FIGURE_SPLITS = {"test": "test", "val": "validation", "files": "the given files"}
"""The predictions figures show, first found first (``files``: what ``hpcvit evaluate`` was given), and their
names in the figures."""


def split_for_figures(predictions: dict[str, dict[str, np.ndarray]], usable: Any) -> tuple[str, str] | None:
    """(key, name) of the first split of :data:`FIGURE_SPLITS` in ``predictions`` whose targets ``usable(y)``."""
    for key, name in FIGURE_SPLITS.items():
        p = predictions.get(key)
        if p is not None and usable(p["y"]):
            return key, name
    return None

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hpcvit.config import JobSpec


class Evaluator:
    """Collects one rank's model outputs and targets over an evaluation; :meth:`local` is what is gathered."""

    def add(self, out: torch.Tensor, y: Any) -> None:
        raise NotImplementedError

    def local(self) -> Any:
        """This rank's part, picklable (the ranks' parts are gathered on every rank)."""
        raise NotImplementedError


class Objective:
    """One kind of training task. Built once per trainer from the task's spec and its sweep folder."""

    name: ClassVar[str]
    """What ``data.task`` names."""
    metrics: ClassVar[tuple[Metric, ...]]
    """Every metric :meth:`evaluate` reports, each with its direction (``val_<name>`` and ``test_<name>``)."""
    default_metric: ClassVar[str]
    """The metric (no prefix) that picks the best epoch and ranks runs when the spec says ``auto``."""
    flags: ClassVar[tuple[str, ...]] = ()
    """Further values :meth:`evaluate` reports that annotate a metric and rank nothing."""
    artifacts_dir: ClassVar[str] = "artifacts"
    """Task sub-folder and MLflow artifact path of :meth:`write_artifacts`' files."""
    state_keys: ClassVar[tuple[str, ...]] = ()
    """The checkpoint entries :meth:`state_dict` writes and :meth:`build_data` reads back."""
    compare_columns: ClassVar[tuple[Column, ...]] = ()
    """What ``hpcvit compare`` shows of each run beside the primary metric."""
    sample_word: ClassVar[str] = "img"
    """What one training sample is called in a throughput header (``img/s``)."""
    model_inputs: ClassVar[str] = "image"
    """What its models read (a registered model's ``inputs``): ``image`` or ``hits``."""
    arrange: Any = None
    """``arrange(indices, batch_size, seed) -> indices``: how a rank's epoch is ordered into batches (None: as
    drawn); see :class:`~hpcvit.training.sampler.ShardSampler`."""

    def __init__(self, spec: JobSpec, sweep_root: Path):
        self.spec, self.sweep_root = spec, sweep_root

    # -- what a spec may ask ---------------------------------------------------------------------------
    @classmethod
    def primary_metric(cls, choice: str = "auto") -> tuple[str, Mode]:
        """(``val_<metric>``, its mode) that picks the best epoch: ``choice``, or the default for ``auto``."""
        name = f"val_{cls.default_metric}" if choice == "auto" else choice
        return name, metric_mode(name)

    # -- data ----------------------------------------------------------------------------------------------
    @classmethod
    def check_data(cls, spec: Any) -> str:
        """Check a data set against its spec before anything is submitted, reading metadata, not the data set:
        one line saying what was checked; a :class:`~hpcvit.data.DataError` naming the spec field otherwise."""
        raise NotImplementedError

    @classmethod
    def prepare_data(cls, spec: Any, sweep_root: Path) -> None:
        """What must exist before the tasks start (a synthetic set written); called once per data set."""

    @classmethod
    def target_rule(cls) -> Any:
        """How a data set's target column becomes this objective's targets
        (a :class:`~hpcvit.data.targets.TargetRule`; None: finite values as they are)."""
        return None

    def build_data(self, saved: dict[str, Any] | None) -> Any:
        """The data bundle (``train``, ``val``, ``test``, ``info``); ``saved`` is the checkpoint being resumed
        (its :attr:`state_keys` replace what would be computed from the training split)."""
        raise NotImplementedError

    def loader(self, dataset: Any, sampler: Any, batch_size: int, *, workers: int, generator: Any,
               pin_memory: bool, worker_init_fn: Any, persistent: bool, context: Any = None) -> Any:
        """An iterable of ``(x, y)`` batches of ``dataset`` in ``sampler``'s order (all of it when None); its
        ``workers`` processes start through the multiprocessing ``context`` (None: the default)."""
        raise NotImplementedError

    # -- model -------------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The model of ``spec.model``, built for this data (call after :meth:`build_data`)."""
        raise NotImplementedError

    def inputs(self, x: Any, device: torch.device) -> list[torch.Tensor]:
        """The model's positional inputs of batch ``x``, on ``device``."""
        raise NotImplementedError

    def target(self, y: Any, device: torch.device) -> Any:
        """The loss's target of batch ``y``, on ``device``."""
        raise NotImplementedError

    def loss(self, out: Any, target: Any) -> torch.Tensor:
        """The scalar training loss of one micro-batch."""
        raise NotImplementedError

    def count(self, y: Any) -> int:
        """Samples in batch ``y`` (a micro-batch's share of its step)."""
        return len(y)

    # -- evaluation ------------------------------------------------------------------------------------
    def evaluator(self) -> Evaluator:
        raise NotImplementedError

    def evaluate(self, parts: list[Any]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Metrics (names without prefix) and predictions (arrays to keep, by name) from every rank's part."""
        raise NotImplementedError

    def sample_ids(self, dataset: Any, order: np.ndarray) -> dict[str, np.ndarray]:
        """What identifies ``dataset``'s samples at positions ``order`` in their files (``file``, ``row``;
        kept beside the predictions to join them back to the data); {} when unknown."""
        return {}

    def write_artifacts(self, folder: Path, predictions: dict[str, dict[str, np.ndarray]], label: str) -> list[Path]:
        """Files that show a finished run (``predictions``: split -> :meth:`evaluate`'s arrays); [] for none."""
        return []

    score: Any = None
    """``score(out, y) -> metrics`` (a classmethod): the metrics of a run's saved predictions (the ``out`` and
    ``y`` arrays of ``predictions.npz``) for the sweep's summary intervals; None when they are not arrays."""

    overlay: ClassVar[str | None] = None
    """The sweep figure drawn over every finished run (a name of :data:`hpcvit.results.plots.OVERLAYS`), from
    each run's :meth:`overlay_data`; None: the objective has none."""

    @classmethod
    def overlay_data(cls, folder: Path, predictions: dict[str, np.ndarray]) -> Any | None:
        """What one finished run adds to the sweep's :attr:`overlay` (``folder``: the task's folder;
        ``predictions``: its validation arrays by name); None when it has nothing to draw."""
        return None

    # -- state ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint carries beside the weights so that a resumed task sees the same data (statistics,
        scales), as plain values under :attr:`state_keys`."""
        return {}

    def facts(self, fresh_model: Any) -> dict[str, Any]:
        """What the MLflow run records of the data and model (``fresh_model()`` builds an untrained copy)."""
        return {}
