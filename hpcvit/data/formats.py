"""Which reader opens a data set: format detection from magic bytes and the store factory."""

from __future__ import annotations

from pathlib import Path

from hpcvit.data.store import DataError, Store
from hpcvit.config import DataSpec


def detect_format(path: Path) -> str:
    """``parquet`` or ``hdf5`` from the file's magic bytes (falling back to its extension)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror})") from None
    if head[:4] == b"PAR1":
        return "parquet"
    if head == b"\x89HDF\r\n\x1a\n":
        return "hdf5"
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".h5", ".hdf5", ".hdf"):
        return "hdf5"
    raise DataError(f"{path}: neither a Parquet nor an HDF5 file (starts with {head[:4]!r})")


def open_store(spec: DataSpec, paths: list[Path]) -> Store:
    """The reader for ``spec.format`` over ``paths`` (synthetic data sets are HDF5 files)."""
    for p in paths:
        if not Path(p).exists():
            raise DataError(f"{p}: file not found", field="data.paths")
    if spec.format == "parquet":
        from hpcvit.data.parquet import ParquetStore

        return ParquetStore(paths, spec.input_key, spec.channels)
    from hpcvit.data.hdf5 import HDF5Store

    return HDF5Store(paths, spec.input_key, spec.channels, spec.layout, spec.hdf5_chunk_cache_mb)
