"""The channels-last -> channels-first copy of HDF5 images: the compiled loop against numpy's strided copy,
bit for bit, for every channel count, odd sizes, other types, views and bad arguments."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcvit.data import reorder
from hpcvit.data.hdf5 import HDF5Store
from hpcvit.data.reorder import to_channels_first
from tests.test_data_hdf5 import write_h5


def reference(src: np.ndarray) -> np.ndarray:
    out = np.empty((src.shape[0], src.shape[3], src.shape[1], src.shape[2]), dtype=np.float32)
    np.copyto(out, np.moveaxis(src, 3, 1), casting="unsafe")
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()


def weird_floats(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Normal values with NaNs of several payloads, infinities, -0.0, subnormals and huge values."""
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1).view(np.uint32)
    special = np.array([0x7FC00000, 0x7FC00001, 0xFFC12345, 0x7F800000, 0xFF800000, 0x80000000, 0x00000001,
                        0x7F7FFFFF], dtype=np.uint32)
    if flat.size:
        pick = rng.integers(0, flat.size, size=min(flat.size, 16))
        flat[pick] = special[rng.integers(0, len(special), size=len(pick))]
    return x


def test_the_compiled_copy_is_built_where_a_compiler_is():
    """``make install`` compiles ``hpcvit.data._reorder``; without a C compiler numpy does the copy."""
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if shutil.which(cc) is None or not headers.exists() or os.environ.get("HPCVIT_NO_KERNELS"):
        pytest.skip("no C compiler or Python headers here (or HPCVIT_NO_KERNELS set): numpy does the copy")
    assert reorder.KERNEL == "compiled"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 3), h=st.integers(1, 9), w=st.integers(1, 9), c=st.integers(1, 17),
       seed=st.integers(0, 2**32 - 1))
def test_every_channel_count_and_size_bit_for_bit(n, h, w, c, seed):
    x = weird_floats(np.random.default_rng(seed), (n, h, w, c))
    out = np.full((n, c, h, w), 7.0, dtype=np.float32)
    to_channels_first(x, out)
    assert same_bits(out, reference(x))


@pytest.mark.parametrize("c", [1, 2, 3, 4, 5, 8, 12, 16])
@pytest.mark.parametrize("hw", [(32, 32), (125, 125), (1, 4099)])
def test_published_sizes_bit_for_bit(c, hw):
    x = weird_floats(np.random.default_rng(c), (3, *hw, c))
    out = np.empty((3, c, *hw), dtype=np.float32)
    to_channels_first(x, out)
    assert same_bits(out, reference(x))


@pytest.mark.parametrize("dtype", [np.float64, np.int16, np.uint8, ">f4", np.float16])
def test_other_types_cast_as_numpy_casts(dtype):
    x = (np.random.default_rng(0).standard_normal((2, 5, 6, 8)) * 50).astype(dtype)
    out = np.empty((2, 8, 5, 6), dtype=np.float32)
    to_channels_first(x, out)
    assert same_bits(out, reference(x))


def test_views_misaligned_and_strided_buffers():
    rng = np.random.default_rng(1)
    base = weird_floats(rng, (4, 10, 12, 8))
    raw = np.zeros(base.nbytes + 2, dtype=np.uint8)
    raw[2:] = base.view(np.uint8).reshape(-1)
    misaligned = np.frombuffer(raw.data, dtype=np.float32, offset=2).reshape(base.shape)
    assert not misaligned.flags.aligned
    for src in (base[:, ::2], base[..., [7, 0, 3]], base[::2], misaligned, base[:, :, ::-1]):
        out = np.empty((src.shape[0], src.shape[3], src.shape[1], src.shape[2]), dtype=np.float32)
        to_channels_first(src, out)
        assert same_bits(out, reference(src))
    big = np.zeros((4, 8, 10, 24), dtype=np.float32)
    strided_out = big[..., ::2]  # not contiguous: numpy writes it
    to_channels_first(base, strided_out)
    assert same_bits(np.ascontiguousarray(strided_out), reference(base))


