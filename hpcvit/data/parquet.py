"""Parquet jet images in the published layout, read with pyarrow without Python loops over pixels.

Images are a nested ``list<list<list<double>>>`` column (C x 125 x 125: ``X_jets`` for quark/gluon and top,
``X_jet`` for the mass-regression files) next to scalar columns (``y``, ``pt``, ``m0``, ``m``, ...). The CMS
converter writes one jet per row group, so files may hold tens of thousands of one-row groups: bulk reads
decode row group after row group (``read_row_group`` on the calling thread) into a reused float32 buffer, and
groups larger than the block through ``ParquetFile.iter_batches``; the three list levels are flattened after
checking every list has the expected length (from the list offsets). Errors name the file and row group.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hpcvit.data.store import DataError, Store, select_channels

# the image column is looked up under these names when the spec keeps the HDF5 default ``input_key: X``
IMAGE_COLUMNS = ("X_jets", "X_jet")
_DECODE_ERRORS = (pa.ArrowException, OSError, ValueError)
_POOL = pa.default_memory_pool()


class _RowError(ValueError):
    """A bad image in row ``row`` of a batch (the caller maps it to a row group)."""

    def __init__(self, row: int, message: str):
        super().__init__(message)
        self.row = row


def _list_lengths(arr: pa.Array, want: int | None, level: str, group: int) -> tuple[int, pa.Array]:
    """Check every list in ``arr`` has one length (``want`` if given); return it and the lists' values (the
    flattened array). ``group`` = lists per row."""
    if arr.null_count:
        first = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise _RowError(first // group, f"null {level} list")
    if pa.types.is_fixed_size_list(arr.type):
        lengths = np.full(len(arr), arr.type.list_size)
        values = None
    else:  # from the offsets (no nulls here): cheaper than pc.list_value_length and pc.list_flatten
        offsets = arr.offsets.to_numpy()
        lengths = offsets[1:] - offsets[:-1]
        values = arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])) if len(offsets) else None
    if want is None:
        want = int(lengths[0]) if len(lengths) else 0
    wrong = lengths != want
    if wrong.any():
        bad = np.flatnonzero(wrong)
        raise _RowError(int(bad[0]) // group, f"{level} list of length {int(lengths[bad[0]])}, expected {want}")
    return want, (arr.flatten() if values is None else values)


def _check_type(t: pa.DataType) -> None:
    full = t
    for _ in range(3):
        if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
            raise _RowError(0, f"image column has type {full}, expected list<list<list<number>>>")
        t = t.value_type
    if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
        raise _RowError(0, f"image column holds {t}, expected numbers")


def image_shape(arr: pa.Array) -> tuple[int, int, int]:
    """(C, H, W) of the first image of a nested-list array."""
    _check_type(arr.type)
    if len(arr) == 0:
        raise ValueError("no rows")
    c, a2 = _list_lengths(arr.slice(0, 1), None, "channel", 1)
    h, a3 = _list_lengths(a2, None, "row", c)
    w, _ = _list_lengths(a3, None, "pixel", c * h)
    return c, h, w


def nested_to_dense(arr: pa.Array | pa.ChunkedArray, shape: tuple[int, int, int], channels: list[int] | None,
                    out: np.ndarray) -> np.ndarray:
    """Flatten a ``list<list<list<number>>>`` array of n images of ``shape`` (C, H, W) into ``out[:n]``
    (n, len(channels), H, W) float32, selecting ``channels``. Null pixels become NaN. Raises ``_RowError``."""
    if isinstance(arr, pa.ChunkedArray) and arr.num_chunks == 1:
        arr = arr.chunk(0)
    elif isinstance(arr, pa.ChunkedArray):
        pos = 0
        for chunk in arr.chunks:
            try:
                nested_to_dense(chunk, shape, channels, out[pos:pos + len(chunk)])
            except _RowError as exc:
                raise _RowError(pos + exc.row, str(exc)) from None
            pos += len(chunk)
        return out[:pos]
    c, h, w = shape
    n = len(arr)
    _check_type(arr.type)
    _, a2 = _list_lengths(arr, c, "channel", 1)
    _, a3 = _list_lengths(a2, h, "row", c)
    _, vals = _list_lengths(a3, w, "pixel", c * h)
    src = vals.to_numpy(zero_copy_only=False).reshape(n, c, h, w)  # zero-copy unless there are nulls (-> NaN)
    dst = out[:n]
    if channels is None or channels == list(range(c)):
        np.copyto(dst, src, casting="unsafe")
    else:
        for j, ch in enumerate(channels):
            np.copyto(dst[:, j], src[:, ch], casting="unsafe")
    return dst


def dense_to_nested(x: np.ndarray, value_type: pa.DataType = pa.float64()) -> pa.ListArray:
    """(n, C, H, W) array -> ``list<list<list<value_type>>>`` array (the published layout), without loops."""
    n, c, h, w = x.shape
    values = pa.array(np.ascontiguousarray(x, dtype=value_type.to_pandas_dtype()).reshape(-1), type=value_type)
    inner = pa.ListArray.from_arrays(pa.array(np.arange(0, n * c * h * w + 1, w, dtype=np.int32)), values)
    mid = pa.ListArray.from_arrays(pa.array(np.arange(0, n * c * h + 1, h, dtype=np.int32)), inner)
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * c + 1, c, dtype=np.int32)), mid)


def jets_table(x: np.ndarray, scalars: dict[str, np.ndarray], image_column: str = "X_jets",
               metadata: dict[str, Any] | None = None) -> pa.Table:
    """A table in the published layout: the nested image column then double scalar columns."""
    cols = {image_column: dense_to_nested(x)}
    for name, v in scalars.items():
        cols[name] = pa.array(np.asarray(v, dtype=np.float64))
    table = pa.table(cols)
    if metadata:
        table = table.replace_schema_metadata({"hpcvit": json.dumps(metadata, sort_keys=True)})
    return table


def write_jets(path: str | Path, x: np.ndarray, scalars: dict[str, np.ndarray], image_column: str = "X_jets",
               row_group_size: int = 1, metadata: dict[str, Any] | None = None, compression: str = "snappy") -> Path:
    """Write jets in the published layout (by default one row per row group, as the CMS converter does)."""
    path = Path(path)
    table = jets_table(x, scalars, image_column, metadata)
    pq.write_table(table, path, row_group_size=row_group_size, compression=compression)
    return path


def _open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]})") from None


def resolve_image_column(schema: pa.Schema, input_key: str, path: Path) -> str:
    names = schema.names
    if input_key in names:
        return input_key
    if input_key == "X":
        for alt in IMAGE_COLUMNS:
            if alt in names:
                return alt
    raise DataError(f"{path}: no image column {input_key!r} (has: {', '.join(names)})", field="data.input_key")


def _is_scalar(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


class ParquetStore(Store):
    """One data set over several Parquet files of jet images (same image shape in every file)."""

    format = "parquet"

    def __init__(self, paths: list[Path], input_key: str = "X_jets", channels: list[int] | None = None,
                 rowgroup_cache_mb: float = 256.0):
        super().__init__()
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise DataError("no Parquet files given")
        self.file_rows, self._rg_start, self._rg_rows, self._keys = [], [], [], []
        scalar_sets = []
        self._not_scalar: dict[str, str] = {}
        shape = None
        for k, path in enumerate(self.paths):
            pf = _open_parquet(path)
            key = resolve_image_column(pf.schema_arrow, input_key, path)
            md = pf.metadata
            rg_rows = np.fromiter((md.row_group(i).num_rows for i in range(md.num_row_groups)), dtype=np.int64,
                                  count=md.num_row_groups)
            self._keys.append(key)
            self._rg_rows.append(rg_rows)
            self._rg_start.append(np.concatenate([[0], np.cumsum(rg_rows)]).astype(np.int64))
            self.file_rows.append(int(md.num_rows))
            scalar_sets.append({f.name for f in pf.schema_arrow if _is_scalar(f.type)})
            for f in pf.schema_arrow:
                if f.name != key and not _is_scalar(f.type):
                    self._not_scalar.setdefault(f.name, f"{path}: column {f.name} holds {f.type}, not one number "
                                                        "per row (one-hot labels? store the class index)"
                                                if "list" in str(f.type) else
                                                f"{path}: column {f.name} holds {f.type}, not numbers")
            first = int(np.argmax(rg_rows > 0)) if md.num_rows else None
            if first is not None:
                try:
                    arr = pf.read_row_group(first, columns=[key]).column(0).combine_chunks()
                    file_shape = image_shape(arr)
                except (_RowError, *_DECODE_ERRORS) as exc:
                    raise DataError(f"{path}: row group {first}: {key}: {exc}") from None
                if shape is None:
                    shape = file_shape
                elif file_shape != shape:
                    raise DataError(f"{path}: row group {first}: {key} images are {file_shape}, "
                                    f"but {self.paths[0]} has {shape}")
        if shape is None:
            raise DataError(f"{self.paths[0]}: no rows")
        self._file_shape = shape
        self._channels = select_channels(channels, shape[0], str(self.paths[0]))
        self._chan_arg = None if self._channels == list(range(shape[0])) else self._channels
        self.shape = (len(self._channels), shape[1], shape[2])
        self.n = int(sum(self.file_rows))
        self._scalars = sorted(set.intersection(*scalar_sets))
        self._rg_cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._rg_cache_bytes = int(rowgroup_cache_mb * 2**20)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_rg_cache"] = OrderedDict()
        return state

    def _open(self, k: int) -> pq.ParquetFile:
        return _open_parquet(self.paths[k])

    # -- decoding -------------------------------------------------------------------------------------------
    def _fail(self, k: int, groups: list[int], exc: Exception, row_in_run: int | None = None) -> DataError:
        """A DataError naming the row group: from the failing row, or by re-reading each group alone."""
        path, key = self.paths[k], self._keys[k]
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if row_in_run is not None:
            sizes = np.cumsum(self._rg_rows[k][groups])
            j = int(np.searchsorted(sizes, row_in_run, side="right"))
            g = groups[j]
            r = row_in_run - (int(sizes[j - 1]) if j else 0)
            return DataError(f"{path}: row group {g}: {key} (row {r} of the group, row "
                             f"{int(self._rg_start[k][g]) + r} of the file): {msg}")
        pf = self._handle(k)
        for g in groups:
            try:
                arr = pf.read_row_group(g, columns=[key]).column(0)
                nested_to_dense(arr, self._file_shape, None,
                                np.empty((len(arr), *self._file_shape), dtype=np.float32))
            except (_RowError, *_DECODE_ERRORS) as inner:
                text = str(inner).splitlines()[0] if str(inner) else type(inner).__name__
                return DataError(f"{path}: row group {g}: {key}: {text}")
        return DataError(f"{path}: row groups {groups[0]}-{groups[-1]}: {key}: {msg}")

    def _decode_group(self, k: int, g: int, out: np.ndarray | None = None) -> np.ndarray:
        pf = self._handle(k)
        try:
            # one column: Arrow's threads only add their start-up (about twice the time of a one-row group)
            arr = pf.read_row_group(g, columns=[self._keys[k]], use_threads=False).column(0)
        except _DECODE_ERRORS as exc:
            raise self._fail(k, [g], exc) from None
        if out is None:
            out = np.empty((len(arr), *self.shape), dtype=np.float32)
        try:
            return nested_to_dense(arr, self._file_shape, self._chan_arg, out)
        except _RowError as exc:
            raise self._fail(k, [g], exc, exc.row) from None

    def _read_file(self, k: int, local: np.ndarray, out: np.ndarray) -> None:
        start = self._rg_start[k]
        groups = np.searchsorted(start, local, side="right") - 1
        cuts = np.flatnonzero(np.diff(groups)) + 1
        a = 0
        for b in [*cuts.tolist(), len(local)]:
            g = int(groups[a])
            offs = local[a:b] - start[g]
            if self._rg_rows[k][g] == 1:  # the published layout: decode straight into the output
                self._decode_group(k, g, out[a:b])
            else:  # a multi-row group: keep a few decoded groups for neighbouring reads
                dense = self._rg_cache.get((k, g))
                if dense is None:
                    dense = self._decode_group(k, g)
                    self._rg_cache[(k, g)] = dense
                    while len(self._rg_cache) > 1 and sum(v.nbytes for v in self._rg_cache.values()) > self._rg_cache_bytes:
                        self._rg_cache.popitem(last=False)
                else:
                    self._rg_cache.move_to_end((k, g))
                out[a:b] = dense[offs]
            a = b

    def _iter_file(self, k: int, local: np.ndarray, block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        start, rg_rows = self._rg_start[k], self._rg_rows[k]
        gidx = np.searchsorted(start, local, side="right") - 1
        cuts = [0, *(np.flatnonzero(np.diff(gidx)) + 1).tolist(), len(local)]
        total = int(rg_rows[np.unique(gidx)].sum()) if len(local) else 0
        buf = np.empty((max(1, min(block, total)), *self.shape), dtype=np.float32)
        pos = 0  # rows of ``buf`` filled by small groups, not yet yielded
        rows: list[np.ndarray] = []
        for a, b in pairwise(cuts):
            g = int(gidx[a])
            m = int(rg_rows[g])
            if pos and (m > block or pos + m > len(buf)):
                yield np.concatenate(rows), buf[:pos]
                pos, rows = 0, []
                _POOL.release_unused()  # see _iter_large_group; per group, it would cost the next its page faults
            if m > block:  # a large group: in batches of ``block`` rows (memory bounded by the block)
                yield from self._iter_large_group(k, g, local[a:b] - start[g], buf)
                continue
            # small groups (the published layout: one row each): read whole and decoded straight into buf
            # (iter_batches costs ~1.6 x read_row_group per one-row group)
            self._decode_group(k, g, buf[pos:pos + m])
            if b - a < m:
                buf[pos:pos + b - a] = buf[pos:pos + m][local[a:b] - start[g]]
            rows.append(local[a:b])
            pos += b - a
        if pos:
            yield np.concatenate(rows), buf[:pos]

    def _iter_large_group(self, k: int, g: int, offs: np.ndarray, buf: np.ndarray
                          ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Rows ``offs`` (sorted, local to row group ``g``) of a group larger than ``buf``, batch by batch."""
        first = int(self._rg_start[k][g])
        m_all = int(self._rg_rows[k][g])
        wanted = None if len(offs) == m_all else np.isin(np.arange(m_all), offs, assume_unique=True)
        pf = self._handle(k)
        pos = 0
        try:
            # one column: threads add nothing, and decoding on this thread lets release_unused below hand the
            # freed batch's pages back (Arrow's allocator keeps them per thread for reuse, so a long pass
            # would otherwise hold more than one batch)
            for batch in pf.iter_batches(batch_size=len(buf), row_groups=[g], columns=[self._keys[k]],
                                         use_threads=False):
                m = batch.num_rows
                sel = None if wanted is None else wanted[pos:pos + m]
                x = None
                if sel is None or sel.any():
                    try:
                        x = nested_to_dense(batch.column(0), self._file_shape, self._chan_arg, buf[:m])
                    except _RowError as exc:
                        raise self._fail(k, [g], exc, pos + exc.row) from None
                del batch  # decoded into buf: free it before the consumer runs and the next is read
                _POOL.release_unused()
                if x is not None:
                    rows = np.arange(first + pos, first + pos + m)
                    if sel is None:
                        yield rows, x
                    else:
                        yield rows[sel], x[sel]
                pos += m
        except _DECODE_ERRORS as exc:
            if isinstance(exc, DataError):
                raise
            raise self._fail(k, [g], exc) from None

    # -- scalars --------------------------------------------------------------------------------------------
    def scalar_columns(self) -> list[str]:
        return list(self._scalars)

    def not_scalar(self, name: str) -> str | None:
        return self._not_scalar.get(name) if name not in self._scalars else None

    def column(self, name: str) -> np.ndarray:
        parts = []
        for k, path in enumerate(self.paths):
            pf = self._handle(k)
            if name not in pf.schema_arrow.names:
                raise DataError(f"{path}: no column {name!r} (has: {', '.join(pf.schema_arrow.names)})")
            try:
                col = pf.read(columns=[name], use_threads=True).column(0)
            except _DECODE_ERRORS as exc:
                for g in range(pf.metadata.num_row_groups):
                    try:
                        pf.read_row_group(g, columns=[name])
                    except _DECODE_ERRORS as inner:
                        raise DataError(f"{path}: row group {g}: column {name!r}: {str(inner).splitlines()[0]}") from None
                raise DataError(f"{path}: column {name!r}: {str(exc).splitlines()[0]}") from None
            parts.append(np.asarray(col.to_numpy(), dtype=np.float64))
            del col  # one chunk per row group: return their pages (see _iter_file)
            _POOL.release_unused()
        return np.concatenate(parts)

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for k, path in enumerate(self.paths):
            pf = self._handle(k)
            rg = self._rg_rows[k]
            meta = pf.schema_arrow.metadata or {}
            d = {"path": str(path), "rows": self.file_rows[k], "row_groups": int(len(rg)),
                 "rows_per_group": {"min": int(rg.min()), "max": int(rg.max()), "mean": round(float(rg.mean()), 2)}
                 if len(rg) else None,
                 "image_column": self._keys[k], "image_shape": list(self._file_shape),
                 "columns": {f.name: str(f.type) for f in pf.schema_arrow},
                 "compression": pf.metadata.row_group(0).column(0).compression if len(rg) else None}
            if b"hpcvit" in meta:
                d["generator"] = json.loads(meta[b"hpcvit"])
            out.append(d)
        return out
