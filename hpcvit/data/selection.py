"""Which samples a data spec selects (cuts, ``max_samples``): one implementation that the direct readers and
the cache both use."""

from __future__ import annotations

import re
import numpy as np

from hpcvit.data.store import DataError, Store
from hpcvit.config import DataSpec

_ABS = re.compile(r"^abs\(\s*([^()\s]+)\s*\)$")


def parse_cut(key: str) -> tuple[str, bool]:
    """``abs(col)`` -> (col, True); ``col`` -> (col, False)."""
    m = _ABS.match(key)
    return (m.group(1), True) if m else (key, False)


def cut_columns(spec: DataSpec) -> list[str]:
    """The scalar columns the cuts read."""
    return sorted({parse_cut(k)[0] for k in spec.cuts})


def selection_mask(columns: dict[str, np.ndarray], spec: DataSpec, n: int) -> np.ndarray:
    """Rows passing ``spec.cuts`` (``min <= v < max``; NaN fails every cut)."""
    mask = np.ones(n, dtype=bool)
    for key, (lo, hi) in spec.cuts.items():
        name, is_abs = parse_cut(key)
        v = columns[name]
        if is_abs:
            v = np.abs(v)
        with np.errstate(invalid="ignore"):
            if lo is not None:
                mask &= v >= lo
            if hi is not None:
                mask &= v < hi
    return mask


def missing_columns(store: Store, names: list[str], field: str | None = None) -> DataError | None:
    """An error naming the first of ``names`` that ``store`` lacks (and the spec ``field`` that asks for it)."""
    have = store.scalar_columns()
    for name in names:
        why = store.not_scalar(name) if name not in have else None
        if why:
            return DataError(why, field=field)
        if name not in have:
            return DataError(f"{store.paths[0]}: no scalar column {name!r} (has: {', '.join(have) or 'none'})",
                             field=field)
    return None


def read_columns(store: Store, names: list[str]) -> dict[str, np.ndarray]:
    """The scalar columns ``names`` over all rows of ``store``."""
    problem = missing_columns(store, names)
    if problem is not None:
        raise problem
    return {name: store.column(name) for name in names}


def spread(rows: np.ndarray, file_of: np.ndarray, n_files: int, n: int) -> np.ndarray:
    """``n`` of the sorted ``rows``: from each file in proportion to its rows (largest remainders rounded up, the
    earlier file first on a tie), the first of each file. One class per file (the electron/photon layout)
    keeps both classes."""
    counts = np.bincount(file_of, minlength=n_files)
    exact = counts * (n / len(rows))
    quota = np.floor(exact).astype(np.int64)
    for k in np.argsort(-(exact - quota), kind="stable")[:n - int(quota.sum())]:
        quota[k] += 1
    keep = np.concatenate([np.flatnonzero(file_of == k)[:quota[k]] for k in range(n_files)])
    return rows[np.sort(keep)]


def select(store: Store, spec: DataSpec, columns: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Global rows passing the cuts (the first ``max_samples`` of them) and ``columns`` of those rows.

    ``columns`` must include the cut columns; an empty selection is a :class:`DataError`.
    """
    cols = read_columns(store, sorted({*columns, *cut_columns(spec)}))
    rows = np.flatnonzero(selection_mask(cols, spec, store.n)).astype(np.int64)
    if spec.max_samples is not None and len(rows) > spec.max_samples:
        rows = spread(rows, store.file_index(rows), len(store.paths), spec.max_samples)
    if store.n == 0:
        files = "the file holds" if len(store.paths) == 1 else f"the {len(store.paths)} files hold"
        raise DataError(f"{store.paths[0]}: {files} no rows", field="data.paths")
    if len(rows) == 0:
        raise DataError(f"{store.paths[0]}: no samples pass the cuts {spec.cuts} (of {store.n})", field="data.cuts")
    return rows, {k: v[rows] for k, v in cols.items() if k in columns}
