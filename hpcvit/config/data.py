"""The ``data:`` section: where the samples come from, how they are selected, split and preprocessed."""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from hpcvit.config.base import SEED_LIMIT, Section

class PreprocessSpec(Section):
    """Per-channel preprocessing of the GSoC ViT study, each step switchable."""

    zero_suppress: float | None = Field(1e-3, ge=0)
    """Set pixels with |value| below this threshold to 0; null turns it off."""
    zscore: bool = True
    """Channel-wise z-score with mean/std computed on the training split only."""
    clip_sigma: float | None = Field(500.0, gt=0)
    """After z-scoring, clip each channel at +-this many standard deviations; null turns it off."""
    minmax: bool = True
    """Sample-wise min-max scaling of each image to [0, 1]."""
    stats_samples: int = Field(4096, gt=0)
    """Training samples read (in batches of this size) to compute the channel statistics."""


class SyntheticSpec(Section):
    """A deterministic toy data set in the HDF5 electron/photon layout (X: N x H x W x C float32, y)."""

    n_samples: int = Field(2048, gt=1, le=100_000_000)
    """Number of images written, half of each class."""
    image_size: int = Field(32, ge=8, le=256)
    """Height and width in pixels."""
    channels: int = Field(2, ge=1, le=16)
    """Channels per image (2 = hit energy and time, as in the electron/photon files)."""
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    """Seed of the generator; the same seed writes the same file."""


HIT_FEATURES = ("E", "x", "y", "z", "t", "subdetector", "is_track")
"""The numbers of a hit in the seed's files (and the generator's): energy (GeV), position (mm), time (ns), the
subdetector (0 tracker, 1 ECAL, 2 HCAL) and the track flag (1 for a track's hit)."""


class HitsSpec(Section):
    """Per-event hit lists (``task: hit_clustering``): which numbers of a hit the model sees, and how scaled."""

    feature_names: list[str] = list(HIT_FEATURES)
    """The names of the numbers each hit holds in the files, in order (the seed's layout by default)."""
    features: list[str] = ["E", "x", "y", "z", "t"]
    """The numbers fed to the model (names of ``feature_names``; the seed used E, x, y, z and optionally t)."""
    track_feature: str | None = "is_track"
    """The number that flags a track's hit (1) among calorimeter hits (0); null: the files hold no tracks."""
    tracks: bool = True
    """Keep the tracks' hits (the seed's ``do_tracks``); false drops them before anything else."""
    particle_key: str | None = "particle"
    """The per-hit array holding the index of the hit's particle in its event; where a file lacks it (or null),
    the hits with the same label row are one particle."""
    scaling: Literal["standard", "seed"] = "standard"
    """``standard``: each fed number standardised with the training split's mean and std (kept in every
    checkpoint); ``seed``: the seed's fixed scaling, tanh of the energy and positions / 2000 (others as they are)."""
    center: bool = True
    """Feed positions relative to the event's energy-weighted centroid of calorimeter hits (what separates
    particles is where they are with respect to each other, not where the jet hit the barrel)."""
    max_hits: int = Field(4096, ge=1)
    """Most hits an event may hold; a larger one is an error naming it (attention costs hits squared)."""

    @model_validator(mode="after")
    def _names(self) -> HitsSpec:
        names = self.feature_names
        if len(set(names)) != len(names) or not names:
            raise ValueError("data.hits.feature_names: give distinct names, one per number of a hit")
        for what, chosen in (("features", self.features), ("track_feature", [self.track_feature] if
                                                            self.track_feature else [])):
            unknown = [f for f in chosen if f not in names]
            if unknown:
                raise ValueError(f"data.hits.{what}: {unknown} not among feature_names {names}")
        if not self.features or len(set(self.features)) != len(self.features):
            raise ValueError("data.hits.features: give distinct names, at least one")
        if "E" not in names:
            raise ValueError("data.hits.feature_names must name the hit energy 'E' (metrics weight hits by it)")
        return self


