"""What the cache key sees: a flipped label, a changed block; and what only ``convert --verify`` sees."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from hpcvit.data import build_datasets
from hpcvit.data.cache import PROBE_BLOCKS, raw_key
from hpcvit.data.commands import main
from hpcvit.config import DataSpec


def _file(path: Path, n: int = 2000) -> Path:
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_dataset("X", data=rng.random((n, 32, 32, 2)).astype(np.float32))  # 16 MB: blocks are sampled
        f.create_dataset("y", data=(np.arange(n) % 2).astype(np.float32))
    return path


def _edit_keeping_size_and_mtime(path: Path, edit) -> None:
    st = path.stat()
    edit(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_a_flipped_label_changes_the_key_and_the_cache_follows(tmp_path: Path) -> None:
    path = _file(tmp_path / "set.h5")
    spec = DataSpec(format="hdf5", paths=[str(path)], cache_dir=str(tmp_path / "cache"), val_fraction=0.25)
    before = raw_key(spec, [path])
    first = build_datasets(spec, tmp_path)

    def flip(p: Path) -> None:
        with h5py.File(p, "r+") as f:
            f["y"][1000] = 1.0 - f["y"][1000]

    _edit_keeping_size_and_mtime(path, flip)
    assert raw_key(spec, [path]) != before
    second = build_datasets(spec, tmp_path)
    where = lambda b: dict(zip(b.train.rows.tolist() + b.val.rows.tolist(),  # noqa: E731
                               b.train.targets.tolist() + b.val.targets.tolist()))
    assert where(first)[1000] != where(second)[1000], "the flipped label reached training"


def test_an_image_byte_outside_the_sampled_blocks_is_found_by_verify(tmp_path: Path, capsys) -> None:
    path = _file(tmp_path / "set.h5")
    cache = tmp_path / "cache"
    spec = DataSpec(format="hdf5", paths=[str(path)], cache_dir=str(cache), cache_preprocessed=False)
    before = raw_key(spec, [path])
    build_datasets(spec, tmp_path)
    size = path.stat().st_size
    gap = (size - (1 << 16)) // (PROBE_BLOCKS - 1)
    offset = gap // 2 + (1 << 16)  # between two sampled blocks

    def poke(p: Path) -> None:
        with open(p, "r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))

    _edit_keeping_size_and_mtime(path, poke)
    assert raw_key(spec, [path]) == before, "documented: the cheap key does not read every byte"
    assert main(["convert", str(path), "--cache-dir", str(cache), "--raw-only", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "stale cache removed" in out and "set.h5: content changed" in out
    assert main(["convert", str(path), "--cache-dir", str(cache), "--raw-only", "--verify"]) == 0
    assert "stale cache removed" not in capsys.readouterr().out
