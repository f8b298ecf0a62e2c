"""One run's spec (:class:`JobSpec`): model, optimisation, checkpoints, resources, tracking, and its data."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from hpcvit.config.base import NAME_PATTERN, SEED_LIMIT, Section, finite
from hpcvit.config.data import DataSpec

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


class ModelSpec(Section):
    """Which registered model to build (``hpcvit models`` lists them) and its keyword arguments."""

    name: str
    """Registered model name, e.g. ``vit_seed``, ``coatnet_0``, ``swin_tiny``."""
    kwargs: dict[str, Any] = {}
    """Keyword arguments of the model builder, checked against its signature."""
    init_from: str | None = Field(None, min_length=1, max_length=4096)
    """Start from earlier weights instead of a random initialisation (fine-tuning): a trained run
    (``SWEEP/TASK``, or its MLflow run id; its best epoch's weights), a checkpoint or weights file (``.pt``,
    ``.safetensors``) or a safetensors export folder. Loaded without pickle; tensors of another shape (a new
    head) keep their fresh initialisation and the log says which. Resolved to one file when the sweep is
    submitted; a resumed task continues from its own checkpoints."""

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        from hpcvit.models import check_model_name

        check_model_name(name)
        return name

    @field_validator("kwargs")
    @classmethod
    def _finite_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        finite(kwargs, "model.kwargs")
        return kwargs


class OptimSpec(Section):
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
    step_epochs: int = Field(10, gt=0, le=1_000_000)
    """``step`` schedule: multiply the lr by ``gamma`` every this many epochs."""
    gamma: float = Field(0.1, gt=0, le=1)
    """Decay factor of the ``step`` and ``exponential`` schedules."""
    epochs: int = Field(10, gt=0, le=1_000_000)
    """Training epochs."""
    batch_size: int = Field(64, gt=0, le=1_048_576)
    """Batch size per rank and forward pass (a micro-batch when ``grad_accum_steps`` > 1); the global batch of
    one optimiser step is this times ``grad_accum_steps`` times the number of ranks."""
    grad_accum_steps: int = Field(1, ge=1, le=65_536)
    """Micro-batches of ``batch_size`` whose gradients are accumulated into one optimiser step (DDP all-reduces
    only on the last one). A step is one optimiser step everywhere: ``max_steps_per_epoch``,
    ``checkpoint.every_steps``, warm-up and schedule; each micro-batch's loss is weighted by its share of the
    step's samples, so the update equals that of one batch of ``batch_size * grad_accum_steps`` (for models
    without batch statistics). An epoch's last step may have fewer micro-batches."""
    max_steps_per_epoch: int | None = Field(None, gt=0, le=10**12)
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


class CheckpointSpec(Section):
    """Periodic, atomic checkpoints; a task that finds one resumes from it."""

    every_steps: int | None = Field(None, gt=0, le=10**12)
    """Save every this many optimiser steps (null: only at epoch ends and on signals)."""
    every_minutes: float | None = Field(10.0, gt=0, le=10**6)
    """Save when this many minutes have passed since the last save (null: off)."""
    before_evaluation: bool = True
    """Also save when an epoch's training ends, before its evaluation: a stop (a preemption, a time limit) that
    arrives during a long evaluation and is killed at the cluster's KillWait before the next save then loses
    that evaluation only (the restart evaluates again), not the epoch's training."""
    keep: int = Field(2, ge=1, le=10_000)
    """Number of recent checkpoints kept (the best one is kept besides)."""
    keep_best: bool = True
    """Keep a copy of the checkpoint with the best validation metric."""
    best_metric: str = "auto"
    """The validation metric that picks the best epoch (its weights are the result), ``val_<metric>`` of one of
    the task's metrics: ``auto`` is the objective's own (ROC-AUC for a binary task, MAE for a regression; the
    mass-regression seed picks by ``val_mre``)."""


class ResourcesSpec(Section):
    """Per-task resources and scheduler settings."""

    nodes: int = Field(1, ge=1, le=100_000)
    """Nodes per task; with more than one, torchrun rendezvous on the allocation's first node."""
    gpus_per_node: int = Field(0, ge=0, le=1024)
    """GPUs per node (0 trains on the CPU with the gloo backend)."""
    nproc_per_node: int | None = Field(None, ge=1, le=4096)
    """torchrun processes per node; default: one per GPU, or 1 on the CPU."""
    cpus_per_task: int = Field(2, ge=1, le=100_000)
    """CPU cores per node for the task (shared by its ranks and data workers)."""
    mem_gb: float | None = Field(None, gt=0, le=10**7)
    """Memory per node in GiB (null: the cluster's default)."""
    time_min: int = Field(60, ge=1, le=527_040)
    """Wall-clock limit per run of the task, in minutes (at most 366 days); the task is requeued and resumes when
    it hits it."""
    partition: str | None = None
    """Slurm partition."""
    account: str | None = None
    """Slurm account to charge."""
    qos: str | None = None
    """Slurm quality of service."""
    max_array_size: int | None = Field(None, ge=1, le=4_000_001)
    """Most tasks in one Slurm array; a larger sweep is submitted as several arrays (one ledger, one status).
    Null reads ``MaxArraySize`` from ``scontrol show config`` (Slurm's default, 1001, when it cannot be read)."""
    array_parallelism: int = Field(16, ge=1, le=4_000_001)
    """Most tasks of the sweep running at once (``--array=0-N%K``; enforced on the local executor too)."""
    signal_delay_s: int = Field(120, ge=10, le=65_535)
    """Seconds before the time limit at which Slurm warns the task (USR2) so it checkpoints and requeues; shorter
    than ``time_min`` (Slurm takes at most 65535)."""
    max_requeues: int = Field(3, ge=0, le=100_000)
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


class TrackingSpec(Section):
    """Where runs are logged."""

    uri: str | None = None
    """MLflow tracking URI; default ``$MLFLOW_TRACKING_URI`` or ``sqlite:///<output_dir>/mlflow.db``."""
    experiment: str | None = None
    """MLflow experiment name; default: the spec's ``name``."""


class JobSpec(Section):
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
