"""Hit clustering (seed 003): assign each calorimeter hit of an event to the particle that made it.

Data are per-event hit lists (:mod:`hpcvit.hits.store`) through the ragged cache; batches are padded events of
similar length; the models are the ``hits`` models of the registry; the loss is matched to the truth particles
(:mod:`hpcvit.hits.matching`), so it does not depend on their order; the metrics are the field's (efficiency,
purity, merge and split rates, ARI, energy resolution, particle identification; :mod:`hpcvit.hits.metrics`).
A finished run writes the metrics binned in energy and separation beside the topological baseline on the same
events, and event displays.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hpcvit.objectives.base import Evaluator, Objective
from hpcvit.objectives.registry import Column, Metric, register_objective

if TYPE_CHECKING:
    import torch
    from torch import nn

    from hpcvit.hits.data import HitBundle

DISPLAYS = 3
"""Events drawn (model, truth, baseline) when a run finishes."""


class ClusterOutputs(Evaluator):
    """A rank's events: each hit's predicted cluster, the clusters' type probabilities, and the batch's loss."""

    def __init__(self, objective: HitClustering):
        self.objective, self.events, self.loss, self.n = objective, [], 0.0, 0

    def add(self, out: dict[str, torch.Tensor], y: dict[str, Any]) -> None:
        head = self.objective.head
        device = out["type"].device
        target = {k: v.to(device) for k, v in y.items() if k in ("particle", "labels", "pad")}
        self.loss += float(head.loss(out, target).item()) * len(y["event"])
        self.n += len(y["event"])
        slot, types = head.clusters(out, target["pad"], self.objective.threshold,
                                    **self.objective.cluster_settings)
        slot, pad = slot.cpu().numpy(), y["pad"].numpy()
        for i, event in enumerate(y["event"].tolist()):
            keep = ~pad[i]
            self.events.append((event, slot[i][keep], types[i], y["raw"][i][keep].numpy(),
                                y["particle"][i][keep].numpy(), y["labels"][i][keep].numpy()))

    def local(self) -> tuple[list[Any], float, int]:
        return self.events, self.loss, self.n


@register_objective
class HitClustering(Objective):
    """Each hit of an event to its particle; the particles' types and kinematics besides."""

    name = "hit_clustering"
    sample_word = "ev"
    metrics = (
        Metric("efficiency", "max", "particles with a cluster holding > 50% of their calorimeter energy"),
        Metric("efficiency_close", "max", "the efficiency of particles within 100 mm of another"),
        Metric("purity", "max", "energy share of a cluster from its main particle, energy-weighted"),
        Metric("ari", "max", "adjusted Rand index of the hit assignment, mean over events"),
        Metric("merge_rate", "min", "particles whose matched cluster is also another's match"),
        Metric("split_rate", "min", "particles that are the main particle of two or more clusters"),
        Metric("energy_resolution", "min", "half the 16-84% spread of (cluster - particle) / particle energy"),
        Metric("pid_accuracy", "max", "matched clusters given their particle's type"),
        Metric("photon_nh_auc", "max", "ROC-AUC of photons vs neutral hadrons among matched clusters"),
        Metric("loss", "min", "the training loss (assignment, type and kinematics)"),
    )
    default_metric = "efficiency"
    artifacts_dir = "clusters"
    compare_columns = (Column("purity", "purity", "purity", 3, 1), Column("merged", "merged", "merge_rate", 3, 2),
                       Column("ari", "ARI", "ari", 3, 2), Column("pid", "PID", "pid_accuracy", 3, 3))
    state_keys: ClassVar[tuple[str, ...]] = ("hit_scale",)
    model_inputs = "hits"
    data: HitBundle

    def __init__(self, spec: Any, sweep_root: Path):
        super().__init__(spec, sweep_root)
        from hpcvit.config import HitsSpec

        self.hits = spec.data.hits or HitsSpec()
        self.head_name, self.threshold = "hits", 0.5
        self.cluster_settings: dict[str, float] = {}

    # -- data --------------------------------------------------------------------------------------------------
    @classmethod
    def check_data(cls, spec: Any) -> str:
        """The files open as hit lists, their first events have the spec's numbers per hit and 6 labels, the cut
        columns are there (the events themselves are checked when the cache is built)."""
        from hpcvit.config import HitsSpec
        from hpcvit.data import DataError, resolve_paths
        from hpcvit.data.store import not_found
        from hpcvit.data.selection import cut_columns
        from hpcvit.hits.cache import hit_store

        if spec.format == "synthetic":
            raise DataError("hit clustering reads hit lists from hdf5 or parquet files (data.format)",
                            field="data.format")
        spec = spec.model_copy(update={"hits": spec.hits or HitsSpec()})
        paths = resolve_paths(spec, Path.cwd())
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise not_found(missing)
        store = hit_store(spec, paths)
        try:
            have = store.scalar_columns()
            lacking = [c for c in cut_columns(spec) if c not in have]
            if lacking:
                raise DataError(f"{paths[0]}: no event-level column {lacking[0]!r} (has: {', '.join(have) or 'none'})",
                                field="data.cuts")
            if store.n:
                store.read(0, 1)  # the numbers per hit and per label, checked on the first event
            particle = "particle indices" if all(store.has_particle) else "particles from the label rows"
            return (f"data: {len(paths)} {spec.format} file(s) readable, {store.n} events of hit lists "
                    f"({len(spec.hits.feature_names)} numbers per hit, 6 labels, {particle})"
                    + (f", columns {', '.join(cut_columns(spec))} present" if spec.cuts else ""))
        finally:
            store.close()

    def build_data(self, saved: dict[str, Any] | None) -> HitBundle:
        from hpcvit.data import fingerprint, resolve_paths, split_indices
        from hpcvit.data.cache import digest
        from hpcvit.hits.cache import ensure
        from hpcvit.hits.data import Feed, HitBundle, HitDataset, HitScale

        spec = self.spec.data.model_copy(update={"hits": self.hits})
        paths = resolve_paths(spec, self.sweep_root)
        cache = ensure(spec, paths, self.sweep_root)
        train, val, test = split_indices(cache.n, spec)
        names = list(self.hits.feature_names)
        track = names.index(self.hits.track_feature) if self.hits.track_feature else None
        centred = tuple(names.index(c) for c in ("x", "y", "z") if self.hits.center and c in self.hits.features)
        feed = Feed(tuple(names.index(f) for f in self.hits.features), names.index("E"), track, centred)
        saved = saved or {}
        if saved.get("hit_scale"):
            scale = HitScale.from_dict(saved["hit_scale"])
        else:
            arrays = cache.arrays()
            blocks = (feed(np.asarray(arrays.features[arrays.offsets[e]:arrays.offsets[e + 1]])) for e in train)
            scale = HitScale.of(self.hits.scaling, list(self.hits.features), blocks)

        def part(pos: np.ndarray) -> HitDataset:
            return HitDataset(cache.dir, pos, feed, scale)

        from hpcvit.data import DataError

        if not len(train):
            raise DataError(f"{paths[0]}: no training events ({cache.n} selected)")
        m = cache.meta
        info = {"format": spec.format, "n_source": m["n_source"], "n_selected": cache.n, "n_train": len(train),
                "n_val": len(val), "n_test": len(test), "cache": str(cache.dir), "cuts": dict(spec.cuts),
                "hits_per_event": m["hits_per_event"], "particles_per_event": m["particles_per_event"],
                "fingerprint": digest([fingerprint(paths, spec), self.hits.model_dump(mode="json")]),
                "hit_scale": scale.to_dict(), "stats_from": "checkpoint" if saved.get("hit_scale") else "training split"}
        self.data = HitBundle(part(train), part(val), part(test) if len(test) else None, scale, cache, info)
        return self.data

    def arrange(self, indices: list[int], batch_size: int, seed: int) -> list[int]:
        from hpcvit.hits.data import arrange_by_length

        return arrange_by_length(indices, self.data.train.sizes, batch_size, seed)

    def loader(self, dataset: Any, sampler: Any, batch_size: int, *, workers: int, generator: Any,
               pin_memory: bool, worker_init_fn: Any, persistent: bool, context: Any = None) -> Any:
        from torch.utils.data import DataLoader, Subset

        from hpcvit.hits.data import collate

        if sampler is None and isinstance(dataset, Subset):  # evaluation: any order; by length pads least
            sizes = dataset.dataset.sizes[np.asarray(dataset.indices, dtype=np.int64)]
            order = np.asarray(dataset.indices, dtype=np.int64)[np.argsort(sizes, kind="stable")]
            dataset = Subset(dataset.dataset, order.tolist())
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate,
                          generator=generator, pin_memory=pin_memory, worker_init_fn=worker_init_fn,
                          multiprocessing_context=context, persistent_workers=False, drop_last=False)

    # -- model and loss ------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from hpcvit.hits.models import TYPES
        from hpcvit.models import build_hit_model

        model = build_hit_model(self.spec.model.name, len(self.hits.features), n_types=len(TYPES),
                                **self.spec.model.kwargs)
        self.head_name = str(getattr(model, "head", "hits"))
        self.threshold = float(getattr(model, "threshold", 0.5))
        self.cluster_settings = dict(getattr(model, "cluster_settings", {}))
        return model

    @property
    def head(self) -> Any:
        """The loss and the clusters of the model's outputs (:mod:`hpcvit.hits.heads`)."""
        from hpcvit.hits.heads import HEADS

        return HEADS[self.head_name]

    def inputs(self, x: dict[str, Any], device: torch.device) -> list[torch.Tensor]:
        return [x["hits"].to(device, non_blocking=True), x["pad"].to(device, non_blocking=True)]

    def target(self, y: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        return {k: y[k].to(device, non_blocking=True) for k in ("particle", "labels", "pad")}

    def loss(self, out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head.loss(out, target)

    def count(self, y: dict[str, Any]) -> int:
        return len(y["event"])

    # -- evaluation ----------------------------------------------------------------------------------------
    def evaluator(self) -> ClusterOutputs:
        return ClusterOutputs(self)

    def _events(self, parts: list[Any]) -> list[tuple]:
        return sorted((e for p in parts for e in p[0]), key=lambda e: e[0])

    def evaluate(self, parts: list[Any]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        from hpcvit.hits import evaluation as E
        from hpcvit.hits.metrics import summarize

        cols = E.Columns(list(self.hits.feature_names))
        events = self._events(parts)
        scored = [E.event(raw, particle, labels, slot, types, cols) for _, slot, types, raw, particle, labels in events]
        metrics, _ = summarize(scored)
        n = sum(p[2] for p in parts)
        metrics["loss"] = sum(p[1] for p in parts) / max(n, 1)
        sizes, clusters = [len(e[1]) for e in events], [len(e[2]) for e in events]
        predictions = {"event": np.array([e[0] for e in events], np.int64),
                       "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                       "pred": np.concatenate([e[1] for e in events]).astype(np.int32) if events else np.zeros(0),
                       "truth": np.concatenate([e[4] for e in events]).astype(np.int32) if events else np.zeros(0),
                       "type_offsets": np.concatenate([[0], np.cumsum(clusters)]).astype(np.int64),
                       "types": (np.concatenate([e[2] for e in events]).astype(np.float32) if events
                                 else np.zeros((0, 0), np.float32))}
        return metrics, predictions

    def write_artifacts(self, folder: Path, predictions: dict[str, dict[str, np.ndarray]], label: str) -> list[Path]:
        """On the test split (else validation): the model's and the topological baseline's metrics side by side
        (``metrics.csv``), both binned in particle energy and separation, and event displays."""
        from hpcvit.hits import evaluation as E
        from hpcvit.hits.metrics import summarize

        split = "test" if "test" in predictions else "val"
        dataset = self.data.test if split == "test" else self.data.val
        p = predictions[split]
        folder.mkdir(parents=True, exist_ok=True)
        cols = E.Columns(list(self.hits.feature_names))
        position = {int(e): k for k, e in enumerate(dataset.events)}
        model_events, base_events, shown = [], [], []
        for i, event in enumerate(p["event"]):
            item = dataset[position[int(event)]]
            lo, hi = int(p["offsets"][i]), int(p["offsets"][i + 1])
            raw, particle, labels = item["raw"], item["particle"], item["labels"]
            base = E.baseline(raw, cols)
            types = p["types"][p["type_offsets"][i]:p["type_offsets"][i + 1]] if "type_offsets" in p else None
            model_events.append(E.event(raw, particle, labels, p["pred"][lo:hi], types, cols))
            base_events.append(E.event(raw, particle, labels, base, None, cols))
            if len(shown) < DISPLAYS:
                shown.append((raw, np.where(labels[:, 1] == 0, -1, particle), p["pred"][lo:hi], base, int(event)))
        model_m, model_flat = summarize(model_events)
        base_m, base_flat = summarize(base_events)
        rows = [{"method": label, **model_m}, {"method": "topological baseline", **base_m}]
        written = [E.write_csv(folder / "metrics.csv", rows)]
        written += E.binned_figure(folder, {label.split(",")[0]: model_flat, "topological": base_flat},
                                   "test" if split == "test" else "validation")
        for raw, truth, pred, base, event in shown:
            written += E.display(folder, raw, truth, pred, base, cols, f"event_{event}")
        return written

    overlay = "binned"

    @classmethod
    def overlay_data(cls, folder: Path, predictions: dict[str, np.ndarray]) -> list[dict[str, Any]] | None:
        """The run's binned efficiencies (``efficiency_binned.csv``: the model's and the baseline's rows)."""
        import csv

        path = folder / cls.artifacts_dir / "efficiency_binned.csv"
        if not path.is_file():
            return None
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    def state_dict(self) -> dict[str, Any]:
        return {"hit_scale": self.data.scale.to_dict()}

    def facts(self, fresh_model: Any) -> dict[str, Any]:
        info = self.data.info
        return {"data.fingerprint": info["fingerprint"], "data.n_train": info["n_train"], "data.n_val": info["n_val"],
                "data.hits_per_event": round(info["hits_per_event"]["mean"], 1),
                "data.particles_per_event": round(info["particles_per_event"]["mean"], 2)}
