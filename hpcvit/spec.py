"""The job spec: one pydantic model per concern, a docstring under every field.

A spec file holds a :class:`JobSpec` plus an optional ``sweep:`` block (:class:`SweepSpec`) that
:mod:`hpcvit.sweep` expands into runs, each of which is validated as a :class:`JobSpec` of its own.
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# sbatch options a spec may pass through ``resources.sbatch_extra``; everything else hpcvit sets itself
# (array, signal, requeue, time, resources) or is unsafe to let a sweep vary (output paths, dependencies).
SBATCH_EXTRA_ALLOWED = frozenset({
    "constraint", "gres", "gpus_per_node", "gpus_per_task", "cpus_per_gpu", "mem_per_gpu", "exclusive",
    "reservation", "mail_type", "mail_user", "comment", "nodelist", "exclude", "licenses", "hint",
    "distribution", "switches", "wckey", "begin", "deadline", "nice", "tmp",
})
# Values are shell-quoted into "#SBATCH --key=value" lines; control characters (a newline would start a
# new script line) are the one thing quoting cannot make safe.
_SAFE_VALUE = re.compile(r"^[^\x00-\x1f\x7f]*$")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
SEED_LIMIT = 2**32
"""Seeds are in ``[0, 2**32)``: what numpy, torch and Python's generators all take as they are."""
MAX_RUNS = 20_000
"""Default cap on the runs one spec may expand to (``sweep.max_runs`` raises it)."""