@pytest.mark.skipif(reorder._reorder is None, reason="the compiled copy is not built")
def test_the_compiled_function_refuses_bad_arguments():
    f = reorder._reorder.to_channels_first
    src = np.zeros((2, 3, 3, 4), dtype=np.float32)
    dst = np.zeros((2, 4, 3, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="buffers of 288 and 288 bytes for 2 x 9 x 5"):
        f(src, dst, 2, 9, 5)
    with pytest.raises(ValueError, match="channels >= 1"):
        f(src, dst, 2, 9, 0)
    with pytest.raises(ValueError, match="overlap"):
        f(src, src, 2, 9, 4)
    with pytest.raises(OverflowError):
        f(src, dst, 2**40, 2**40, 4)
    with pytest.raises((TypeError, BufferError)):
        f(src, bytes(288), 2, 9, 4)  # read-only destination
    with pytest.raises((TypeError, BufferError, ValueError)):
        f(src[:, ::2], dst, 2, 9, 4)  # not contiguous
    f(src, dst, 2, 9, 4)


def test_values_beyond_float32_become_inf_without_a_warning(tmp_path):
    import warnings

    x = np.full((2, 3, 4, 5), 1e300)
    x[0, 0, 0, 0], x[1, 2, 3, 4] = -1e300, 1.5
    out = np.empty((2, 5, 3, 4), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_channels_first(x, out)
        p = write_h5(tmp_path / "huge.h5", np.moveaxis(x, 3, 1).copy(), np.zeros(2, np.float32))  # channels first, float64
        got = HDF5Store([p], layout="NCHW").read(np.arange(2))
    assert same_bits(out, got) and np.isinf(out).sum() == x.size - 1 and out[1, 4, 2, 3] == 1.5


@pytest.mark.parametrize("value, kernel", [("1", "numpy"), ("yes", "numpy"), ("0", None), ("", None)])
def test_hpcvit_no_kernels_is_a_switch(value, kernel):
    code = "from hpcvit.data.reorder import KERNEL; print(KERNEL)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "HPCVIT_NO_KERNELS": value})
    assert r.stdout.strip() == (kernel or ("compiled" if reorder._reorder is not None else "numpy"))


def test_numpy_alone_gives_the_same_bytes(tmp_path):
    """``HPCVIT_NO_KERNELS=1`` (what an install without a compiler does) reads the same images."""
    x = weird_floats(np.random.default_rng(5), (9, 11, 13, 8))
    np.save(tmp_path / "x.npy", x)
    code = ("import numpy as np, sys; from hpcvit.data.reorder import KERNEL, to_channels_first\n"
            "x = np.load(sys.argv[1]); out = np.empty((9, 8, 11, 13), np.float32)\n"
            "to_channels_first(x, out); np.save(sys.argv[2], out); print(KERNEL)")
    env = {**os.environ, "HPCVIT_NO_KERNELS": "1"}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                       capture_output=True, text=True, env=env, check=True)
    assert r.stdout.strip() == "numpy"
    mine = np.empty((9, 8, 11, 13), np.float32)
    to_channels_first(x, mine)
    assert same_bits(np.load(tmp_path / "y.npy"), mine)


@pytest.mark.parametrize("kw, mapped", [
    ({}, True),
    ({"chunks": (8, 21, 19, 8)}, True),
    ({"chunks": (8, 21, 19, 8), "compression": "gzip"}, False),
    ({"dtype": np.int16}, True),
    ({"dtype": np.float64, "chunks": (5, 21, 19, 8)}, True),
], ids=["contiguous", "row-chunks", "gzip", "int16", "float64-chunks"])
def test_eight_channel_files_read_as_h5py_reads_them(tmp_path, kw, mapped):
    rng = np.random.default_rng(2)
    with np.errstate(over="ignore"):
        x = weird_floats(rng, (37, 21, 19, 8)) * 100
    kw = dict(kw)
    dtype = kw.pop("dtype", np.float32)
    x = np.nan_to_num(x, nan=1.0, posinf=3e4, neginf=-3e4).astype(dtype) if dtype == np.int16 else x.astype(dtype)
    p = write_h5(tmp_path / "x.h5", x, np.zeros(len(x), np.float32), **kw)
    store = HDF5Store([p])
    assert (store._handle(0).mapped is not None) == mapped
    want = reference(x)
    assert same_bits(store.read(np.arange(37)), want)
    rows = np.array([0, 1, 7, 8, 9, 20, 36])
    assert same_bits(store.read(rows), want[rows])
    for block in (1, 8, 13, 256):
        got = np.concatenate([xb.copy() for _, xb in store.iter_read(np.arange(37), block=block)])
        assert same_bits(got, want)
    sub = HDF5Store([p], channels=[7, 0, 3])
    assert same_bits(sub.read(rows), np.ascontiguousarray(want[rows][:, [7, 0, 3]]))
