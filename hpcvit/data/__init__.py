"""Data sets: readers for the ML4SCI/CMS layouts, the GSoC preprocessing, the cache, and the train/val/test split.

``build_datasets`` (:mod:`hpcvit.data.build`) is what training calls; ``prepare`` what submission calls. The
modules, each with one job: ``store`` (the reader interface), ``hdf5``/``parquet``/``memmap`` (one format
each), ``formats`` (detect and open), ``selection`` (cuts and targets), ``preprocess`` (GSoC steps),
``dataset`` (what the DataLoader iterates), ``batches`` (the training loader: whole batches through a
ring of slots), ``cache`` (the memory-mapped training cache), ``synthetic`` and
``generate`` (data made here), ``commands`` (``hpcvit data``).
"""

from hpcvit.data.build import (
    DataBundle,
    build_datasets,
    check,
    fingerprint,
    prepare,
    resolve_paths,
    split_indices,
    synthetic_path,
    with_absolute_paths,
)
from hpcvit.data.dataset import ArrayDataset, ImageDataset
from hpcvit.data.preprocess import ChannelStats
from hpcvit.data.store import DataError

__all__ = [
    "ArrayDataset", "ChannelStats", "DataBundle", "DataError", "ImageDataset", "build_datasets", "check", "fingerprint",
    "prepare", "resolve_paths", "split_indices", "synthetic_path", "with_absolute_paths",
]
