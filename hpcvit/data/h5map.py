"""Rows of an HDF5 data set viewed in place through a memory map of the file, where HDF5 stores them as is.

An uncompressed, unfiltered data set in native byte order lies in the file as one contiguous block, or as
chunks that each hold whole rows. Its rows can then be viewed where they lie, and reordering them (channels
last -> channels first) is the only copy, where ``read_direct`` into a buffer followed by the reorder makes
two passes over the bytes. Anything else (filters, chunks that split rows, external or virtual storage, a
user block, a driver other than the default, storage not yet allocated) gives None: the caller reads
through h5py.
"""

from __future__ import annotations

import mmap
import os
import sys

import h5py
import numpy as np

# map a slab's pages in one call rather than a fault per few pages (Linux >= 5.14; 22 in its headers)
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22) if sys.platform == "linux" else None


class MappedRows:
    """Read-only views of rows ``lo:hi`` of one data set (contiguous, or inside one chunk of whole rows)."""

    def __init__(self, mm: mmap.mmap, d: h5py.Dataset, size: int):
        self._mm = mm
        self._size = size
        self._dtype = d.dtype
        self._row_shape = tuple(d.shape[1:])
        self._row_items = int(np.prod(self._row_shape))
        self._row_bytes = self._row_items * d.dtype.itemsize
        self._dsid = d.id
        self._chunk_rows = int(d.chunks[0]) if d.chunks else None
        self._offset = None if d.chunks else d.id.get_offset()
        self._populate = _MADV_POPULATE_READ is not None
        self._chunks: dict[int, int | None] = {}  # first row of a chunk -> its byte offset (None: not usable)

    @classmethod
    def open(cls, f: h5py.File, d: h5py.Dataset) -> MappedRows | None:
        """A map of ``d``'s rows, or None when they are not stored as is (see the module's text)."""
        try:
            if (f.driver != "sec2" or f.userblock_size or d.is_virtual or d.external or d.ndim < 2
                    or not d.dtype.isnative or d.dtype.kind not in "fiu" or d.size == 0
                    or d.id.get_create_plist().get_nfilters()
                    or (d.chunks and tuple(d.chunks[1:]) != tuple(d.shape[1:]))):
                return None
            fd = os.open(f.filename, os.O_RDONLY)
            try:
                size = os.fstat(fd).st_size
                mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
        except (OSError, ValueError, RuntimeError, AttributeError):
            return None
        rows = cls(mm, d, size)
        first = rows.rows(0, 1)
        if first is None or first.tobytes() != d[0:1].tobytes():  # not where HDF5 says: read through h5py
            rows.close()
            return None
        return rows

    def _chunk_offset(self, c0: int) -> int | None:
        if c0 not in self._chunks:
            off = None
            try:
                info = self._dsid.get_chunk_info_by_coord((c0,) + (0,) * len(self._row_shape))
                if (info.byte_offset is not None and info.size == self._chunk_rows * self._row_bytes
                        and info.byte_offset + info.size <= self._size):
                    off = int(info.byte_offset)
            except (OSError, ValueError, RuntimeError):
                pass
            self._chunks[c0] = off
        return self._chunks[c0]

    def rows(self, lo: int, hi: int) -> np.ndarray | None:
        """Rows ``lo:hi`` viewed in the map (valid until ``close``), or None where they cannot be."""
        if self._chunk_rows is None:
            if self._offset is None or self._offset + hi * self._row_bytes > self._size:
                return None
            start = self._offset + lo * self._row_bytes
        else:
            c0 = lo - lo % self._chunk_rows
            if hi > c0 + self._chunk_rows:
                return None
            off = self._chunk_offset(c0)
            if off is None:
                return None
            start = off + (lo - c0) * self._row_bytes
        if self._populate and hi - lo > 1:
            first = start - start % mmap.PAGESIZE
            try:
                self._mm.madvise(_MADV_POPULATE_READ, first, start + (hi - lo) * self._row_bytes - first)
            except OSError:  # an older kernel: the pages fault in as they are read
                self._populate = False
        flat = np.frombuffer(self._mm, self._dtype, (hi - lo) * self._row_items, start)
        return flat.reshape(hi - lo, *self._row_shape)

    def close(self) -> None:
        try:
            self._mm.close()
        except BufferError:  # a view is still alive: the map goes when it does
            pass


class H5Handle:
    """An open file, its image data set and (where possible) the map of its rows."""

    def __init__(self, f: h5py.File, d: h5py.Dataset, mapped: MappedRows | None):
        self.file, self.data, self.mapped = f, d, mapped

    def close(self) -> None:
        if self.mapped is not None:
            self.mapped.close()
        self.file.close()
