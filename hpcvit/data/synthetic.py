"""A small deterministic toy data set in the HDF5 electron/photon layout, for demos and tests."""

from __future__ import annotations

import io

from pathlib import Path

import h5py
import numpy as np

from hpcvit import fsio


def make_showers(n: int, image_size: int = 32, channels: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``X`` (n, H, W, C) float32 and ``y`` (n,) float32 of two shower-like classes.

    Class 0 ("photon") deposits one compact shower; class 1 ("electron") a slightly wider one with a
    bremsstrahlung tail along phi and a later hit time. The classes overlap, so a good model reaches a
    ROC-AUC well below 1 and a broken one stays at 0.5.
    """
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=np.float32)
    y[n // 2:] = 1.0
    rng.shuffle(y)
    grid = np.arange(image_size, dtype=np.float32) - (image_size - 1) / 2
    eta, phi = np.meshgrid(grid, grid, indexing="ij")
    centre = rng.normal(0.0, 1.0, size=(n, 2)).astype(np.float32)
    width = np.where(y == 1, 1.25, 1.0) * rng.uniform(0.8, 1.2, size=n)
    energy = rng.gamma(20.0, 2.5, size=n)
    d2 = (eta[None] - centre[:, None, None, 0]) ** 2 + (phi[None] - centre[:, None, None, 1]) ** 2
    core = np.exp(-d2 / (2 * width[:, None, None] ** 2))
    tail_pos = centre[:, 1] + rng.uniform(2.0, 5.0, size=n) * rng.choice([-1.0, 1.0], size=n)
    tail = np.exp(-((eta[None] - centre[:, None, None, 0]) ** 2 + (phi[None] - tail_pos[:, None, None]) ** 2) / 2.0)
    frac = np.where(y == 1, rng.uniform(0.0, 0.35, size=n), rng.uniform(0.0, 0.15, size=n))
    e_img = energy[:, None, None] * ((1 - frac)[:, None, None] * core + frac[:, None, None] * tail)
    e_img = e_img / e_img.sum(axis=(1, 2), keepdims=True) * energy[:, None, None]
    e_img += rng.exponential(0.02, size=e_img.shape)
    e_img[e_img < 0.05] = 0.0
    out = np.zeros((n, image_size, image_size, channels), dtype=np.float32)
    out[..., 0] = e_img
    if channels > 1:
        t0 = np.where(y == 1, 0.15, 0.0) + rng.normal(0.0, 0.4, size=n)
        t_img = (t0[:, None, None] + rng.normal(0.0, 0.3, size=e_img.shape)) * (e_img > 0)
        out[..., 1] = t_img
    for c in range(2, channels):
        out[..., c] = e_img * rng.uniform(0.5, 1.5, size=(n, 1, 1))
    return out, y


def write_synthetic_hdf5(path: str | Path, n: int, image_size: int = 32, channels: int = 2, seed: int = 0) -> Path:
    """Write the toy set to ``path`` (``X``, ``y`` as in the electron/photon files), atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x, y = make_showers(n, image_size, channels, seed)
    # Built in memory, then written as plain bytes: HDF5's own writes to a full disk leave a file object that
    # crashes the process when it is freed; a plain write fails with one OSError and leaves nothing.
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("X", data=x, chunks=(min(n, 512), image_size, image_size, channels))
        f.create_dataset("y", data=y)
        f.attrs.update({"generator": "hpcvit.synthetic", "seed": seed, "layout": "NHWC"})
    fsio.write_bytes(path, buffer.getbuffer().tobytes())
    return path
