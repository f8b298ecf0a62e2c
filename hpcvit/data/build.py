"""What training gets from the data layer: inputs checked, samples selected and split, statistics computed.

``build_datasets(spec, sweep_dir, stats)`` is what training calls. It reads the files lazily (HDF5 by chunks,
Parquet by row groups) or, with ``data.cache_dir``, through the float32 memory-mapped cache (built once, under
a lock, if missing). Samples passing ``data.cuts`` are split deterministically by ``split_seed``; channel
statistics come from the training split only (or from ``stats``, the dict saved with a checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit.data.dataset import ImageDataset, SourceRows
from hpcvit.data.formats import open_store
from hpcvit.data.preprocess import (
    ChannelStats,
    ScalarScale,
    channel_stats,
    check_finite,
    check_stats,
    stats_block,
)
from hpcvit.data.selection import cut_columns, missing_columns, select
from hpcvit.data.store import DataError, not_found
from hpcvit.data.targets import TargetRule, Values
from hpcvit.config import DataSpec, data_fields

log = logging.getLogger(__name__)


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
    scalar_scale: ScalarScale | None = None
    """``data.scalar_inputs``: the training split's mean and std of each column."""
    n_scalars: int = 0


def synthetic_path(spec: DataSpec, sweep_dir: Path) -> Path:
    s = spec.synthetic
    return sweep_dir / "data" / f"synthetic_n{s.n_samples}_s{s.image_size}_c{s.channels}_seed{s.seed}.h5"


def with_absolute_paths(spec: DataSpec) -> DataSpec:
    """The same data spec with ``paths`` and ``cache_dir`` made absolute against the current directory."""
    update: dict[str, Any] = {"paths": [str(Path(p).expanduser().resolve()) for p in spec.paths]}
    if spec.cache_dir:
        update["cache_dir"] = str(Path(spec.cache_dir).expanduser().resolve())
    return spec.model_copy(update=update)


def resolve_paths(spec: DataSpec, sweep_dir: Path) -> list[Path]:
    """Input files of the data set; relative paths are taken from the current directory at submit time."""
    if spec.format == "synthetic":
        return [synthetic_path(spec, sweep_dir)]
    return [Path(p).expanduser().resolve() for p in spec.paths]


def check(spec: DataSpec, targets: TargetRule | None = None) -> dict[str, Any]:
    """What can be known about the inputs without reading their images: the files exist and are regular files
    in the format, the image column and channels are there, the target and cut columns too; with ``targets``
    (the objective's rule), the samples the cuts select, their split and their targets as training will judge
    them. Raises a :class:`DataError` naming the file and the spec field; returns what was checked."""
    if spec.format == "synthetic":
        s = spec.synthetic
        return {"format": "synthetic", "files": 0, "rows": s.n_samples, "shape": [s.channels, s.image_size,
                                                                                  s.image_size]}
    paths = resolve_paths(spec, Path.cwd())
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise not_found(missing)
    odd = [str(p) for p in paths if not p.is_file()]
    if odd:
        raise DataError(f"not regular file(s): {', '.join(odd)}", field="data.paths")
    store = open_store(spec, paths)  # reads only metadata (and one row group per Parquet file)
    try:
        problem = (missing_columns(store, [spec.target_key], "data.target_key")
                   or missing_columns(store, cut_columns(spec), "data.cuts")
                   or missing_columns(store, list(spec.scalar_inputs), "data.scalar_inputs"))
        if problem is not None:
            raise problem
        facts = {"format": spec.format, "files": len(paths), "rows": int(store.n), "shape": list(store.shape),
                 "columns": [spec.target_key, *cut_columns(spec), *spec.scalar_inputs]}
        _sample_images(store, spec)
        if targets is not None:
            facts.update(_check_samples(store, spec, targets, paths[0]))
        return facts
    finally:
        store.close()


SAMPLED_IMAGES = 32
"""Images read at validation, spread over the rows: a ragged or non-finite image among them is found early."""


def _sample_images(store: Any, spec: DataSpec) -> None:
    """Decode a few images spread over every file (what the metadata cannot tell: ragged rows, NaN)."""
    if store.n == 0:
        return
    rows = np.unique(np.linspace(0, store.n - 1, min(store.n, SAMPLED_IMAGES)).astype(np.int64))
    for got, x in store.iter_read(rows, block=len(rows)):
        check_finite(x, got, store.where, spec.nonfinite)


