"""Electron/photon HDF5 files: ``X`` (N, 32, 32, 2) float32 (hit energy, time) and ``y`` (N,), one file per
class; several files form one data set.

Reads are chunk-aware and never load a whole file: rows are grouped by the dataset's chunk (or by ~1 MiB
blocks of a contiguous dataset) and each group is one hyperslab read, or, where the rows lie in the file as
stored (uncompressed, see :mod:`hpcvit.data.h5map`), one view of a memory map reordered straight into the
output. Files are opened per process with a chunk
cache that holds several chunks (h5py's default of 8 MiB equals one 1,024-sample chunk of 32x32x2 float32, so
per-sample reads of a compressed file would otherwise decompress a whole chunk per sample).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcvit.data.h5map import H5Handle, MappedRows
from hpcvit.data.reorder import to_channels_first
from hpcvit.data.store import DataError, Store, select_channels

_CONTIGUOUS_BLOCK_BYTES = 1 << 20


def _open_h5(path: Path, **kwargs: Any) -> h5py.File:
    try:
        return h5py.File(path, "r", **kwargs)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({str(exc).splitlines()[0]})") from None


def guess_layout(row: tuple[int, int, int]) -> str | None:
    """``NHWC`` or ``NCHW`` for an image of shape ``row``: the square pair is height x width (detector images
    are square), else the smaller side is the channels; None where all three are equal."""
    a, b, c = row
    if a == b == c:
        return None
    if a == b:
        return "NHWC"
    if b == c:
        return "NCHW"
    return "NHWC" if c < a else "NCHW"


def _why_not_scalar(obj: Any, rows: int, input_key: str) -> str:
    """Why an HDF5 object is not a column of one number per image."""
    if not isinstance(obj, h5py.Dataset):
        return "is a group, not a data set"
    if obj.dtype.kind not in "fiub":
        return f"holds {obj.dtype} values, not numbers"
    if obj.ndim == 2 and obj.shape[0] == rows:
        return f"has shape {obj.shape}: one number per image is needed (one-hot labels? store the class index)"
    if obj.ndim != 1:
        return f"has shape {obj.shape}, not one number per image"
    return f"has {obj.shape[0]} values but {input_key} has {rows} images"


class HDF5Store(Store):
    """One data set over several HDF5 files with the same image shape and layout."""

    format = "hdf5"

    def __init__(self, paths: list[Path], input_key: str = "X", channels: list[int] | None = None,
                 layout: str = "auto", chunk_cache_mb: float = 64.0):
        super().__init__()
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise DataError("no HDF5 files given")
        self.input_key = input_key
        self.file_rows, self._chunk_rows, self._chunk_bytes, self._info = [], [], [], []
        file_shape = None
        scalar_sets: list[set[str]] = []
        self._not_scalar: dict[str, str] = {}
        for path in self.paths:
            with _open_h5(path) as f:
                if input_key in f and not isinstance(f[input_key], h5py.Dataset):
                    inside = ", ".join(list(f[input_key].keys())[:8]) if isinstance(f[input_key], h5py.Group) else ""
                    raise DataError(f"{path}: {input_key!r} is a group, not a data set of images (it holds: "
                                    f"{inside or 'nothing'})", field="data.input_key")
                if input_key not in f:
                    raise DataError(f"{path}: no data set {input_key!r} (has: {', '.join(f.keys()) or 'nothing'})",
                                    field="data.input_key")
                d = f[input_key]
                if d.ndim not in (3, 4) or d.dtype.kind not in "fiu":
                    raise DataError(f"{path}: {input_key} has shape {d.shape} and type {d.dtype}; expected numeric "
                                    "(N, H, W, C), (N, C, H, W) or (N, H, W)")
                if 0 in d.shape[1:]:
                    raise DataError(f"{path}: {input_key} images are {tuple(d.shape[1:])}: empty (an axis of size 0)")
                if d.ndim == 3:
                    lay = "NHW"
                elif layout == "auto":
                    lay = guess_layout(tuple(d.shape[1:]))
                    if lay is None:
                        raise DataError(f"{path}: {input_key} images are {tuple(d.shape[1:])}: channels first or "
                                        "last cannot be told apart; set data.layout to NHWC or NCHW",
                                        field="data.layout")
                else:
                    lay = layout
                shape = (d.shape[1], d.shape[2], 1) if lay == "NHW" else (
                    (d.shape[1], d.shape[2], d.shape[3]) if lay == "NHWC" else (d.shape[2], d.shape[3], d.shape[1]))
                if file_shape is None:
                    file_shape, self._layout = shape, lay
                elif shape != file_shape or lay != self._layout:
                    raise DataError(f"{path}: {input_key} images are {shape} ({lay}), but {self.paths[0]} has "
                                    f"{file_shape} ({self._layout})")
                row_bytes = int(np.prod(d.shape[1:])) * d.dtype.itemsize
                self.file_rows.append(int(d.shape[0]))
                self._chunk_rows.append(int(d.chunks[0]) if d.chunks else None)
                self._chunk_bytes.append(int(np.prod(d.chunks)) * d.dtype.itemsize if d.chunks else 0)
                self._info.append({"path": str(path), "rows": int(d.shape[0]), "dtype": str(d.dtype),
                                   "shape": list(d.shape), "layout": lay, "chunks": list(d.chunks) if d.chunks else None,
                                   "compression": d.compression, "row_bytes": row_bytes})
                scalar_sets.append({k for k, v in f.items() if isinstance(v, h5py.Dataset) and v.ndim == 1
                                    and v.shape[0] == d.shape[0] and v.dtype.kind in "fiub"})
                for k, v in f.items():
                    if k != input_key and k not in scalar_sets[-1]:
                        self._not_scalar.setdefault(k, f"{path}: {k} {_why_not_scalar(v, d.shape[0], input_key)}")
        h, w, c = file_shape
        self._channels = select_channels(channels, c, str(self.paths[0]))
        self.shape = (len(self._channels), h, w)
        self.n = int(sum(self.file_rows))
        self._scalars = sorted(set.intersection(*scalar_sets))
        self._cache_bytes = int(chunk_cache_mb * 2**20)
        self._all_channels = self._channels == list(range(c))

    def _open(self, k: int) -> Any:
        # h5py's small default chunk cache first: rows stored as is are read through the map, and a cache that
        # holds whole chunks would read row 0's whole chunk for the map's check
        f = _open_h5(self.paths[k])
        d = f[self.input_key]
        mapped = MappedRows.open(f, d)
        if mapped is None and d.chunks:
            f.close()
            nbytes = max(self._cache_bytes, 4 * self._chunk_bytes[k])
            f = _open_h5(self.paths[k], rdcc_nbytes=nbytes, rdcc_nslots=100_003, rdcc_w0=0.75)
            d = f[self.input_key]
        return H5Handle(f, d, mapped)

    # -- images ---------------------------------------------------------------------------------------------
    def _block_rows(self, k: int) -> int:
        if self._chunk_rows[k]:
            return self._chunk_rows[k]
        return max(1, _CONTIGUOUS_BLOCK_BYTES // self._info[k]["row_bytes"])

    def _to_nchw(self, slab: np.ndarray, out: np.ndarray) -> None:
        """Raw rows in the file's layout -> channel-selected NCHW float32 ``out``."""
        if self._layout == "NHWC":
            to_channels_first(slab if self._all_channels else slab[..., self._channels], out)
            return
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf, counted by the data checks
            if self._layout == "NHW":
                out[:, 0] = slab
            else:
                np.copyto(out, slab if self._all_channels else slab[:, self._channels], casting="unsafe")

    def _slab(self, k: int, lo: int, hi: int, into: np.ndarray | None = None) -> np.ndarray:
        """Rows ``lo:hi`` in the file's layout: viewed in the file's map where the rows are stored as is,
        else read (into ``into[:hi - lo]`` when given)."""
        h = self._handle(k)
        if h.mapped is not None:
            view = h.mapped.rows(lo, hi)
            if view is not None:
                return view
        d = h.data
        try:
            if into is None:
                return d[lo:hi]
            d.read_direct(into, np.s_[lo:hi], np.s_[0:hi - lo])
            return into[:hi - lo]
        except (OSError, ValueError, RuntimeError) as exc:
            raise DataError(f"{self.paths[k]}: {self.input_key} rows {lo}-{hi - 1}: cannot read "
                            f"({str(exc).splitlines()[0]})") from None

    def _read_file(self, k: int, local: np.ndarray, out: np.ndarray, slab: np.ndarray | None = None) -> None:
        """Rows ``local`` into ``out``; dense groups go through ``slab`` (file layout, reused) when given."""
        block = self._block_rows(k)
        groups = np.flatnonzero(np.diff(local // block)) + 1
        start = 0
        for end in [*groups.tolist(), len(local)]:
            g = local[start:end]
            lo, hi = int(g[0]), int(g[-1]) + 1
            if hi - lo <= 2 * len(g) + 8:  # dense enough: one hyperslab covering the group
                into = slab if slab is not None and len(slab) >= hi - lo else None
                raw = self._slab(k, lo, hi, into)
                self._to_nchw(raw if hi - lo == len(g) else raw[g - lo], out[start:end])
            else:  # sparse rows of one chunk: the chunk cache keeps the chunk decompressed between reads
                for j, r in enumerate(g.tolist()):
                    self._to_nchw(self._slab(k, r, r + 1), out[start + j:start + j + 1])
            start = end

    def _iter_file(self, k: int, local: np.ndarray, block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        # chunk-aligned slabs of about ``block`` rows (at least one chunk)
        step = self._block_rows(k)
        step = max(step, (block // step) * step)
        buf = np.empty((min(step, len(local)), *self.shape), dtype=np.float32)
        h = self._handle(k)
        slab = None  # rows read through h5py go into one reused array: a fresh one per slab costs page faults
        if h.mapped is None:
            slab = np.empty((min(self._block_rows(k), self.file_rows[k]), *h.data.shape[1:]), dtype=h.data.dtype)
        edges = np.searchsorted(local, np.arange(0, self.file_rows[k] + step, step))
        for a, b in zip(edges[:-1], edges[1:]):
            if b > a:
                part = local[a:b]
                lo, hi = int(part[0]), int(part[-1]) + 1
                view = h.mapped.rows(lo, hi) if h.mapped is not None and hi - lo == len(part) else None
                if view is not None:  # every row of a mapped slab: one reorder
                    self._to_nchw(view, buf[:len(part)])
                    del view
                else:
                    self._read_file(k, part, buf[:len(part)], slab)
                yield part, buf[:len(part)]

    # -- scalars --------------------------------------------------------------------------------------------
    def scalar_columns(self) -> list[str]:
        return list(self._scalars)

    def not_scalar(self, name: str) -> str | None:
        return self._not_scalar.get(name) if name not in self._scalars else None

    def column(self, name: str) -> np.ndarray:
        parts = []
        for k, path in enumerate(self.paths):
            with _open_h5(path) as f:
                if name not in f:
                    raise DataError(f"{path}: no data set {name!r} (has: {', '.join(f.keys())})")
                d = f[name]
                if d.shape != (self.file_rows[k],):
                    raise DataError(f"{path}: {name} has shape {d.shape}, expected ({self.file_rows[k]},) "
                                    f"like {self.input_key}")
                try:
                    parts.append(np.asarray(d[...], dtype=np.float64))
                except (OSError, ValueError) as exc:
                    raise DataError(f"{path}: {name}: cannot read ({str(exc).splitlines()[0]})") from None
        return np.concatenate(parts)

    def describe(self) -> list[dict[str, Any]]:
        out = []
        for info in self._info:
            d = dict(info)
            if d["chunks"] and d["compression"]:
                chunk_mb = int(np.prod(d["chunks"])) * d["row_bytes"] / int(np.prod(d["shape"][1:])) / 2**20
                d["note"] = (f"compressed chunks of {d['chunks'][0]} rows ({chunk_mb:.1f} MiB): random per-sample "
                             "reads decompress whole chunks; convert to a cache (hpcvit data convert) for training")
            out.append(d)
        return out
