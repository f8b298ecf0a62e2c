"""Per-event calorimeter hits, read from the seed's storage (awkward arrays in HDF5) or from Parquet.

A data set is one or more files of events, addressed by a global event number. Each event is a list of hits,
each hit the same numbers (``data.hits.feature_names``: energy, position, time, subdetector, track flag), with
per-hit truth: the label row of the particle that made the hit (``target_key``: charge, |pdg|, energy,
direction) and, where the file has it, the particle's index in its event (``data.hits.particle_key``;
otherwise the hits with the same label row are one particle). Event-level numbers (1-D data sets in HDF5,
plain columns in Parquet) serve as cut columns.

- HDF5: one group per array, as ``ak.to_buffers`` writes it (:mod:`.layout`); event ranges are read by h5py
  slices, so memory is bounded by the block.
- Parquet: ``list<list<float>>``, ``list<fixed_size_list<float>>`` or ``list<struct<...>>`` columns, one row per
  event, read a row group at a time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit.data.store import DataError
from hpcvit.hits.layout import Layout

LABEL_NAMES = ("charge", "abs_pdg", "energy", "dir_x", "dir_y", "dir_z")
"""The seed's per-hit truth: the charge, |PDG id|, energy and unit momentum direction of the hit's particle."""


@dataclass
class Hits:
    """A block of events: every array is per hit, ``offsets`` (events + 1, from 0) cuts them into events."""

    offsets: np.ndarray
    features: np.ndarray
    """float32, hits x features."""
    labels: np.ndarray
    """float32, hits x ``len(LABEL_NAMES)``."""
    particle: np.ndarray
    """int32, hits: the index (0, 1, ...) of the hit's particle within its event."""

    @property
    def n(self) -> int:
        return len(self.offsets) - 1

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def event(self, i: int) -> Hits:
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        return Hits(np.array([0, hi - lo], np.int64), self.features[lo:hi], self.labels[lo:hi], self.particle[lo:hi])


