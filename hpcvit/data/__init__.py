"""Data sets: readers for the ML4SCI/CMS layouts, the GSoC preprocessing, and the train/val/test split."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit.data.preprocess import ChannelStats, apply, channel_stats
from hpcvit.spec import DataSpec


@dataclass
class DataBundle:
    """What training needs from the data layer."""

    train: Any
    val: Any
    test: Any | None
    in_chans: int
    img_size: int
    stats: ChannelStats | None
    info: dict[str, Any] = field(default_factory=dict)


def synthetic_path(spec: DataSpec, sweep_dir: Path) -> Path:
    s = spec.synthetic
    return sweep_dir / "data" / f"synthetic_n{s.n_samples}_s{s.image_size}_c{s.channels}_seed{s.seed}.h5"


def resolve_paths(spec: DataSpec, sweep_dir: Path) -> list[Path]:
    """Input files of the data set; relative paths are taken from the current directory at submit time."""
    if spec.format == "synthetic":
        return [synthetic_path(spec, sweep_dir)]
    return [Path(p).expanduser().resolve() for p in spec.paths]


def prepare(spec: DataSpec, sweep_dir: Path) -> list[Path]:
    """Check the inputs exist (writing the synthetic set if asked for) before anything is submitted."""
    paths = resolve_paths(spec, sweep_dir)
    if spec.format == "synthetic":
        from hpcvit.data.synthetic import write_synthetic_hdf5

        if not paths[0].exists():
            s = spec.synthetic
            write_synthetic_hdf5(paths[0], s.n_samples, s.image_size, s.channels, s.seed)
        return paths
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"data.paths: file(s) not found: {', '.join(missing)}")
    return paths


def fingerprint(paths: list[Path], spec: DataSpec) -> str:
    """Identity of the inputs (name, size, mtime) and of everything in the spec that changes the samples."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)};".encode())
    h.update(json.dumps(spec.model_dump(exclude={"num_workers", "paths"}), sort_keys=True).encode())
    return h.hexdigest()[:16]


def split_indices(n: int, spec: DataSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic train/val/test index split by ``split_seed``."""
    order = np.random.default_rng(spec.split_seed).permutation(n)
    n_val, n_test = int(round(n * spec.val_fraction)), int(round(n * spec.test_fraction))
    return np.sort(order[n_val + n_test:]), np.sort(order[:n_val]), np.sort(order[n_val:n_val + n_test])


class ArrayDataset:
    """Map-style data set over preprocessed NCHW arrays; returns (image, target) as torch tensors."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        import torch

        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def build_datasets(spec: DataSpec, sweep_dir: Path, stats: dict[str, list[float]] | None = None) -> DataBundle:
    """Read, split and preprocess the data set; ``stats`` (from a checkpoint) replaces recomputing them."""
    from hpcvit.data.readers import read_arrays

    paths = resolve_paths(spec, sweep_dir)
    x, y = read_arrays(paths, spec)
    train_idx, val_idx, test_idx = split_indices(len(y), spec)
    pre = spec.preprocessing
    if stats is not None:
        channel = ChannelStats.from_dict(stats)
    elif pre.zscore:
        train_x = x[train_idx]
        channel = channel_stats((train_x[i:i + pre.stats_samples] for i in range(0, len(train_x), pre.stats_samples)), pre)
    else:
        channel = None
    x = apply(x, pre, channel)
    info = {
        "n_train": len(train_idx), "n_val": len(val_idx), "n_test": len(test_idx),
        "fingerprint": fingerprint(paths, spec),
    }
    if spec.task == "binary":
        info["positive_fraction_train"] = float(y[train_idx].mean())
    return DataBundle(
        train=ArrayDataset(x[train_idx], y[train_idx]),
        val=ArrayDataset(x[val_idx], y[val_idx]),
        test=ArrayDataset(x[test_idx], y[test_idx]) if len(test_idx) else None,
        in_chans=x.shape[1], img_size=x.shape[2], stats=channel, info=info,
    )