def _finite(value: Any, where: str) -> None:
    """Refuse NaN and infinities anywhere inside a free-form value (model kwargs, sweep values)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {value} is not a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite(v, f"{where}[{i}]")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True, frozen=True,
                              allow_inf_nan=False)


class PreprocessSpec(_Section):
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


class SyntheticSpec(_Section):
    """A deterministic toy data set in the HDF5 electron/photon layout (X: N x H x W x C float32, y)."""

    n_samples: int = Field(2048, gt=1)
    """Number of images written, half of each class."""
    image_size: int = Field(32, ge=8, le=256)
    """Height and width in pixels."""
    channels: int = Field(2, ge=1, le=16)
    """Channels per image (2 = hit energy and time, as in the electron/photon files)."""
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    """Seed of the generator; the same seed writes the same file."""


class DataSpec(_Section):
    """Where the images come from and how they are read."""

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
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes per rank."""
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
    error before training (one class, a cut that removes a class, ``max_samples`` inside one class's file);
    0 turns the check off."""
    max_samples: int | None = Field(None, gt=0)
    """Use only the first this many samples that pass the cuts (in file order); null uses them all."""
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
        return self


# What each data field changes, declared once: ``selection`` fields choose the samples and their raw content
# (the raw cache is keyed by them and the files' identity), ``samples`` fields change what training sees of
# them (targets, split, preprocessing), ``access`` fields only how they are read. The data fingerprint covers
# selection and samples. Every field of DataSpec must be listed (checked at import).
DATA_FIELD_ROLES: dict[str, Literal["selection", "samples", "access"]] = {
    "format": "selection", "input_key": "selection", "channels": "selection", "layout": "selection",
    "cuts": "selection", "max_samples": "selection",
    "task": "samples", "target_key": "samples", "scalar_inputs": "samples", "val_fraction": "samples", "test_fraction": "samples",
    "split_seed": "samples", "min_per_class": "access", "nonfinite": "samples", "preprocessing": "samples", "synthetic": "samples", "positive_value": "samples",
    "paths": "access", "num_workers": "access", "hdf5_chunk_cache_mb": "access", "cache_dir": "access",
    "cache_preprocessed": "access",
}
if set(DATA_FIELD_ROLES) != set(DataSpec.model_fields):
    raise TypeError(f"DATA_FIELD_ROLES must list every DataSpec field: "
                    f"{sorted(set(DATA_FIELD_ROLES) ^ set(DataSpec.model_fields))}")


def data_fields(spec: DataSpec, *roles: str) -> dict[str, Any]:
    """The fields of ``spec`` with one of ``roles``, as JSON-ready values (for keys and fingerprints)."""
    dumped = spec.model_dump(mode="json")
    return {k: dumped[k] for k, role in DATA_FIELD_ROLES.items() if role in roles}


class ModelSpec(_Section):
    """Which registered model to build (``hpcvit models`` lists them) and its keyword arguments."""

    name: str
    """Registered model name, e.g. ``vit_seed``, ``coatnet_0``, ``swin_tiny``."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments of the model builder, checked against its signature."""

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from hpcvit.models import check_model_name

        check_model_name(name)
        return name

    @field_validator("kwargs")
    @classmethod
    def _finite_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        _finite(kwargs, "model.kwargs")
        return kwargs


class OptimSpec(_Section):
    """Optimisation: optimiser, schedule, epochs, precision, seed."""

    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    """Optimiser."""
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate."""
    weight_decay: float = Field(0.05, ge=0)
    """Decoupled (AdamW) or L2 (Adam/SGD) weight decay."""
    momentum: float = Field(0.9, ge=0, lt=1)
    """SGD momentum."""
    schedule: Literal["cosine", "step", "exponential", "constant"] = "cosine"
    """Learning-rate schedule after warm-up: ``cosine`` to 0 at the last step, ``step`` (``gamma`` every
    ``step_epochs``), ``exponential`` (``gamma`` every epoch, as the mass-regression seed), ``constant``."""
    warmup_epochs: float = Field(0.0, ge=0)
    """Linear warm-up length in epochs (fractions allowed)."""
    step_epochs: int = Field(10, gt=0)
    """``step`` schedule: multiply the lr by ``gamma`` every this many epochs."""
    gamma: float = Field(0.1, gt=0, le=1)
    """Decay factor of the ``step`` and ``exponential`` schedules."""
    epochs: int = Field(10, gt=0)
    """Training epochs."""
    batch_size: int = Field(64, gt=0)
    """Batch size per rank and forward pass (a micro-batch when ``grad_accum_steps`` > 1); the global batch of
    one optimiser step is this times ``grad_accum_steps`` times the number of ranks."""
    grad_accum_steps: int = Field(1, ge=1)
    """Micro-batches of ``batch_size`` whose gradients are accumulated into one optimiser step (DDP all-reduces
    only on the last one). A step is one optimiser step everywhere: ``max_steps_per_epoch``,
    ``checkpoint.every_steps``, warm-up and schedule; each micro-batch's loss is weighted by its share of the
    step's samples, so the update equals that of one batch of ``batch_size * grad_accum_steps`` (for models
    without batch statistics). An epoch's last step may have fewer micro-batches."""
    max_steps_per_epoch: int | None = Field(None, gt=0)
    """Cap on optimiser steps per epoch (for smoke tests); null runs whole epochs."""
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    """Mixed precision: ``auto`` is bf16 on GPUs that support it, fp16 with a grad scaler on older ones, off on CPU."""
    nonfinite: Literal["stop", "skip_batch"] = "stop"
    """What a non-finite loss or gradient does: ``stop`` ends the task FAILED (with the steps) before anything
    non-finite is checkpointed or evaluated; ``skip_batch`` drops that step's update and counts it
    (``skipped_steps`` in MLflow)."""
    grad_clip: float | None = Field(1.0, gt=0)
    """Clip the global gradient norm to this value; null turns it off."""
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    """Label smoothing of the binary targets."""
    ema_decay: float | None = Field(None, gt=0, lt=1)
    """Keep an exponential moving average of the weights (parameters and buffers; timm ``ModelEmaV3``), updated
    after every optimiser step with this decay (e.g. 0.999); null turns it off. When set, the EMA weights are
    what is evaluated: the ``val_*`` metrics, the best epoch, the final validation/test metrics, predictions
    and ``best_model.pt``; the raw weights' validation metrics are logged besides as ``val_raw_*``.
    Checkpoints hold both, so resuming stays exact."""
    ema_warmup: bool = False
    """With ``ema_decay``: warm the decay up as ``1 - (1 + step) ** (-2/3)`` (capped at ``ema_decay``), so that
    short runs are not dominated by the initial weights (timm's ``--model-ema-warmup``)."""
    compile: bool = False
    """``torch.compile`` the model for training (evaluation runs eagerly); when the platform cannot compile,
    training continues uncompiled with a warning in the log."""
    channels_last: bool = False
    """Keep weights and input batches in ``torch.channels_last`` memory format (faster convolutions with
    tensor cores; models without convolutions gain nothing)."""
    deterministic: bool = False
    """Deterministic kernels: ``torch.use_deterministic_algorithms(True, warn_only=True)``, cuDNN benchmark off
    and cuDNN deterministic, ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (unless set); slower on GPUs. On GPUs,
    bitwise-exact resume depends on it (some CUDA kernels sum in a varying order; ops without a deterministic
    kernel only warn); on the CPU resume is exact without it."""
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    """Seed of model initialisation, sampling order and dropout."""


class CheckpointSpec(_Section):
    """Periodic, atomic checkpoints; a task that finds one resumes from it."""

    every_steps: int | None = Field(None, gt=0)
    """Save every this many optimiser steps (null: only at epoch ends and on signals)."""
    every_minutes: float | None = Field(10.0, gt=0)
    """Save when this many minutes have passed since the last save (null: off)."""
    keep: int = Field(2, ge=1)
    """Number of recent checkpoints kept (the best one is kept besides)."""
    keep_best: bool = True
    """Keep a copy of the checkpoint with the best validation metric."""
    best_metric: str = "auto"
    """The validation metric that picks the best epoch (its weights are the result), ``val_<metric>`` of one of
    the task's metrics: ``auto`` is the objective's own (ROC-AUC for a binary task, MAE for a regression; the
    mass-regression seed picks by ``val_mre``)."""