def particles_from_labels(offsets: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each hit's particle index in its event when the file has none: hits with the same label row are one
    particle, numbered in order of first appearance."""
    n_hits = len(labels)
    if n_hits == 0:
        return np.zeros(0, np.int32)
    event = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    keyed = np.concatenate([event[:, None].astype(np.float64), labels.astype(np.float64)], axis=1)
    _, first, inverse = np.unique(keyed, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    # rank the unique (event, label) keys by first appearance, then number them within each event
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    key_event = event[first]
    start_of_event = np.searchsorted(key_event[order], np.arange(len(offsets) - 1))
    local = rank - start_of_event[key_event]
    return local[inverse].astype(np.int32)


class HitStore:
    """Hit lists of one data set, several files read as one; file handles are opened per process."""

    format = "?"

    def __init__(self, paths: list[Path], input_key: str, target_key: str, particle_key: str | None,
                 feature_names: tuple[str, ...]):
        self.paths = [Path(p) for p in paths]
        self.input_key, self.target_key, self.particle_key = input_key, target_key, particle_key
        self.feature_names = feature_names
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()
        self.file_events: list[int] = []
        self.has_particle: list[bool] = []

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    @property
    def n(self) -> int:
        return int(sum(self.file_events))

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.file_events)]).astype(np.int64)

    def where(self, event: int) -> str:
        k = int(np.searchsorted(self.starts, event, side="right") - 1)
        return f"{self.paths[k]} (event {event - int(self.starts[k])})"

    def read(self, start: int, stop: int) -> Hits:
        """Events ``start:stop`` of the data set (global numbers)."""
        parts = []
        starts = self.starts
        for k in range(len(self.paths)):
            lo, hi = max(start, int(starts[k])), min(stop, int(starts[k + 1]))
            if lo < hi:
                parts.append(self._read_file(k, lo - int(starts[k]), hi - int(starts[k])))
        return concat(parts)

    def iter_blocks(self, max_hits: int = 1 << 20) -> Iterator[tuple[int, Hits]]:
        """(first event, block) over the whole data set in order, each block at most ``max_hits`` hits (or one
        event, if that is larger)."""
        sizes = self.event_sizes()
        ends = np.cumsum(sizes)
        start = 0
        while start < self.n:
            base = int(ends[start - 1]) if start else 0
            stop = max(start + 1, int(np.searchsorted(ends, base + max_hits, side="right")))
            yield start, self.read(start, min(stop, self.n))
            start = stop

    def _finish(self, k: int, first: int, offsets: np.ndarray, features: np.ndarray, labels: np.ndarray,
                particle: np.ndarray | None) -> Hits:
        where = f"{self.paths[k]}"
        if features.shape[1] != len(self.feature_names):
            raise DataError(f"{where}: hits have {features.shape[1]} numbers each, data.hits.feature_names names "
                            f"{len(self.feature_names)} ({', '.join(self.feature_names)})", field="data.hits")
        if labels.shape[1] != len(LABEL_NAMES):
            raise DataError(f"{where}: {self.target_key!r} has {labels.shape[1]} numbers per hit, not "
                            f"{len(LABEL_NAMES)} ({', '.join(LABEL_NAMES)})", field="data.target_key")
        if len(labels) != len(features):
            raise DataError(f"{where}: {len(features)} hits but {len(labels)} labels in events {first}-"
                            f"{first + len(offsets) - 2}", field="data.target_key")
        if particle is None:
            particle = particles_from_labels(offsets, labels)
        elif len(particle) != len(features):
            raise DataError(f"{where}: {len(features)} hits but {len(particle)} particle indices",
                            field="data.hits")
        return Hits(offsets, features.astype(np.float32), labels.astype(np.float32), particle.astype(np.int32))

    def event_sizes(self) -> np.ndarray:
        raise NotImplementedError

    def scalar_columns(self) -> list[str]:
        raise NotImplementedError

    def column(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def _read_file(self, k: int, start: int, stop: int) -> Hits:
        raise NotImplementedError

    def close(self) -> None:
        for h in self._handles.values():
            h.close()
        self._handles.clear()


def concat(parts: list[Hits]) -> Hits:
    if len(parts) == 1:
        return parts[0]
    offsets = [np.zeros(1, np.int64)]
    base = 0
    for p in parts:
        offsets.append(p.offsets[1:] + base)
        base += int(p.offsets[-1])
    width = parts[0].features.shape[1] if parts else 0
    return Hits(np.concatenate(offsets),
                np.concatenate([p.features for p in parts]) if parts else np.zeros((0, width), np.float32),
                np.concatenate([p.labels for p in parts]) if parts else np.zeros((0, len(LABEL_NAMES)), np.float32),
                np.concatenate([p.particle for p in parts]) if parts else np.zeros(0, np.int32))


class HDF5Hits(HitStore):
    """The seed's storage: each array a group written from ``ak.to_buffers``; event-level numbers as 1-D sets."""

    format = "hdf5"

    def __init__(self, paths: list[Path], input_key: str, target_key: str, particle_key: str | None,
                 feature_names: tuple[str, ...]):
        super().__init__(paths, input_key, target_key, particle_key, feature_names)
        import h5py

        self.layouts: list[dict[str, Layout]] = []
        self._columns: list[set[str]] = []
        for path in self.paths:
            try:
                f = h5py.File(path, "r")
            except OSError as exc:
                raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
            with f:
                layouts = {}
                for role, key in (("features", input_key), ("labels", target_key), ("particle", particle_key)):
                    if key is None or (role == "particle" and key not in f):
                        continue
                    if key not in f or not isinstance(f[key], h5py.Group):
                        field = {"features": "data.input_key", "labels": "data.target_key"}[role]
                        have = ", ".join(sorted(k for k in f if isinstance(f[k], h5py.Group))) or "none"
                        raise DataError(f"{path}: no awkward array group {key!r} (groups: {have})", field=field)
                    layouts[role] = Layout.of(f[key], f"{path}:{key}")
                lengths = {int(f[k].attrs["length"]) for k in (input_key, target_key)}
                if len(lengths) != 1:
                    raise DataError(f"{path}: {input_key!r} and {target_key!r} hold different numbers of events "
                                    f"({sorted(lengths)})", field="data.target_key")
                self.file_events.append(lengths.pop())
                self.has_particle.append("particle" in layouts)
                self.layouts.append(layouts)
                self._columns.append({k for k, v in f.items() if isinstance(v, h5py.Dataset) and v.ndim == 1
                                      and v.shape[0] == self.file_events[-1]})

    def _file(self, k: int) -> Any:
        import h5py

        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if k not in self._handles:
            self._handles[k] = h5py.File(self.paths[k], "r")
        return self._handles[k]

    def event_sizes(self) -> np.ndarray:
        parts = []
        for k, layouts in enumerate(self.layouts):
            f = self._file(k)
            parts.append(np.diff(np.asarray(f[self.input_key][layouts["features"].offsets][:], np.int64)))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def scalar_columns(self) -> list[str]:
        return sorted(set.intersection(*self._columns)) if self._columns else []

    def column(self, name: str) -> np.ndarray:
        return np.concatenate([np.asarray(self._file(k)[name][:], np.float64) for k in range(len(self.paths))])

    def _read_file(self, k: int, start: int, stop: int) -> Hits:
        f, layouts = self._file(k), self.layouts[k]
        offsets, features = layouts["features"].read(f[self.input_key], start, stop)
        label_offsets, labels = layouts["labels"].read(f[self.target_key], start, stop)
        if not np.array_equal(offsets, label_offsets):
            bad = int(np.flatnonzero(offsets != label_offsets)[0]) - 1
            raise DataError(f"{self.paths[k]} (event {start + max(bad, 0)}): {self.target_key!r} has another number "
                            f"of hits than {self.input_key!r}", field="data.target_key")
        particle = None
        if "particle" in layouts:
            _, values = layouts["particle"].read(f[self.particle_key], start, stop)
            particle = values[:, 0]
        return self._finish(k, start, offsets, features, labels, particle)
