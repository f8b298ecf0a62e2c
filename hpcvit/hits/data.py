"""What the hit-clustering objective trains on: events from the ragged cache, split, scaled, padded in batches.

An event is its hits' scaled numbers (``data.hits.features``) plus, for the loss and the metrics, each hit's
particle index, its particle's label row and the hit's raw numbers. A batch pads the events to its longest one;
``pad`` is True at padding (PyTorch's key-padding convention). Batches are built by length
(:func:`arrange_by_length`), so padding stays small while the order stays a pure function of the epoch's seed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit.hits.cache import HitCache
from hpcvit.hits.store import Hits

LENGTH_WINDOW = 32
"""Batches whose events are sorted by length together: a window of this many batches of the epoch's order."""
SEED_SCALING = {"E": "tanh", "x": 1 / 2000.0, "y": 1 / 2000.0, "z": 1 / 2000.0}
"""The seed's fixed scaling: tanh of the energy, positions (mm) / 2000; other numbers as they are."""


@dataclass(frozen=True)
class HitScale:
    """How each fed number of a hit is scaled: ``standard`` (training split's mean and std) or ``seed``."""

    names: tuple[str, ...]
    preset: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.preset == "standard":
            return ((x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)).astype(np.float32)
        out = x.copy()
        for i, name in enumerate(self.names):
            rule = SEED_SCALING.get(name)
            if rule == "tanh":
                out[:, i] = np.tanh(x[:, i])
            elif rule is not None:
                out[:, i] = x[:, i] * np.float32(rule)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "preset": self.preset, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HitScale:
        return cls(tuple(d["names"]), str(d["preset"]), tuple(float(v) for v in d["mean"]),
                   tuple(float(v) for v in d["std"]))

    @classmethod
    def of(cls, preset: str, names: list[str], blocks: Iterable[np.ndarray]) -> HitScale:
        """From the training split's fed numbers, read block by block (hits x names; memory stays a block's);
        the seed preset reads none of them."""
        if preset == "seed":
            return cls(tuple(names), "seed", tuple(0.0 for _ in names), tuple(1.0 for _ in names))
        n, total, squares = 0, np.zeros(len(names)), np.zeros(len(names))
        shift = None  # sums around the first block's mean: no cancellation for large offsets (positions in mm)
        for block in blocks:
            v = np.asarray(block, np.float64)
            if not len(v):
                continue
            shift = v.mean(axis=0) if shift is None else shift
            n, total, squares = n + len(v), total + (v - shift).sum(axis=0), squares + ((v - shift) ** 2).sum(axis=0)
        if not n:
            return cls(tuple(names), "standard", tuple(0.0 for _ in names), tuple(1.0 for _ in names))
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - mean**2, 0))
        return cls(tuple(names), "standard", tuple(float(m) for m in mean + shift),
                   tuple(float(s) if s > 0 else 1.0 for s in std))


@dataclass(frozen=True)
class Feed:
    """Which raw numbers of a hit are fed (``columns``), and the positions among them to centre per event."""

    columns: tuple[int, ...]
    energy: int
    track: int | None
    centred: tuple[int, ...] = ()
    """Raw columns (x, y, z) fed relative to the event's energy-weighted centroid of calorimeter hits."""

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        x = np.asarray(raw, np.float32)[:, list(self.columns)]
        if self.centred and len(raw):
            w = np.asarray(raw[:, self.energy], np.float64)
            if self.track is not None:
                w = np.where(raw[:, self.track] == 1, 0.0, w)
            w = w if w.sum() > 0 else np.ones(len(raw))
            for c in self.centred:
                j = self.columns.index(c)
                x[:, j] -= np.float32((raw[:, c] * w).sum() / w.sum())
        return x


class HitDataset:
    """Events of the cache (``events``: cache positions); each item one event's arrays. Opens the memory maps
    lazily in each process, so it pickles to loader workers."""

    def __init__(self, cache_dir: Path, events: np.ndarray, feed: Feed, scale: HitScale):
        self.cache_dir, self.events = Path(cache_dir), np.asarray(events, np.int64)
        self.feed, self.scale = feed, scale
        self._arrays: Hits | None = None
        self.sizes = np.diff(self.arrays.offsets)[self.events]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    @property
    def arrays(self) -> Hits:
        if self._arrays is None:
            self._arrays = HitCache.open(self.cache_dir).arrays()
        return self._arrays

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, i: int) -> dict[str, Any]:
        a = self.arrays
        event = int(self.events[i])
        lo, hi = int(a.offsets[event]), int(a.offsets[event + 1])
        raw = np.asarray(a.features[lo:hi], np.float32)
        return {"hits": self.scale.apply(self.feed(raw)), "raw": raw, "particle": np.asarray(a.particle[lo:hi]),
                "labels": np.asarray(a.labels[lo:hi], np.float32), "event": event}


def collate(samples: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Events padded to the longest: ``x`` = {hits, pad}, ``y`` = {particle (-1 at padding), labels, raw, pad,
    event}."""
    import torch

    n = max(len(s["hits"]) for s in samples)
    b = len(samples)

    def pad(key: str, fill: float, dtype: Any) -> Any:
        first = samples[0][key]
        out = np.full((b, n, *first.shape[1:]), fill, dtype=dtype)
        for i, s in enumerate(samples):
            out[i, :len(s[key])] = s[key]
        return torch.from_numpy(out)

    mask = np.ones((b, n), bool)
    for i, s in enumerate(samples):
        mask[i, :len(s["hits"])] = False
    padding = torch.from_numpy(mask)
    x = {"hits": pad("hits", 0.0, np.float32), "pad": padding}
    y = {"particle": pad("particle", -1, np.int64), "labels": pad("labels", 0.0, np.float32),
         "raw": pad("raw", 0.0, np.float32), "pad": padding,
         "event": torch.as_tensor([s["event"] for s in samples], dtype=torch.int64)}
    return x, y


def arrange_by_length(indices: list[int], sizes: np.ndarray, batch_size: int, seed: int,
                      window: int = LENGTH_WINDOW) -> list[int]:
    """The same indices, ordered so that each run of ``batch_size`` holds events of similar length: within each
    window of ``window`` batches of the given order the events are sorted by length, cut into batches, and the
    windows' batches shuffled (seeded). Batch count and sizes are those of the given order, so a step plan and a
    resume point are unchanged; the order is a pure function of ``indices`` and ``seed``."""
    if not indices:
        return indices
    idx = np.asarray(indices, np.int64)
    rng = np.random.default_rng(seed)
    span = window * batch_size
    batches: list[np.ndarray] = []
    full = (len(idx) // batch_size) * batch_size
    for lo in range(0, full, span):
        part = idx[lo:min(lo + span, full)]
        part = part[np.argsort(sizes[part], kind="stable")]
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    order = rng.permutation(len(batches))
    out = [batches[k] for k in order]
    if full < len(idx):  # the last, short batch stays last (its size is the plan's)
        out.append(idx[full:])
    return np.concatenate(out).tolist()


def padding_fraction(sizes: np.ndarray, batch_size: int) -> float:
    """The share of a batch's slots that are padding, over consecutive batches of ``sizes``."""
    pad = total = 0
    for lo in range(0, len(sizes), batch_size):
        s = sizes[lo:lo + batch_size]
        pad += int(s.max()) * len(s) - int(s.sum())
        total += int(s.max()) * len(s)
    return pad / max(total, 1)


@dataclass
class HitBundle:
    """What the objective trains on."""

    train: HitDataset
    val: HitDataset
    test: HitDataset | None
    scale: HitScale
    cache: HitCache
    info: dict[str, Any] = field(default_factory=dict)
