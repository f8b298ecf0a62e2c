"""Optimiser, learning-rate schedule, mixed precision and the kernel switches (deterministic, compile)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hpcvit.config import OptimSpec


def make_optimizer(o: OptimSpec, model: nn.Module) -> torch.optim.Optimizer:
    """The spec's optimiser; weight decay on weights, not on biases and norm parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr)
    if o.optimizer == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.momentum > 0)


def lr_factor(o: OptimSpec, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate at optimiser step ``step`` as a fraction of ``o.lr``: linear warm-up, then the schedule
    (``cosine`` to 0 at the last step of ``o.epochs``, ``step`` by ``gamma`` every ``step_epochs``, ``constant``)."""
    warmup = int(o.warmup_epochs * steps_per_epoch)
    total = o.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if o.schedule == "cosine":
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if o.schedule == "step":
            return o.gamma ** ((step // steps_per_epoch) // o.step_epochs)
        if o.schedule == "exponential":
            return o.gamma ** (step // steps_per_epoch)
        return 1.0

    return factor


def make_scheduler(o: OptimSpec, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(o, steps_per_epoch))


def amp_dtype(o: OptimSpec, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``optim.amp`` on ``device``; None for full precision."""
    if o.amp == "off" or (o.amp == "auto" and device.type != "cuda"):
        return None
    if o.amp == "bf16" or (o.amp == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def make_scaler(dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (bf16 needs none)."""
    return torch.amp.GradScaler("cuda") if dtype == torch.float16 else None


def set_deterministic() -> None:
    """Deterministic kernels (warn where none exists); before any CUDA work, so cuBLAS sees its workspace setting."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def compile_probe(device: torch.device) -> str | None:
    """None if ``torch.compile`` works here (compiler toolchain present), else why not."""
    try:
        fn = torch.compile(lambda t: torch.relu(t * 2.0 + 1.0).sum(), dynamic=False)
        fn(torch.ones(8, device=device))
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: train uncompiled
        text = str(exc).strip()
        return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def try_compile(module: nn.Module, device: torch.device) -> tuple[nn.Module, str | None]:
    """``(torch.compile(module), None)``, or ``(module, why not)`` where compiling is not possible here."""
    why = compile_probe(device)
    if why is None:
        import torch._dynamo

        # A model that cannot be compiled (an unsupported op) runs eagerly, with a warning, instead of failing.
        torch._dynamo.config.suppress_errors = True
        try:
            return torch.compile(module), None
        except Exception as exc:  # noqa: BLE001
            why = f"{type(exc).__name__}: {exc}"
    return module, why
