"""What the image objectives share: detector images in, one number per image out.

The data bundle comes from :func:`hpcvit.data.build_datasets` with the objective's target rule; batches are
whole-batch gathers (:class:`~hpcvit.data.batches.BatchLoader`); the model is a registered image model with
one output (and a small head over ``data.scalar_inputs`` when there are any). A checkpoint carries the
channel statistics and the scalar inputs' scales.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hpcvit.objectives.base import Evaluator, Objective

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hpcvit.data import DataBundle


class ScalarOutputs(Evaluator):
    """One output per image: the outputs and targets of a rank, flattened, as numpy arrays."""

    def __init__(self, objective: ImageObjective):
        self.objective, self.outs, self.ys = objective, [], []

    def add(self, out: torch.Tensor, y: torch.Tensor) -> None:
        self.outs.append(out.float().view(-1).cpu())
        self.ys.append(y.view(-1))

    def local(self) -> tuple[np.ndarray, np.ndarray]:
        import torch

        outs = self.objective.to_units(self.outs) if self.outs else self.outs
        return (torch.cat(outs).numpy() if outs else np.zeros(0, np.float32),
                torch.cat(self.ys).numpy() if self.ys else np.zeros(0, np.float32))


class ImageObjective(Objective):
    """Base of the objectives that train a registered image model to one output per image."""

    state_keys: ClassVar[tuple[str, ...]] = ("data_stats", "scalar_scale", "input_shape")
    """``input_shape`` (C, H, W after ``data.channels``) is not read back: it tells a trained run's users what
    its model takes."""
    data: DataBundle

    @classmethod
    def check_data(cls, spec: Any) -> str:
        from hpcvit.data import check

        from hpcvit.data.targets import Values

        facts = check(spec, cls.target_rule() or Values())
        shape = "x".join(map(str, facts["shape"]))
        if facts["format"] == "synthetic":
            return f"data: synthetic, {facts['rows']} images of {shape} (written at submission)"
        train, val, test = facts["splits"]
        return (f"data: {facts['files']} {facts['format']} file(s) readable, {facts['rows']} rows of {shape} images, "
                f"columns {', '.join(dict.fromkeys(facts['columns']))} present; {facts['selected']} selected, "
                f"{train}/{val}/{test} train/val/test, targets fit the task")

    @classmethod
    def prepare_data(cls, spec: Any, sweep_root: Any) -> None:
        from hpcvit.data import prepare

        prepare(spec, sweep_root)

    def build_data(self, saved: dict[str, Any] | None) -> DataBundle:
        from hpcvit.data import build_datasets

        saved = saved or {}
        self.data = build_datasets(self.spec.data, self.sweep_root, stats=saved.get("data_stats"),
                                   targets=self.target_rule(), scalar_scale=saved.get("scalar_scale"))
        self.fit(saved)
        return self.data

    def fit(self, saved: dict[str, Any]) -> None:
        """State learnt from the training split once the data is built (or taken from ``saved``)."""

    def loader(self, dataset: Any, sampler: Any, batch_size: int, *, workers: int, generator: Any,
               pin_memory: bool, worker_init_fn: Any, persistent: bool, context: Any = None) -> Any:
        import torch
        from torch.utils.data import DataLoader

        from hpcvit.data.batches import BatchLoader
        from hpcvit.data.dataset import ImageDataset

        indices = None
        if isinstance(dataset, torch.utils.data.Subset) and isinstance(dataset.dataset, ImageDataset):
            dataset, indices = dataset.dataset, dataset.indices
        if isinstance(dataset, ImageDataset):  # whole-batch reads, no per-sample tensors to collate
            return BatchLoader(dataset, sampler, batch_size, workers, indices=indices, pin_memory=pin_memory,
                               persistent=persistent, generator=generator, worker_init_fn=worker_init_fn,
                               context=context)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, generator=generator,
                          pin_memory=pin_memory, worker_init_fn=worker_init_fn, multiprocessing_context=context,
                          persistent_workers=False, drop_last=False)

    def build_model(self) -> nn.Module:
        """The registered model; with ``data.scalar_inputs`` its features and the scalars feed a small head."""
        data = self.data
        return self.network(data.in_chans, data.img_size, data.n_scalars)

    def network(self, in_chans: int, img_size: int, n_scalars: int) -> nn.Module:
        """The model of ``spec.model`` for images of ``in_chans`` x ``img_size`` x ``img_size`` (and
        ``n_scalars`` scalar inputs)."""
        from hpcvit.models import build_model

        m = self.spec.model
        if not n_scalars:
            return build_model(m.name, in_chans, img_size, 1, **m.kwargs)
        from hpcvit.models.fusion import FUSION_WIDTH, ScalarFusion

        return ScalarFusion(build_model(m.name, in_chans, img_size, FUSION_WIDTH, **m.kwargs), n_scalars)

    # -- a trained run without its data (predict, evaluate, export) --------------------------------------------
    def restore(self, saved: dict[str, Any]) -> None:
        """Take a trained run's state (its checkpoint's :attr:`state_keys`) without building its data."""
        from hpcvit.data.preprocess import ChannelStats, ScalarScale

        self.stats = ChannelStats.from_dict(saved["data_stats"]) if saved.get("data_stats") else None
        self.scalar_scale = ScalarScale.from_dict(saved["scalar_scale"]) if saved.get("scalar_scale") else None

    def prediction_columns(self, out: np.ndarray) -> dict[str, np.ndarray]:
        """What ``hpcvit predict`` writes of the model's raw outputs (one per image), by column name."""
        raise NotImplementedError

    def inputs(self, x: Any, device: torch.device) -> list[torch.Tensor]:
        """The image batch (and the scalar inputs, when there are any) on ``device``."""
        import torch

        parts = list(x) if isinstance(x, (list, tuple)) else [x]
        out = [p.to(device, non_blocking=True) for p in parts]
        if self.spec.optim.channels_last and out[0].ndim == 4:
            out[0] = out[0].contiguous(memory_format=torch.channels_last)
        return out

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(out.float(), target)

    @property
    def loss_fn(self) -> Any:
        raise NotImplementedError

    def evaluator(self) -> ScalarOutputs:
        return ScalarOutputs(self)

    def to_units(self, outs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Model outputs as the predictions the metrics see (per batch)."""
        return outs

    def evaluate(self, parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        out = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return self.metric_values(out, y), {"out": out, "y": y}

    def metric_values(self, out: np.ndarray, y: np.ndarray) -> dict[str, float]:
        raise NotImplementedError

    def sample_ids(self, dataset: Any, order: np.ndarray) -> dict[str, np.ndarray]:
        """``file`` and ``row`` (index in that file) of ``dataset``'s samples at positions ``order``."""
        source = getattr(dataset, "source", None)
        return source.of(dataset.rows[order]) if source is not None else {}

    def state_dict(self) -> dict[str, Any]:
        data = self.data
        return {"data_stats": data.stats.to_dict() if data.stats else None,
                "scalar_scale": data.scalar_scale.to_dict() if data.scalar_scale else None,
                "input_shape": [int(v) for v in data.info["shape"]] if "shape" in data.info else None}

    def facts(self, fresh_model: Any) -> dict[str, Any]:
        info = self.data.info
        return {"model.gflops": _gflops(fresh_model, self.data.in_chans, self.data.img_size),
                "data.fingerprint": info["fingerprint"], "data.n_train": info["n_train"], "data.n_val": info["n_val"]}


def _gflops(fresh_model: Any, in_chans: int, img_size: int) -> float | None:
    from hpcvit.models.info import count_gflops

    try:
        return count_gflops(fresh_model(), in_chans, img_size)
    except Exception:  # noqa: BLE001 - a FLOP count is information, never a reason to stop training
        return None
