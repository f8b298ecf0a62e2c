"""Hit lists in Parquet: one row per event, the hits as nested lists, read one row group at a time.

A per-hit column is ``list<list<number>>``, ``list<fixed_size_list<number>>`` or ``list<struct<...>>`` (one
field per number); the particle index ``list<int>``. The list levels are flattened from their offsets into
flat buffers, without Python loops over hits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpcvit.data.store import DataError
from hpcvit.hits.store import Hits, HitStore


def _flatten(column: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """A ``list<...>`` column of a row group -> (per-event offsets from 0, hits x width float64)."""
    import pyarrow as pa

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        raise DataError(f"{where}: a per-hit column must be a list per event, found {column.type}")
    if column.null_count:
        raise DataError(f"{where}: {column.null_count} event(s) with no hit list (null)")
    offsets = np.asarray(column.offsets, dtype=np.int64)
    hits = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    offsets = offsets - offsets[0]
    t = hits.type
    if pa.types.is_struct(t):
        values = np.stack([np.asarray(hits.field(i).to_numpy(zero_copy_only=False), np.float64)
                           for i in range(t.num_fields)], axis=1) if t.num_fields else np.zeros((len(hits), 0))
    elif pa.types.is_fixed_size_list(t):
        values = np.asarray(hits.flatten().to_numpy(zero_copy_only=False), np.float64).reshape(len(hits), t.list_size)
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = np.asarray(hits.offsets, dtype=np.int64)
        sizes = np.diff(inner)
        width = int(sizes[0]) if len(sizes) else 0
        if len(sizes) and (sizes != width).any():
            bad = int(np.flatnonzero(sizes != width)[0])
            event = int(np.searchsorted(offsets, bad, side="right") - 1)
            raise DataError(f"{where} (event {event} of the row group): a hit has {int(sizes[bad])} numbers, the "
                            f"others {width}: every hit needs the same features")
        flat = hits.values.slice(int(inner[0]), int(inner[-1] - inner[0]))
        values = np.asarray(flat.to_numpy(zero_copy_only=False), np.float64).reshape(len(hits), width)
    elif pa.types.is_integer(t) or pa.types.is_floating(t):
        values = np.asarray(hits.to_numpy(zero_copy_only=False), np.float64).reshape(-1, 1)
    else:
        raise DataError(f"{where}: hits of type {t} are not numbers")
    return offsets, values


class ParquetHits(HitStore):
    """Parquet files of events; per-hit columns nested lists, event-level columns plain numbers."""

    format = "parquet"

    def __init__(self, paths: list[Path], input_key: str, target_key: str, particle_key: str | None,
                 feature_names: tuple[str, ...]):
        super().__init__(paths, input_key, target_key, particle_key, feature_names)
        import pyarrow.parquet as pq

        self._schemas: list[set[str]] = []
        self._groups: list[np.ndarray] = []
        for path in self.paths:
            try:
                pf = pq.ParquetFile(path)
                meta = pf.metadata
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
                raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
            names = set(pf.schema_arrow.names)
            for key, field in ((input_key, "data.input_key"), (target_key, "data.target_key")):
                if key not in names:
                    raise DataError(f"{path}: no column {key!r} (has: {', '.join(sorted(names))})", field=field)
            self._schemas.append(names)
            self.has_particle.append(bool(particle_key) and particle_key in names)
            self._groups.append(np.concatenate([[0], np.cumsum([meta.row_group(g).num_rows
                                                                for g in range(meta.num_row_groups)])]))
            self.file_events.append(meta.num_rows)

    def _file(self, k: int) -> Any:
        import os

        import pyarrow.parquet as pq

        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        if k not in self._handles:
            self._handles[k] = pq.ParquetFile(self.paths[k])
        return self._handles[k]

    def event_sizes(self) -> np.ndarray:
        import pyarrow.compute as pc

        out = []
        for k in range(len(self.paths)):
            table = self._file(k).read(columns=[self.input_key])
            out.append(np.asarray(pc.list_value_length(table.column(0)).to_numpy(zero_copy_only=False), np.int64))
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def scalar_columns(self) -> list[str]:
        import pyarrow as pa

        common = set.intersection(*self._schemas) if self._schemas else set()
        schema = self._file(0).schema_arrow if self.paths else None
        return sorted(n for n in common if schema is not None
                      and (pa.types.is_integer(schema.field(n).type) or pa.types.is_floating(schema.field(n).type)))

    def column(self, name: str) -> np.ndarray:
        return np.concatenate([np.asarray(self._file(k).read(columns=[name]).column(0).to_numpy(), np.float64)
                               for k in range(len(self.paths))])

    def _read_file(self, k: int, start: int, stop: int) -> Hits:
        groups = self._groups[k]
        first, last = int(np.searchsorted(groups, start, side="right") - 1), int(np.searchsorted(groups, stop - 1,
                                                                                                 side="right") - 1)
        columns = [self.input_key, self.target_key] + ([self.particle_key] if self.has_particle[k] else [])
        table = self._file(k).read_row_groups(list(range(first, last + 1)), columns=columns)
        table = table.slice(start - int(groups[first]), stop - start)
        where = f"{self.paths[k]}"
        offsets, features = _flatten(table.column(self.input_key), f"{where}:{self.input_key}")
        label_offsets, labels = _flatten(table.column(self.target_key), f"{where}:{self.target_key}")
        if not np.array_equal(offsets, label_offsets):
            raise DataError(f"{where}: {self.target_key!r} has another number of hits than {self.input_key!r}",
                            field="data.target_key")
        particle = None
        if self.has_particle[k]:
            _, values = _flatten(table.column(self.particle_key), f"{where}:{self.particle_key}")
            particle = values[:, 0]
        return self._finish(k, start, offsets, features, labels, particle)