class ResourcesSpec(_Section):
    """Per-task resources and scheduler settings."""

    nodes: int = Field(1, ge=1)
    """Nodes per task; with more than one, torchrun rendezvous on the allocation's first node."""
    gpus_per_node: int = Field(0, ge=0)
    """GPUs per node (0 trains on the CPU with the gloo backend)."""
    nproc_per_node: int | None = Field(None, ge=1)
    """torchrun processes per node; default: one per GPU, or 1 on the CPU."""
    cpus_per_task: int = Field(2, ge=1)
    """CPU cores per node for the task (shared by its ranks and data workers)."""
    mem_gb: float | None = Field(None, gt=0)
    """Memory per node in GiB (null: the cluster's default)."""
    time_min: int = Field(60, ge=1)
    """Wall-clock limit per run of the task, in minutes; the task is requeued and resumes when it hits it."""
    partition: str | None = None
    """Slurm partition."""
    account: str | None = None
    """Slurm account to charge."""
    qos: str | None = None
    """Slurm quality of service."""
    max_array_size: int | None = Field(None, ge=1)
    """Most tasks in one Slurm array; a larger sweep is submitted as several arrays (one ledger, one status).
    Null reads ``MaxArraySize`` from ``scontrol show config`` (Slurm's default, 1001, when it cannot be read)."""
    array_parallelism: int = Field(16, ge=1)
    """Most tasks of the sweep running at once (``--array=0-N%K``; enforced on the local executor too)."""
    signal_delay_s: int = Field(120, ge=10)
    """Seconds before the time limit at which Slurm warns the task (USR2) so it checkpoints and requeues."""
    max_requeues: int = Field(3, ge=0)
    """Times a task may be requeued after hitting its time limit before it counts as failed."""
    sbatch_extra: dict[str, str | int | bool] = {}
    """Further sbatch options from a vetted allow-list (e.g. ``constraint``, ``gres``, ``reservation``)."""

    @field_validator("partition", "account", "qos")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.\-]+", value):
            raise ValueError(f"{value!r} is not a valid Slurm name (letters, digits, _ . -)")
        return value

    @field_validator("sbatch_extra")
    @classmethod
    def _vetted(cls, extra: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
        for key, value in extra.items():
            if key not in SBATCH_EXTRA_ALLOWED:
                raise ValueError(f"sbatch option {key!r} is not allowed; allowed: {', '.join(sorted(SBATCH_EXTRA_ALLOWED))}")
            if isinstance(value, str) and not _SAFE_VALUE.fullmatch(value):
                raise ValueError(f"sbatch option {key!r} has unsafe characters in {value!r}")
        return extra

    @property
    def procs_per_node(self) -> int:
        return self.nproc_per_node or max(self.gpus_per_node, 1)


class TrackingSpec(_Section):
    """Where runs are logged."""

    uri: str | None = None
    """MLflow tracking URI; default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<output_dir>/mlflow.db``."""
    experiment: str | None = None
    """MLflow experiment name; default: the spec's ``name``."""


class JobSpec(_Section):
    """One training run: what a single array task does."""

    name: str = Field(pattern=NAME_PATTERN)
    """Experiment name (letters, digits, ``_ . -``); names the sweep and the MLflow experiment."""
    description: str = ""
    """Free text recorded with the sweep."""
    executor: Literal["local", "slurm"] = "local"
    """Where tasks run: this machine (submitit's local executor) or a Slurm cluster."""
    output_dir: str = "runs"
    """Directory holding one sub-directory per sweep (specs, logs, checkpoints, manifest)."""
    data: DataSpec = DataSpec()
    """Data set."""
    model: ModelSpec
    """Model."""
    optim: OptimSpec = OptimSpec()
    """Optimisation."""
    checkpoint: CheckpointSpec = CheckpointSpec()
    """Checkpointing."""
    resources: ResourcesSpec = ResourcesSpec()
    """Resources."""
    tracking: TrackingSpec = TrackingSpec()
    """Tracking."""


Distribution = Literal["loguniform", "uniform", "int", "choice"]


class SearchSpec(_Section):
    """Adaptive search over the sweep's configurations: successive halving in rungs, or random sampling."""

    method: Literal["halving", "random"] = "halving"
    """``halving``: every configuration trains ``min_epochs``, the best 1/``eta`` continue (from their own
    checkpoints) to ``eta`` times as many epochs, and so on up to ``max_epochs``; the others end STOPPED_EARLY.
    ``random``: ``n_trials`` draws from ``space``, each trained to ``max_epochs``."""
    metric: str = "val_roc_auc"
    """The validation metric that ranks configurations at the end of a rung (its value at the rung's last epoch):
    ``val_<metric>`` of one of the task's metrics (checked when the sweep is expanded)."""
    mode: Literal["max", "min"] | None = None
    """Whether larger or smaller ``metric`` is better; null: the metric's own direction (``max`` for ROC-AUC)."""
    min_epochs: int = Field(1, ge=1)
    """Epochs of the first rung."""
    max_epochs: int | None = Field(None, ge=1)
    """Epochs of the last rung; it sets ``optim.epochs`` of every configuration, so that the learning-rate
    schedule is defined over it and a promotion is an exact resume. Null: ``optim.epochs``."""
    eta: int = Field(3, ge=2)
    """Each rung keeps the best 1/eta of the configurations and trains them eta times as many epochs."""
    n_trials: int | None = Field(None, ge=1)
    """Draws from ``space`` (each crossed with the grid/zip); needs ``space``."""
    space: dict[str, dict[Distribution, list[Any]]] = {}
    """Dotted field -> one distribution: ``{loguniform: [low, high]}``, ``{uniform: [low, high]}``,
    ``{int: [low, high]}`` (both ends included) or ``{choice: [a, b, ...]}``."""
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    """Seed of the draws from ``space``: the same seed draws the same configurations."""

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpec:
        if self.max_epochs is not None and self.min_epochs > self.max_epochs:
            raise ValueError(f"min_epochs {self.min_epochs} must not exceed max_epochs {self.max_epochs}")
        if bool(self.space) != (self.n_trials is not None):
            raise ValueError("space and n_trials go together: n_trials draws from space")
        if self.method == "random" and not self.space:
            raise ValueError("method random needs space and n_trials")
        for key, dist in self.space.items():
            if len(dist) != 1:
                raise ValueError(f"space.{key}: give exactly one of loguniform, uniform, int, choice")
            (kind, args), = dist.items()
            _finite(args, f"space.{key}")
            if kind == "choice":
                if not args:
                    raise ValueError(f"space.{key}: choice needs at least one value")
                continue
            if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
                raise ValueError(f"space.{key}: {kind} needs [low, high] numbers")
            low, high = args
            if kind == "int" and not all(isinstance(a, int) for a in args):
                raise ValueError(f"space.{key}: int needs integer bounds")
            if low > high or (kind != "int" and low == high):
                raise ValueError(f"space.{key}: low {low} must be below high {high}")
            if kind == "loguniform" and low <= 0:
                raise ValueError(f"space.{key}: loguniform needs low > 0")
        return self


class SweepSpec(_Section):
    """Expansion of one spec into runs: the cartesian product of ``grid`` times the paired lists of ``zip``."""

    grid: dict[str, list[Any]] = {}
    """Dotted field -> values; every combination becomes a run (``optim.lr: [1e-3, 3e-4]``)."""
    zip: dict[str, list[Any]] = {}
    """Dotted field -> values; lists of equal length, the i-th values go together."""
    max_runs: int = Field(MAX_RUNS, ge=1)
    """Most runs the spec may expand to; a larger grid is refused before it is expanded (raise this when you
    mean it: each run costs memory and time at validation and a task in the ledger)."""
    search: SearchSpec | None = None
    """Adaptive search over the configurations (rungs of successive halving, or random draws); null: every
    configuration trains all its epochs."""

    @property
    def n_runs(self) -> int:
        """How many runs the grid and zip expand to."""
        trials = self.search.n_trials if self.search is not None and self.search.n_trials else 1
        return (math.prod(len(v) for v in self.grid.values()) * (len(next(iter(self.zip.values()))) if self.zip else 1)
                * trials)

    @model_validator(mode="after")
    def _non_empty(self) -> SweepSpec:
        for block in ("grid", "zip"):
            for key, values in getattr(self, block).items():
                if not values:
                    raise ValueError(f"{block}.{key}: needs at least one value")
        lengths = {len(v) for v in self.zip.values()}
        if len(lengths) > 1:
            raise ValueError(f"zip lists must have equal lengths, got {sorted(lengths)}")
        both = set(self.grid) & set(self.zip)
        if both:
            raise ValueError(f"field(s) {sorted(both)} appear in both grid and zip")

        for block in ("grid", "zip"):
            _finite(getattr(self, block), block)
        if self.n_runs > self.max_runs:
            raise ValueError(f"expands to {self.n_runs:,} runs, more than sweep.max_runs = {self.max_runs:,} "
                             "(raise sweep.max_runs if you mean it)")
        return self
