"""Channels-last images (N, H, W, C) -> channels-first float32 (N, C, H, W): the one copy that a file stored
channels last costs.

float32 images that are contiguous and aligned go through the compiled ``_reorder`` (a loop per channel count
that the compiler vectorizes: 0.8-1.3 of a memcpy of the same bytes, where numpy's strided copy reaches
about half at 8 channels); anything else, or an install where it could not be compiled, through numpy.
"""

from __future__ import annotations

import os

import numpy as np

try:
    if os.environ.get("HPCVIT_NO_KERNELS", "").strip().lower() not in ("", "0", "false", "no"):
        raise ImportError  # the numpy path alone (benchmarks measure both)
    from hpcvit.data import _reorder
except ImportError:
    _reorder = None

KERNEL = "compiled" if _reorder is not None else "numpy"
"""Which copy :func:`to_channels_first` makes of float32 images."""


def _fits(src: np.ndarray, out: np.ndarray) -> bool:
    return (src.dtype == np.float32 and out.dtype == np.float32 and src.flags.c_contiguous
            and out.flags.c_contiguous and src.flags.aligned and out.flags.aligned and out.flags.writeable
            and src.ndim == 4 and out.shape == (src.shape[0], src.shape[3], src.shape[1], src.shape[2])
            and not np.may_share_memory(src, out))


def to_channels_first(src: np.ndarray, out: np.ndarray) -> None:
    """Copy ``src`` (N, H, W, C) into ``out`` (N, C, H, W), cast as numpy's unsafe copy casts (values beyond
    float32's range become inf, without a warning: the data checks count and report them)."""
    if _reorder is not None and _fits(src, out):
        n, h, w, c = src.shape
        _reorder.to_channels_first(src, out, n, h * w, c)
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            np.copyto(out, np.moveaxis(src, 3, 1), casting="unsafe")
