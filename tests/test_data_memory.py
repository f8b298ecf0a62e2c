"""Conversion and the channel-statistics pass hold blocks, not the data set: a real ``hpcvit data convert``
and a real statistics pass over 4x the jets reach the same peak memory (the kernel's high-water mark of
the process, ``ru_maxrss`` from ``wait4``: no sampling, no timing); the block writer and reader of the
cache give numpy's bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from hpcvit.data.memmap import MemmapStore, RowWriter, create_npy
from hpcvit.data.parquet import jets_table

SMALL, LARGE = 400, 1600
"""Jets of 3 x 125 x 125: the small set already spans every block (decode 256, statistics 89, preprocessing
349 images); the large one adds 225 MiB to each cache file."""
MARGIN_MIB = 100
"""Allowed growth of the peak: writing the caches through a memory map, or a statistics batch growing with
the training split, adds several hundred MiB; the footer of 1,200 more row groups a few tens."""

STATS = """
import sys
from hpcvit.data import build_datasets
from hpcvit.config import DataSpec
build_datasets(DataSpec(format="parquet", paths=[sys.argv[1]]), sys.argv[2], check_targets=False)
"""


def write_jets(path: Path, n: int, chunk: int = 100) -> Path:
    """``n`` sparse jets in the published layout (one row group each), ``chunk`` at a time."""
    rng = np.random.default_rng(n)
    writer = None
    try:
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            x = rng.exponential(1.0, (m, 3, 125, 125)) * (rng.random((m, 3, 125, 125)) < 0.05)
            table = jets_table(x, {"y": (np.arange(i, i + m) % 2).astype(np.float64)})
            writer = writer or pq.ParquetWriter(path, table.schema, compression="snappy")
            writer.write_table(table, row_group_size=1)
    finally:
        if writer is not None:
            writer.close()
    return path


def peak_mib(args: list[str], cwd: Path) -> float:
    """Run ``python args...``; the peak resident memory of the process (its ``ru_maxrss``), in MiB."""
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    log = cwd / "stderr.txt"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}: {log.read_text()[-2000:]}"
    return usage.ru_maxrss / 1024


def test_convert_and_statistics_peak_does_not_grow_with_the_data_set(tmp_path):
    peaks: dict[str, list[float]] = {"convert": [], "stats": []}
    for n in (SMALL, LARGE):
        src = write_jets(tmp_path / f"jets_{n}.parquet", n)
        peaks["convert"].append(peak_mib(["-m", "hpcvit.cli", "data", "convert", str(src), "--cache-dir",
                                          str(tmp_path / f"cache_{n}"), "--workers", "1"], tmp_path))
        peaks["stats"].append(peak_mib(["-c", STATS, str(src), str(tmp_path)], tmp_path))
    for phase, (small, large) in peaks.items():
        assert large - small < MARGIN_MIB, (f"{phase}: peak {small:.0f} MiB with {SMALL} jets, {large:.0f} MiB "
                                            f"with {LARGE}")


def test_row_writer_and_bulk_reads_match_numpy(tmp_path):
    x = np.random.default_rng(0).normal(size=(11, 2, 5, 7)).astype(np.float32)
    np.save(tmp_path / "want.npy", x)
    offset = create_npy(tmp_path / "x.npy", x.shape)
    with RowWriter(tmp_path / "x.npy", offset, x.shape[1:]) as out:
        for a in (8, 0, 3):  # blocks in any order
            out.write(a, x[a:a + {0: 3, 3: 5, 8: 3}[a]])
    assert (tmp_path / "x.npy").read_bytes() == (tmp_path / "want.npy").read_bytes()
    store = MemmapStore(tmp_path / "x.npy")
    rows = np.array([0, 1, 2, 4, 5, 9, 10])
    got = [(r.copy(), b.copy()) for r, b in store.iter_read(rows, block=3)]
    assert [len(r) for r, _ in got] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([r for r, _ in got]), rows)
    np.testing.assert_array_equal(np.concatenate([b for _, b in got]), x[rows])