def _check_samples(store: Any, spec: DataSpec, rule: TargetRule, first: Path) -> dict[str, Any]:
    """The selection, split and targets training will make, from the scalar columns alone (no image is read):
    the objective's rule on the target column, its check of the splits, finite scalar inputs."""
    rows, columns = select(store, spec, [spec.target_key, *spec.scalar_inputs])
    values = rule.make(columns[spec.target_key], spec, lambda i: store.where(int(rows[i])))
    train_pos, val_pos, test_pos = split_indices(len(rows), spec)
    _check_split_sizes(len(rows), len(train_pos), len(val_pos), spec, first)
    summary = rule.describe(values, {"train": train_pos, "val": val_pos, "test": test_pos})
    rule.check(summary, spec, first)
    _scalar_inputs(spec, columns, train_pos, lambda i: store.where(int(rows[i])), None)
    return {"selected": len(rows), "splits": [len(train_pos), len(val_pos), len(test_pos)]}


def _check_split_sizes(n: int, n_train: int, n_val: int, spec: DataSpec, first: Path) -> None:
    field = "data.cuts" if spec.cuts and n == 0 else "data.max_samples" if spec.max_samples else "data.paths"
    if n_train == 0:
        raise DataError(f"{first}: no training samples ({n} selected, val_fraction {spec.val_fraction}, "
                        f"test_fraction {spec.test_fraction})", field=field)
    if n_val == 0:
        raise DataError(f"{first}: no validation samples ({n} selected x val_fraction {spec.val_fraction} rounds "
                        "to 0)", field=field if n < 10 else "data.val_fraction")


def prepare(spec: DataSpec, sweep_dir: Path) -> list[Path]:
    """:func:`check` the inputs (writing the synthetic set if asked for) before anything is submitted."""
    paths = resolve_paths(spec, sweep_dir)
    if spec.format == "synthetic":
        from hpcvit.data.synthetic import write_synthetic_hdf5

        if not paths[0].exists():
            s = spec.synthetic
            write_synthetic_hdf5(paths[0], s.n_samples, s.image_size, s.channels, s.seed)
        return paths
    check(spec)
    return paths


def fingerprint(paths: list[Path], spec: DataSpec) -> str:
    """Identity of the inputs (name, size, mtime) and of everything in the spec that changes the samples."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)};".encode())
    h.update(json.dumps(data_fields(spec, "selection", "samples"), sort_keys=True).encode())
    return h.hexdigest()[:16]


def split_indices(n: int, spec: DataSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic train/val/test index split by ``split_seed``."""
    order = np.random.default_rng(spec.split_seed).permutation(n)
    n_val, n_test = int(round(n * spec.val_fraction)), int(round(n * spec.test_fraction))
    return np.sort(order[n_val + n_test:]), np.sort(order[:n_val]), np.sort(order[n_val:n_val + n_test])


def _train_stats(store, rows: np.ndarray, spec: DataSpec) -> ChannelStats:
    """Channel statistics over the training rows, read in bulk in blocks of one slice of
    :func:`channel_stats` (at most ``stats_samples``), each block checked under ``data.nonfinite``."""
    block = max(1, min(spec.preprocessing.stats_samples, stats_block(store.shape)))

    def batches():
        for got, x in store.iter_read(np.sort(rows), block=block):
            check_finite(x, got, store.where, spec.nonfinite)
            yield x

    return check_stats(channel_stats(batches(), spec.preprocessing), str(store.paths[0]))


def _scalar_inputs(spec: DataSpec, columns: dict[str, np.ndarray], train_pos: np.ndarray,
                   where: Callable[[int], str], saved: dict[str, Any] | None
                   ) -> tuple[np.ndarray | None, ScalarScale | None]:
    """The standardised ``data.scalar_inputs`` of every selected sample, and their training statistics."""
    if not spec.scalar_inputs:
        return None, None
    values = np.stack([np.asarray(columns[c], dtype=np.float64) for c in spec.scalar_inputs], axis=1)
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if len(bad):
        raise DataError(f"{where(int(bad[0]))}: scalar input is not finite ({len(bad)} samples)",
                        field="data.scalar_inputs")
    scale = ScalarScale.from_dict(saved) if saved else ScalarScale.of(values[train_pos])
    return scale.apply(values), scale


