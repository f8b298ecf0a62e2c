"""A corpus of bad inputs other than specs: data files, run folders, checkpoints.

Data cases: each writes its file(s) into a folder and gives the ``data:`` section that reads them, the spec
field the error must point at and words its one line must hold (``hpcvit validate`` refuses each with exit 2).
Run-folder cases: each damages a copy of a finished sweep folder; every command that reads it (``status``,
``compare``, ``sync``, ``resume``) then answers without a traceback, and where it refuses, with one line that
names the damaged file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class DataCase:
    id: str
    make: Callable[[Path], str]
    """Writes the files into the folder; returns the ``data:`` section (YAML flow mapping)."""
    field: str
    words: str


DATA_CASES: list[DataCase] = []


def _h5(path: Path, **datasets: object) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            if value is GROUP:
                f.create_group(name)
            else:
                f[name] = value


GROUP = object()
RNG = np.random.default_rng(0)
X40 = RNG.random((40, 8, 8, 2), dtype=np.float32)
Y40 = (np.arange(40) % 2).astype(np.float64)


def _hdf5_case(case_id: str, field: str, words: str, extra: str = "", **datasets: object) -> None:
    def make(folder: Path) -> str:
        _h5(folder / "d.h5", **datasets)
        split = "" if "val_fraction" in extra else ", val_fraction: 0.25"
        return f"{{format: hdf5, paths: [d.h5]{split}{extra}}}"

    DATA_CASES.append(DataCase(f"hdf5: {case_id}", make, field, words))


# -- rows and splits ------------------------------------------------------------------------------------------
_hdf5_case("no rows", "data.paths", "holds no rows", X=X40[:0], y=Y40[:0])
_hdf5_case("one row", "data.paths", "no validation samples", X=X40[:1], y=Y40[:1])
_hdf5_case("one class", "data.paths", "0 negative samples", X=X40, y=np.ones(40))
_hdf5_case("max_samples inside one class", "data.max_samples", "fewer negative than data.min_per_class",
           ", max_samples: 10", X=X40, y=np.where(np.arange(40) < 20, 1.0, 0.0))
_hdf5_case("cut removes everything", "data.cuts", "no samples pass the cuts", ", cuts: {pt: [1000, null]}",
           X=X40, y=Y40, pt=np.full(40, 10.0))
_hdf5_case("val_fraction rounds to nothing", "data.val_fraction", "no validation samples",
           ", val_fraction: 0.01", X=X40, y=Y40)
# -- target values --------------------------------------------------------------------------------------------
_hdf5_case("labels 0 and 2", "data.target_key", "binary target 'y' is 2, not 0/1", X=X40, y=Y40 * 2)
_hdf5_case("labels 0.5", "data.target_key", "is 0.5, not 0/1", X=X40, y=np.full(40, 0.5))
_hdf5_case("NaN label", "data.target_key", "target 'y' is nan", X=X40, y=np.where(np.arange(40) == 7, np.nan, Y40))
_hdf5_case("positive_value no sample has", "data.positive_value", "no selected sample has y = 7",
           ", positive_value: 7", X=X40, y=Y40)
_hdf5_case("NaN regression target", "data.target_key", "target 'y' is nan", ", task: regression",
           X=X40, y=np.where(np.arange(40) == 3, np.nan, 100.0 + np.arange(40)))
_hdf5_case("infinite regression target", "data.target_key", "target 'y' is inf", ", task: regression",
           X=X40, y=np.where(np.arange(40) == 3, np.inf, 100.0 + np.arange(40)))
# -- the target column's form ---------------------------------------------------------------------------------
_hdf5_case("y shorter than X", "data.target_key", "y has 30 values but X has 40 images", X=X40, y=Y40[:30])
_hdf5_case("one-hot y", "data.target_key", "one number per image is needed (one-hot", X=X40,
           y=np.eye(2)[np.arange(40) % 2])
_hdf5_case("byte-string y", "data.target_key", "holds |S1 values, not numbers", X=X40,
           y=np.array([b"a", b"b"] * 20))
_hdf5_case("y a group", "data.target_key", "y is a group, not a data set", X=X40, y=GROUP)
_hdf5_case("no y", "data.target_key", "no scalar column 'y'", X=X40, label=Y40)
# -- the images -----------------------------------------------------------------------------------------------
_hdf5_case("X a group", "data.input_key", "'X' is a group, not a data set of images", X=GROUP, y=Y40)
_hdf5_case("no X", "data.input_key", "no data set 'X'", images=X40, y=Y40)
_hdf5_case("X of strings", "data.paths", "expected numeric", X=np.array([b"x"] * 40), y=Y40)
_hdf5_case("X one value per row", "data.paths", "expected numeric", X=np.ones(40), y=Y40)
_hdf5_case("NaN pixels", "data.nonfinite", "non-finite pixel(s)", X=np.where(RNG.random(X40.shape) < 0.01, np.nan, X40).astype(np.float32),
           y=Y40)
_hdf5_case("images of no pixels", "data.paths", "empty (an axis of size 0)", X=np.ones((40, 0, 0), np.float32), y=Y40)
_hdf5_case("images of five axes", "data.paths", "expected numeric", X=np.ones((40, 2, 2, 2, 2)), y=Y40)
_hdf5_case("height, width and channels all equal", "data.layout", "cannot be told apart",
           X=np.ones((40, 4, 4, 4), np.float32), y=Y40)
_hdf5_case("channel the images lack", "data.channels", "channel", ", channels: [0, 5]", X=X40, y=Y40)
_hdf5_case("scalar input NaN", "data.scalar_inputs", "scalar input is not finite", ", scalar_inputs: [pt]",
           X=X40, y=Y40, pt=np.where(np.arange(40) == 2, np.nan, 50.0))
_hdf5_case("cut column missing", "data.cuts", "no scalar column 'eta'", ", cuts: {eta: [null, 1.4]}", X=X40, y=Y40)


def _raw_case(case_id: str, name: str, content: bytes, field: str, words: str) -> None:
    fmt = "hdf5" if name.endswith(".h5") else "parquet"

    def make(folder: Path) -> str:
        (folder / name).write_bytes(content)
        return f"{{format: {fmt}, paths: [{name}]}}"

    DATA_CASES.append(DataCase(case_id, make, field, words))


_raw_case("hdf5: empty file", "d.h5", b"", "data.paths", "d.h5")
_raw_case("hdf5: text file", "d.h5", b"X,y\n1,0\n", "data.paths", "d.h5")
_raw_case("parquet: empty file", "d.parquet", b"", "data.paths", "d.parquet")
_raw_case("parquet: truncated", "d.parquet", b"PAR1" + bytes(100), "data.paths", "d.parquet")


def _parquet_case(case_id: str, field: str, words: str, build: Callable[[], object], extra: str = "",
                  row_group_size: int = 7) -> None:
    def make(folder: Path) -> str:
        import pyarrow.parquet as pq

        pq.write_table(build(), folder / "d.parquet", row_group_size=row_group_size)
        return f"{{format: parquet, paths: [d.parquet], val_fraction: 0.25{extra}}}"

    DATA_CASES.append(DataCase(f"parquet: {case_id}", make, field, words))


def _jets(y: object, n: int = 40, ragged_row: int | None = None, column: str = "X_jets") -> object:
    import pyarrow as pa

    images = RNG.random((n, 3, 8, 8)).tolist()
    if ragged_row is not None:
        images[ragged_row][1] = images[ragged_row][1][:5]
    return pa.table({column: images, "y": y})


_parquet_case("no rows", "data.paths", "no rows", lambda: _jets(np.zeros(0), n=0))
_parquet_case("one class", "data.paths", "0 negative samples", lambda: _jets(np.ones(40)))
_parquet_case("ragged image row", "data.paths", "row list of length 5, expected 8", lambda: _jets(Y40, ragged_row=9))
_parquet_case("ragged image, one row group", "data.paths", "expected 8", lambda: _jets(Y40, ragged_row=33),
              row_group_size=40)
_parquet_case("list y", "data.target_key", "holds list<element: double>, not one number per row",
              lambda: _jets([[0.0, 1.0]] * 40))
_parquet_case("string y", "data.target_key", "holds string, not numbers", lambda: _jets(["a"] * 40))
_parquet_case("labels 0 and 2", "data.target_key", "not 0/1", lambda: _jets(Y40 * 2))
_parquet_case("no image column", "data.input_key", "no image column 'X' (has: img, y)",
              lambda: _jets(Y40, column="img"))
_parquet_case("NaN label", "data.target_key", "target 'y' is nan", lambda: _jets(np.where(np.arange(40) == 4, np.nan, Y40)))
_parquet_case("cut column missing", "data.cuts", "no scalar column 'pt'", lambda: _jets(Y40), ", cuts: {pt: [20, null]}")
_parquet_case("one row", "data.paths", "no validation samples", lambda: _jets(Y40[:1], n=1))


# -- run folders --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FolderCase:
    id: str
    file: str
    """The damaged file, relative to the sweep folder (what a refusal must name)."""
    content: bytes | None
    """What it is overwritten with (None: removed)."""


FOLDER_CASES = [
    FolderCase("manifest: not JSON", "manifest.json", b'{"n_tasks": '),
    FolderCase("manifest: a list", "manifest.json", b"[1, 2]"),
    FolderCase("manifest: not UTF-8", "manifest.json", b"\xff\xfe\x00{"),
    FolderCase("runs: missing", "runs.jsonl", None),
    FolderCase("runs: a garbled line", "runs.jsonl", b"{not json}\n"),
    FolderCase("runs: not UTF-8", "runs.jsonl", b"\xff\xfe\xfd\n"),
    FolderCase("submissions: garbled middle line", "submissions.jsonl", b'\xff\xfe\n{"jobs": {}, "executor": "local"}\n'),
    FolderCase("submissions: a list per line", "submissions.jsonl", b"[1]\n[2]\n"),
    FolderCase("state: a list", "tasks/00000/state.json", b"[1, 2]"),
    FolderCase("state: not JSON", "tasks/00000/state.json", b"{"),
    FolderCase("state: not UTF-8", "tasks/00000/state.json", b"\xff\xff"),
    FolderCase("progress: a number", "tasks/00000/progress.json", b"42"),
    FolderCase("result: a list", "tasks/00000/result.json", b"[]"),
    FolderCase("run id: bytes", "tasks/00000/mlflow_run_id", b"\xff\xfe\x01"),
    FolderCase("buffer: garbled first line", "tasks/00000/tracking_buffer.jsonl",
               b'\xff\n{"op": "end", "status": "FINISHED"}\n'),
    FolderCase("buffer: unknown call", "tasks/00000/tracking_buffer.jsonl",
               b'{"op": "__class__"}\n{"op": "end", "status": "FINISHED"}\n'),
    FolderCase("buffer: wrong arguments", "tasks/00000/tracking_buffer.jsonl", b'{"op": "end", "bogus": 1}\n'),
]


def manifest_edit(text: str, n_tasks: object) -> str:
    """The manifest with ``n_tasks`` replaced (a hand edit)."""
    import json

    m = json.loads(text)
    m["n_tasks"] = n_tasks
    return json.dumps(m)