class DataSpec(Section):
    """Where the samples come from and how they are read."""

    format: Literal["hdf5", "parquet", "synthetic"] = "synthetic"
    """File format: ``hdf5`` (electron/photon layout), ``parquet`` (jet images), or ``synthetic`` (written at submit)."""
    paths: list[str] = []
    """Input files; several files form one data set (e.g. one file per class, as published)."""
    task: str = "binary"
    """The objective: ``binary`` classification (one logit, ROC-AUC) or ``regression`` (MAE/MRE); every name
    registered in :mod:`hpcvit.objectives` (checked when the sweep is expanded)."""
    input_key: str = "X"
    """Data set / column holding the images (``X`` in HDF5, ``X_jets`` in Parquet)."""
    target_key: str = "y"
    """Data set / column holding the label or regression target."""
    scalar_inputs: list[str] = []
    """Scalar columns fed to the model beside the image (e.g. ``[pt, m0]``, seed 002), standardised with the
    training split's mean and std; any registered model then ends in a small head over its image features
    and these."""
    channels: list[int] | None = None
    """Indices of the channels to keep; null keeps all."""
    val_fraction: float = Field(0.2, gt=0, lt=1)
    """Fraction of the samples held out for validation (split deterministic in ``split_seed``)."""
    test_fraction: float = Field(0.0, ge=0, lt=1)
    """Fraction held out for a final test evaluation; 0 disables it."""
    split_seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    """Seed of the train/validation/test split."""
    num_workers: int = Field(0, ge=0, le=1024)
    """DataLoader worker processes per rank, forked from a server process each trainer starts (never from the
    trainer itself, whose threads make forking it unsafe)."""
    preprocessing: PreprocessSpec = PreprocessSpec()
    """Preprocessing steps (GSoC study defaults)."""
    synthetic: SyntheticSpec = SyntheticSpec()
    """Parameters of the synthetic data set when ``format: synthetic``."""
    cuts: dict[str, list[float | None]] = {}
    """Event selection: scalar column -> ``[min, max]`` (null leaves that side open); a sample is kept if
    ``min <= value < max``; ``abs(col)`` cuts on ``|value|``, e.g. ``{pt: [20, 100], "abs(ieta)": [null, 1.4]}``."""
    positive_value: float | None = None
    """Binary task: the target value that is the positive class (label 1, every other value 0); null takes
    targets that are already 0/1 as they are (e.g. ``y = jetIsQuark`` in the quark/gluon files)."""
    nonfinite: Literal["error", "zero"] = "error"
    """NaN or infinite pixels: ``error`` stops with the file, row and count of the first image that holds
    them; ``zero`` sets them to 0 (before zero suppression and the statistics)."""
    min_per_class: int = Field(1, ge=0)
    """Binary task: the fewest samples of either class the training and validation splits may hold; fewer is an
    error before training (one class, a cut that removes a class, too few positives left by ``max_samples``);
    0 turns the check off."""
    max_samples: int | None = Field(None, gt=0)
    """Use only this many of the samples that pass the cuts: from each file in proportion to its selected
    samples, the first of each (so one class per file keeps both); null uses them all."""
    layout: Literal["auto", "NHWC", "NCHW"] = "auto"
    """Axis order of HDF5 images: ``NHWC`` (electron/photon files), ``NCHW``, or ``auto`` (the two equal axes
    are height and width; without such a pair, channels last when the last axis is shorter than the first; an
    error when all three are equal). Parquet images are always channels first."""
    hdf5_chunk_cache_mb: float = Field(64.0, gt=0)
    """HDF5 chunk cache per open file and reader process in MiB (raised to hold at least 4 chunks), so that
    per-sample reads of a compressed file do not decompress a whole chunk each time."""
    cache_dir: str | None = None
    """Directory of the float32 memory-mapped cache (``hpcvit data convert``). When set, training reads the
    cache, building it once if missing (under a lock, atomically); it is keyed by the source files' identity,
    the columns, channels and cuts (and, for the preprocessed copy, the preprocessing and the channel
    statistics), and rebuilt when any of them changes. Null reads the source files directly."""
    cache_preprocessed: bool = True
    """With ``cache_dir``: also store the preprocessed images (a second float32 copy), so that data loading
    only copies memory; false preprocesses every batch in the loader workers instead (half the disk)."""
    hits: HitsSpec | None = None
    """Per-event hit lists (``task: hit_clustering``); null for images."""

    @field_validator("cuts")
    @classmethod
    def _valid_cuts(cls, cuts: dict[str, list[float | None]]) -> dict[str, list[float | None]]:
        for key, bounds in cuts.items():
            if not re.fullmatch(r"(abs\(\s*[^()\s]+\s*\)|[^()\s]+)", key):
                raise ValueError(f"cut {key!r}: name a column, or abs(column)")
            if len(bounds) != 2 or all(b is None for b in bounds):
                raise ValueError(f"cut {key!r}: give [min, max] with at least one bound (null leaves a side open)")
            if None not in bounds and not bounds[0] < bounds[1]:
                raise ValueError(f"cut {key!r}: min {bounds[0]} must be below max {bounds[1]}")
        return cuts

    @model_validator(mode="after")
    def _paths_match_format(self) -> DataSpec:
        if self.format != "synthetic" and not self.paths:
            raise ValueError(f"format {self.format!r} needs at least one entry in data.paths")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("val_fraction + test_fraction must leave training samples (< 1)")
        if self.channels is not None and (not self.channels or len(set(self.channels)) != len(self.channels)
                                          or min(self.channels) < 0):
            raise ValueError("data.channels: give distinct, non-negative channel indices (or null for all)")
        if self.format == "synthetic" and self.channels and max(self.channels) >= self.synthetic.channels:
            raise ValueError(f"data.channels: channel {max(self.channels)} does not exist; the synthetic images have "
                             f"{self.synthetic.channels} (0-{self.synthetic.channels - 1})")
        seen: dict[str, str] = {}
        for path in self.paths:
            same = os.path.normpath(os.path.abspath(os.path.expanduser(path)))
            if same in seen:
                raise ValueError(f"data.paths: {path!r} is listed twice (also as {seen[same]!r}): its samples would "
                                 "be in training and validation alike")
            seen[same] = path
        return self