def build_datasets(spec: DataSpec, sweep_dir: Path, stats: dict[str, list[float]] | None = None, *,
                   targets: TargetRule | None = None, scalar_scale: dict[str, Any] | None = None,
                   progress: bool = False, check_targets: bool = True) -> DataBundle:
    """Select, split and (lazily) preprocess the data set; ``stats`` and ``scalar_scale`` (from a checkpoint)
    replace computing them.

    Returns map-style data sets of ``(float32 C x H x W image, float32 scalar target)`` that open their files
    lazily in each process (DataLoader workers, DDP ranks with a DistributedSampler). ``targets`` is the
    objective's rule for the target column (default: plain finite values); ``check_targets=False`` skips its
    check of the splits (a conversion reports them, training refuses what the objective cannot train on).
    ``progress`` shows progress bars while a cache is built (the CLI's ``hpcvit data convert``).
    """
    rule: TargetRule = targets if targets is not None else Values()
    paths = resolve_paths(spec, sweep_dir)
    pre = spec.preprocessing
    info: dict[str, Any] = {"format": spec.format, "cuts": dict(spec.cuts)}
    if spec.cache_dir is not None:
        from hpcvit.data.cache import ensure_preprocessed, ensure_raw, ensure_stats

        raw = ensure_raw(spec, paths, progress)
        for name, field_name in [(spec.target_key, "data.target_key"),
                                 *((c, "data.scalar_inputs") for c in spec.scalar_inputs)]:
            if name not in raw.columns:
                raise DataError(f"{paths[0]}: no scalar column {name!r} "
                                f"(has: {', '.join(k for k in raw.columns if not k.startswith('__'))})",
                                field=field_name)
        columns = raw.columns
        source_rows = raw.columns["__source_row__"]
        sources = raw.meta["sources"]
        starts = np.concatenate([[0], np.cumsum(raw.meta["rows_per_file"])])

        source = SourceRows([s["path"] for s in sources], starts, source_rows, raw.columns_file)
        where = source.describe  # picklable: it goes to loader workers with the data sets
        values = rule.make(raw.columns[spec.target_key], spec, where)
        n, n_source = raw.n, int(raw.meta["n_source"])
        train_pos, val_pos, test_pos = split_indices(n, spec)
        if stats is not None:
            channel, info["stats_from"] = ChannelStats.from_dict(stats), "checkpoint"
        elif pre.zscore:
            channel = check_stats(ensure_stats(raw, pre, train_pos, spec.nonfinite, where), str(raw.dir))
            info["stats_from"] = "training split"
        else:
            channel = None
        if spec.cache_preprocessed:
            from hpcvit.data.memmap import MemmapStore

            pre_path = ensure_preprocessed(raw, pre, channel, progress, spec.nonfinite, where)
            store, transform = MemmapStore(pre_path), None
            info["cache"] = {"raw": str(raw.dir), "preprocessed": str(pre_path.parent)}
        else:
            store, transform = raw.store(), pre
            info["cache"] = {"raw": str(raw.dir), "preprocessed": None}
        rows = np.arange(n, dtype=np.int64)
        shape = store.shape
        info["files"] = [{"path": s["path"], "rows": int(r), "selected": int(c)}
                         for s, r, c in zip(sources, raw.meta["file_rows"], raw.meta["rows_per_file"])]
    else:
        store = open_store(spec, paths)
        rows, columns = select(store, spec, [spec.target_key, *spec.scalar_inputs])
        values = rule.make(columns[spec.target_key], spec, lambda i: store.where(int(rows[i])))
        where = lambda i: store.where(int(rows[i]))  # noqa: E731 - a row's file, for messages
        n, n_source = len(rows), store.n
        train_pos, val_pos, test_pos = split_indices(n, spec)
        if stats is not None:
            channel, info["stats_from"] = ChannelStats.from_dict(stats), "checkpoint"
        elif pre.zscore:
            channel, info["stats_from"] = _train_stats(store, rows[train_pos], spec), "training split"
        else:
            channel = None
        transform, shape = pre, store.shape
        source = SourceRows([str(p) for p in store.paths], store.file_start)
        file_of = store.file_index(rows)
        info["files"] = [{"path": str(p), "rows": int(r), "selected": int(np.sum(file_of == k))}
                         for k, (p, r) in enumerate(zip(store.paths, store.file_rows))]
        info["cache"] = None
        store.close()  # reopened lazily by whichever process reads
    _check_split_sizes(n, len(train_pos), len(val_pos), spec, paths[0])

    row_where = where if spec.cache_dir is not None else None
    scalars, scalar_scale = _scalar_inputs(spec, columns, train_pos, where, scalar_scale)
    if scalar_scale is not None:
        info["scalar_scale"] = {"columns": list(spec.scalar_inputs), **scalar_scale.to_dict()}

    def part(pos: np.ndarray) -> ImageDataset:
        return ImageDataset(store, rows[pos], values[pos], transform, channel, spec.nonfinite, row_where,
                            scalars[pos] if scalars is not None else None, source)

    info.update({
        "n_source": int(n_source), "n_selected": int(n), "shape": list(shape),
        "n_train": len(train_pos), "n_val": len(val_pos), "n_test": len(test_pos),
        "fingerprint": fingerprint(paths, spec),
        rule.info_key: rule.describe(values, {"train": train_pos, "val": val_pos, "test": test_pos}),
    })
    if check_targets:
        rule.check(info[rule.info_key], spec, paths[0])
    return DataBundle(
        train=part(train_pos), val=part(val_pos), test=part(test_pos) if len(test_pos) else None,
        in_chans=int(shape[0]), img_size=int(shape[1]), stats=channel, info=info,
        scalar_scale=scalar_scale, n_scalars=len(spec.scalar_inputs),
    )