# What each data field changes, declared once: ``selection`` fields choose the samples and their raw content
# (the raw cache is keyed by them and the files' identity), ``samples`` fields change what training sees of
# them (targets, split, preprocessing), ``access`` fields only how they are read; ``objective`` fields are read
# by the one objective that needs them, which keys its own cache and fingerprint with them. The data
# fingerprint covers selection and samples. Every field of DataSpec must be listed (checked at import).
DATA_FIELD_ROLES: dict[str, Literal["selection", "samples", "access", "objective"]] = {
    "format": "selection", "input_key": "selection", "channels": "selection", "layout": "selection",
    "cuts": "selection", "max_samples": "selection",
    "task": "samples", "target_key": "samples", "scalar_inputs": "samples", "val_fraction": "samples", "test_fraction": "samples",
    "split_seed": "samples", "min_per_class": "access", "nonfinite": "samples", "preprocessing": "samples", "synthetic": "samples", "positive_value": "samples",
    "paths": "access", "num_workers": "access", "hdf5_chunk_cache_mb": "access", "cache_dir": "access",
    "cache_preprocessed": "access", "hits": "objective",
}
if set(DATA_FIELD_ROLES) != set(DataSpec.model_fields):
    raise TypeError(f"DATA_FIELD_ROLES must list every DataSpec field: "
                    f"{sorted(set(DATA_FIELD_ROLES) ^ set(DataSpec.model_fields))}")


def data_fields(spec: DataSpec, *roles: str) -> dict[str, Any]:
    """The fields of ``spec`` with one of ``roles``, as JSON-ready values (for keys and fingerprints)."""
    dumped = spec.model_dump(mode="json")
    return {k: dumped[k] for k, role in DATA_FIELD_ROLES.items() if role in roles}
