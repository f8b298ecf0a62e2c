"""The training process started by torchrun: DDP training of one task, resumable to the exact step.

Run as ``torchrun ... -m hpcvit.train TASK_DIR``. Stopping is cooperative: SIGTERM, SIGUSR2 or SIGINT on
any rank sets a flag; before each optimiser step (before fetching its first micro-batch) the ranks all-reduce
their flags, so all of them stop at the same step, save one checkpoint and exit. Rank 0 writes
``stopped.json`` (to be requeued) or ``result.json`` (finished) into the task folder for the launcher to read.

A step is one optimiser step of ``optim.grad_accum_steps`` micro-batches; the sampler counts micro-batches,
so a resumed epoch starts at micro-batch ``step_in_epoch * grad_accum_steps``. Optional: an EMA of the
weights (evaluated instead of the raw weights), ``torch.compile``, channels-last, deterministic kernels.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from importlib.metadata import version as _version
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from hpcvit import __version__
from hpcvit.checkpoint import CheckpointManager
from hpcvit.data import build_datasets
from hpcvit.manifest import SweepDir, TaskDir, now_iso, write_json_atomic
from hpcvit.metrics import evaluate_predictions, is_better, primary_metric
from hpcvit.models import build_model
from hpcvit.spec import JobSpec

_STOP: dict[str, str] = {}


def _on_signal(signum: int, _frame: Any) -> None:
    _STOP.setdefault("signal", signal.Signals(signum).name)


def _ignore_stop_signals(_worker_id: int) -> None:
    # DataLoader workers must not die on the signals the trainer turns into a checkpoint.
    for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


class ShardSampler(Sampler[int]):
    """Each rank's share of a (seeded, per-epoch) permutation, resumable at any batch.

    Every rank gets the same number of batches (the permutation is cut to a multiple of the world size),
    so DDP ranks never wait on each other at the end of an epoch.
    """

    def __init__(self, n: int, rank: int, world: int, batch_size: int, seed: int, shuffle: bool = True,
                 max_batches: int | None = None):
        self.n, self.rank, self.world, self.batch_size = n, rank, world, batch_size
        self.seed, self.shuffle = seed, shuffle
        per_rank = n // world
        self.batches = math.ceil(per_rank / batch_size)
        if max_batches is not None:
            self.batches = min(self.batches, max_batches)
        self.per_rank = min(per_rank, self.batches * batch_size)
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        usable = (self.n // self.world) * self.world
        return order[:usable][self.rank::self.world][: self.per_rank]

    def __iter__(self):
        return iter(self._indices()[self.start_batch * self.batch_size:])

    def __len__(self) -> int:
        return max(self.per_rank - self.start_batch * self.batch_size, 0)


@dataclass
class Dist:
    rank: int
    local_rank: int
    world: int
    device: torch.device
    flag_group: Any = None
    """Process group of the per-step stop/save flags: a CPU (gloo) one beside NCCL; None: the default group."""

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(spec: JobSpec) -> Dist:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and spec.resources.gpus_per_node > 0
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    flag_group = None
    if world > 1 or "MASTER_ADDR" in os.environ:
        timeout = dt.timedelta(minutes=10)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
        if use_cuda:
            # The flags travel on the CPU: reading an NCCL result every step would make the CPU wait for the
            # GPU's queued work every step, so it could never run ahead (launch kernels, load the next batch).
            flag_group = dist.new_group(backend="gloo", timeout=timeout)
    return Dist(rank, local_rank, world, device, flag_group)


def _all_reduce_max(values: list[int], d: Dist) -> list[int]:
    if not dist.is_initialized():
        return list(values)  # one process: no tensor, no host-device copy, no synchronisation
    t = torch.tensor(values, dtype=torch.int64, device="cpu" if d.flag_group is not None else d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.flag_group)
    return t.tolist()


def _gather(obj: Any, d: Dist) -> list[Any]:
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def _rng_state(d: Dist) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if d.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(d.device)
    return state


def _set_rng_state(state: dict[str, Any], d: Dist) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and d.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], d.device)


def _amp_dtype(spec: JobSpec, device: torch.device) -> torch.dtype | None:
    mode = spec.optim.amp
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _lr_lambda(spec: JobSpec, steps_per_epoch: int):
    o = spec.optim
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
        return 1.0

    return factor


def _optimizer(spec: JobSpec, model: nn.Module) -> torch.optim.Optimizer:
    o = spec.optim
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr)
    if o.optimizer == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=True)


def _set_deterministic() -> None:
    """Deterministic kernels (warn where none exists); before any CUDA work, so cuBLAS sees its workspace setting."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def _compile_probe(device: torch.device) -> str | None:
    """None if ``torch.compile`` works here (compiler toolchain present), else why not."""
    try:
        fn = torch.compile(lambda t: torch.relu(t * 2.0 + 1.0).sum(), dynamic=False)
        fn(torch.ones(8, device=device))
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means: train uncompiled
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"


def _gflops(model: nn.Module, in_chans: int, img_size: int) -> float | None:
    from hpcvit.models.info import count_gflops

    try:
        return count_gflops(model, in_chans, img_size)
    except Exception:  # noqa: BLE001 - a FLOP count is information, never a reason to stop training
        return None


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Trainer:
    """One task's training, from its spec and its task folder."""

    def __init__(self, task: TaskDir):
        self.task = task
        self.spec = task.spec()
        o = self.spec.optim
        if o.deterministic:
            _set_deterministic()
        self.d = _init_distributed(self.spec)
        torch.manual_seed(self.spec.optim.seed)
        np.random.seed(self.spec.optim.seed % 2**32)
        random.seed(self.spec.optim.seed)
        self.ckpt = CheckpointManager(task.checkpoints, self.spec.checkpoint.keep, self.spec.checkpoint.keep_best)
        loaded = self.ckpt.load_latest()
        self.state, self.ckpt_meta = loaded if loaded else (None, None)
        stats = self.state.get("data_stats") if self.state else None
        self.data = build_datasets(self.spec.data, task.sweep.root, stats=stats)
        self.metric_name, self.metric_mode = primary_metric(self.spec.data.task)
        model = build_model(self.spec.model.name, self.data.in_chans, self.data.img_size, 1, **self.spec.model.kwargs)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.gflops = _gflops(model, self.data.in_chans, self.data.img_size) if self.d.main else None
        model.train()
        self.model = model.to(self.d.device)
        if o.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # The EMA copy is taken before DDP and compile wrap the model: a plain module, on the same device.
        self.ema = self._make_ema() if o.ema_decay is not None else None
        self.ddp_module = (nn.parallel.DistributedDataParallel(self.model, device_ids=[self.d.local_rank]
                                                              if self.d.device.type == "cuda" else None)
                           if dist.is_initialized() else None)
        self.ddp = self.ddp_module if self.ddp_module is not None else self.model
        self.compiled = False
        if o.compile:
            self._compile()
        self.optimizer = _optimizer(self.spec, self.model)
        self.accum = o.grad_accum_steps
        # The sampler counts micro-batches; a step is one optimiser step of up to ``accum`` of them.
        self.sampler = ShardSampler(len(self.data.train), self.d.rank, self.d.world, o.batch_size, o.seed,
                                    max_batches=o.max_steps_per_epoch * self.accum if o.max_steps_per_epoch
                                    else None)
        self.steps_per_epoch = math.ceil(self.sampler.batches / self.accum)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(self.spec, self.steps_per_epoch))
        self.amp_dtype = _amp_dtype(self.spec, self.d.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.loss_fn = nn.BCEWithLogitsLoss() if self.spec.data.task == "binary" else nn.MSELoss()
        self.epoch = self.step_in_epoch = self.global_step = 0
        self.best_metric: float | None = None
        self.best_epoch = -1
        self.tracker = None
        self.last_save = time.monotonic()
        if self.state:
            self._restore(self.state)

    def _make_ema(self) -> nn.Module:
        from timm.utils.model_ema import ModelEmaV3

        o = self.spec.optim
        return ModelEmaV3(self.model, decay=o.ema_decay, use_warmup=o.ema_warmup)

    def _compile(self) -> None:
        """Compile the training forward (DDP's wrapper included, as PyTorch recommends); eager on failure."""
        why = _compile_probe(self.d.device)
        if why is None:
            import torch._dynamo

            # A model that cannot be compiled (an unsupported op) runs eagerly, with a warning, instead of failing.
            torch._dynamo.config.suppress_errors = True
            try:
                self.ddp = torch.compile(self.ddp)
                self.compiled = True
                return
            except Exception as exc:  # noqa: BLE001
                why = f"{type(exc).__name__}: {exc}"
        msg = f"optim.compile: torch.compile is not available here ({why}); training uncompiled"
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        self._log(f"WARNING {msg}")

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated, tested and kept as the best: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    # -- checkpoint --------------------------------------------------------------------------------
    def _restore(self, s: dict[str, Any]) -> None:
        self.model.load_state_dict(s["model"])
        if self.ema is not None:
            if s.get("ema") is not None:
                self.ema.module.load_state_dict(s["ema"])
            else:  # a checkpoint from before EMA was switched on: start the average at the current weights
                self.ema.module.load_state_dict(s["model"])
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        if self.scaler and s.get("scaler"):
            self.scaler.load_state_dict(s["scaler"])
        self.epoch, self.step_in_epoch, self.global_step = s["epoch"], s["step_in_epoch"], s["global_step"]
        self.best_metric, self.best_epoch = s["best_metric"], s["best_epoch"]
        if s["world_size"] == self.d.world:
            _set_rng_state(s["rng"][self.d.rank], self.d)
        else:
            self._log(f"checkpoint was written by {s['world_size']} ranks, now {self.d.world}: "
                      f"restarting epoch {self.epoch} from its first batch (not bitwise-exact)")
            self.step_in_epoch = 0

    def save(self, is_best: bool = False) -> None:
        rng = _gather(_rng_state(self.d), self.d)
        if self.d.main:
            self._write_checkpoint(rng, is_best)
        self._sync_after_save()

    def _write_checkpoint(self, rng: list[dict[str, Any]], is_best: bool) -> None:
        state = {
            "version": 1, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.module.state_dict() if self.ema is not None else None,
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "best_metric": self.best_metric, "best_epoch": self.best_epoch, "rng": rng, "world_size": self.d.world,
            "data_stats": self.data.stats.to_dict() if self.data.stats else None,
            "spec": self.spec.model_dump(mode="json"),
        }
        self.ckpt.save(state, step=self.global_step, epoch=self.epoch, metric=self.best_metric, is_best=is_best)
        self.last_save = time.monotonic()

    def _sync_after_save(self) -> None:
        # Other ranks must not read best.pt (or exit) before rank 0 has finished writing it.
        if dist.is_initialized():
            dist.barrier()

    # -- reporting ---------------------------------------------------------------------------------
    def _log(self, msg: str) -> None:
        if self.d.main:
            print(f"[{now_iso()}] {self.task.key} {msg}", flush=True)

    def _progress(self, **extra: Any) -> None:
        if self.d.main:
            write_json_atomic(self.task.path / "progress.json", {
                "epoch": self.epoch, "global_step": self.global_step, "epochs": self.spec.optim.epochs,
                "metric": self.metric_name, "best_metric": self.best_metric, "best_epoch": self.best_epoch,
                "updated": now_iso(), **extra})

    def _open_tracking(self) -> None:
        if not self.d.main:
            return
        from hpcvit.tracking import TaskTracker, flatten

        m = self.task.sweep.manifest
        env = os.environ
        self.tracker = TaskTracker(
            m["tracking_uri"], m["experiment_id"], m["parent_run_id"], self.task.path, self.task.key,
            run_name=self.task.run_name,
            tags={"hpcvit.sweep_id": self.task.sweep.sweep_id, "hpcvit.task_index": str(self.task.index),
                  "hpcvit.model": self.spec.model.name, "hpcvit.dataset": self.spec.data.format,
                  "hpcvit.slurm_job_id": env.get("SLURM_ARRAY_JOB_ID", env.get("SLURM_JOB_ID", "")),
                  "hpcvit.restarts": env.get("SLURM_RESTART_COUNT", "0"), "hpcvit.host": socket.gethostname(),
                  "hpcvit.state": "RUNNING"})
        params = flatten(self.spec.model_dump(mode="json"))
        params.update({"model.n_params": self.n_params, "data.fingerprint": self.data.info["fingerprint"],
                       "data.n_train": self.data.info["n_train"], "data.n_val": self.data.info["n_val"],
                       "model.gflops": self.gflops, "hpcvit.version": __version__, "hpcvit.git_commit": _git_commit(),
                       "torch.version": torch.__version__, "timm.version": _version("timm"),
                       "dist.world_size": self.d.world, "data.positive_fraction_train":
                       self.data.info.get("positive_fraction_train")})
        self.tracker.log_params(params)
        if not self.tracker.resumed:
            spec_file = self.task.path / "spec.json"
            spec_file.write_text(self.spec.model_dump_json(indent=1))
            self.tracker.log_artifact(spec_file)
        self._log(f"MLflow run {self.tracker.run_id} ({'continued' if self.tracker.resumed else 'new'})")

    # -- loops -------------------------------------------------------------------------------------
    def _loader(self, dataset: Any, sampler: Sampler, shuffle_seed: int) -> DataLoader:
        workers = self.spec.data.num_workers
        return DataLoader(dataset, batch_size=self.spec.optim.batch_size, sampler=sampler, num_workers=workers,
                          generator=torch.Generator().manual_seed(shuffle_seed), pin_memory=self.d.device.type == "cuda",
                          worker_init_fn=_ignore_stop_signals if workers else None,
                          persistent_workers=False, drop_last=False)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.d.device.type, dtype=self.amp_dtype)

    def _step_size(self, step: int) -> tuple[int, int]:
        """(micro-batches, samples) of optimiser step ``step`` of the epoch on this rank; (0, 0) past its end."""
        bs, per_rank = self.sampler.batch_size, self.sampler.per_rank
        first = step * self.accum
        last = min(first + self.accum, self.sampler.batches)
        return max(last - first, 0), sum(min(bs, per_rank - j * bs) for j in range(first, last))

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.d.device, non_blocking=True)
        if self.spec.optim.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _backward(self, x: torch.Tensor, y: torch.Tensor, weight: float, sync: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch, its loss weighted by its share of the step; the unweighted loss."""
        o = self.spec.optim
        x, y = self._to_device(x), y.to(self.d.device, non_blocking=True).view(-1, 1)
        if o.label_smoothing and self.spec.data.task == "binary":
            y = y * (1 - o.label_smoothing) + 0.5 * o.label_smoothing
        # DDP all-reduces the gradients only in the backward of a step's last micro-batch.
        no_sync = self.ddp_module.no_sync() if self.ddp_module is not None and not sync else contextlib.nullcontext()
        with no_sync:
            with self._autocast():
                out = self.ddp(x)
                loss = self.loss_fn(out.float(), y)
            scaled = loss if weight == 1.0 else loss * weight
            if self.scaler:
                self.scaler.scale(scaled).backward()
            else:
                scaled.backward()
        return loss.detach()

    def _optimizer_step(self) -> None:
        o = self.spec.optim
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        if o.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
        if self.scaler:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.step_in_epoch += 1
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def train_epoch(self) -> dict[str, float] | None:
        """Train from ``step_in_epoch`` to the end of the epoch; None if stopped by a signal."""
        ck = self.spec.checkpoint
        self.sampler.set_epoch(self.epoch, self.step_in_epoch * self.accum)
        loader = self._loader(self.data.train, self.sampler, self.spec.optim.seed * 7919 + self.epoch)
        it = iter(loader)
        self.ddp.train()
        # Summed on the device (float64, as Python floats would be): no host synchronisation per step.
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.d.device)
        n_seen, t0 = 0, time.perf_counter()
        while True:
            due = (ck.every_minutes is not None and self.d.main
                   and time.monotonic() - self.last_save >= ck.every_minutes * 60)
            stop, save_now = _all_reduce_max([int("signal" in _STOP), int(due)], self.d)
            if stop:
                del it
                self.save()
                return None
            if save_now:
                self.save()
            n_micro, n_samples = self._step_size(self.step_in_epoch)
            if n_micro == 0:
                break
            self.optimizer.zero_grad(set_to_none=True)
            for m in range(n_micro):
                batch = next(it, None)  # the sampler holds exactly the micro-batches _step_size counts
                if batch is None:
                    raise RuntimeError(f"epoch {self.epoch}: data ran out inside step {self.step_in_epoch}")
                x, y = batch
                loss = self._backward(x, y, len(y) / n_samples, sync=m == n_micro - 1)
                loss_sum += loss.double() * len(y)
                n_seen += len(y)
            self._optimizer_step()
            if ck.every_steps and self.global_step % ck.every_steps == 0:
                self.save()
        train_loss_sum = loss_sum.item()
        elapsed = time.perf_counter() - t0
        sums = _gather((train_loss_sum, n_seen), self.d)
        n_total = sum(n for _, n in sums)
        return {"train_loss": sum(s for s, _ in sums) / max(n_total, 1),
                "throughput_img_s": n_total / max(elapsed, 1e-9), "epoch_time_s": elapsed,
                "lr": self.scheduler.get_last_lr()[0]}

    @torch.no_grad()
    def evaluate(self, dataset: Any, model: nn.Module | None = None) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """Metrics of ``model`` (default: :attr:`eval_model`) on ``dataset``, every rank's predictions gathered."""
        model = self.eval_model if model is None else model
        self.ddp.eval()
        if dist.is_initialized():
            # Each rank's last forward updated its own BatchNorm statistics (and its EMA of them); evaluate rank
            # 0's, the saved ones. (DDP broadcasts the model's again before the next training forward, so
            # training is unchanged; only rank 0's EMA is ever saved or evaluated.)
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        indices = list(range(self.d.rank, len(dataset), self.d.world))
        loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=self.spec.optim.batch_size * 2,
                            num_workers=self.spec.data.num_workers,
                            worker_init_fn=_ignore_stop_signals if self.spec.data.num_workers else None)
        outs, ys = [], []
        for x, y in loader:
            with self._autocast():
                outs.append(model(self._to_device(x)).float().view(-1).cpu())
            ys.append(y.view(-1))
        local = (torch.cat(outs).numpy() if outs else np.zeros(0, np.float32),
                 torch.cat(ys).numpy() if ys else np.zeros(0, np.float32))
        parts = _gather(local, self.d)
        out = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        return evaluate_predictions(out, y, self.spec.data.task), out, y

    def run(self) -> int:
        self.last_save = time.monotonic()
        self._open_tracking()
        o = self.spec.optim
        extras = [f"{self.accum} micro-batches per step" if self.accum > 1 else "",
                  f"EMA {o.ema_decay}" if self.ema is not None else "", "compiled" if self.compiled else "",
                  "channels-last" if o.channels_last else "", "deterministic" if o.deterministic else ""]
        self._log(f"start: epoch {self.epoch} step {self.step_in_epoch}/{self.steps_per_epoch} of {o.epochs} epochs, "
                  f"{self.d.world} rank(s) on {self.d.device}, {self.n_params / 1e6:.2f}M params"
                  + "".join(f", {e}" for e in extras if e))
        self._progress(state="RUNNING")
        while self.epoch < o.epochs:
            train_metrics = self.train_epoch()
            if train_metrics is None:
                return self._stopped()
            val_metrics, _, _ = self.evaluate(self.data.val)  # the EMA weights when there are any
            metrics = {**train_metrics, **{f"val_{k}": v for k, v in val_metrics.items()}}
            if self.ema is not None:
                raw_metrics, _, _ = self.evaluate(self.data.val, self.model)
                metrics.update({f"val_raw_{k}": v for k, v in raw_metrics.items()})
            score = metrics[self.metric_name]
            improved = is_better(score, self.best_metric, self.metric_mode)
            if improved:
                self.best_metric, self.best_epoch = score, self.epoch
            if self.tracker:
                self.tracker.log_epoch(self.epoch, {**metrics, f"best_{self.metric_name}": self.best_metric})
            self._log(f"epoch {self.epoch}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            self.epoch += 1
            self.step_in_epoch = 0
            self.save(is_best=improved)
            self._progress(state="RUNNING", last=metrics)
        return self._finished()

    def _finished(self) -> int:
        """Evaluate the best epoch's weights (its EMA with ``optim.ema_decay``) on validation (and test), write
        result and artifacts, close the run."""
        best = self.ckpt.best()
        if best is not None:
            state = torch.load(best, map_location="cpu", weights_only=False)
            self.model.load_state_dict(state["model"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.module.load_state_dict(state["ema"])
        _, val_out, val_y = self.evaluate(self.data.val)
        final: dict[str, float] = {}
        test_out = test_y = None
        if self.data.test is not None:
            test_metrics, test_out, test_y = self.evaluate(self.data.test)
            final = {f"test_{k}": v for k, v in test_metrics.items()}
        if self.d.main:
            np.savez(self.task.path / "predictions.npz", val_out=val_out, val_y=val_y,
                     **({"test_out": test_out, "test_y": test_y} if test_out is not None else {}))
            result = {"status": "completed", "metric": self.metric_name, "best_metric": self.best_metric,
                      "best_epoch": self.best_epoch, "final": final, "finished": now_iso(),
                      "mlflow_run_id": self.tracker.run_id if self.tracker else None}
            if self.tracker:
                self._log_artifacts(best, final, val_out, val_y, test_out, test_y)
            self._progress(state="COMPLETED")
            write_json_atomic(self.task.path / "result.json", result)
        self._log("finished")
        return 0

    def _log_artifacts(self, best: Path | None, final: dict[str, float], val_out: np.ndarray, val_y: np.ndarray,
                       test_out: np.ndarray | None, test_y: np.ndarray | None) -> None:
        from hpcvit.plots import write_roc_artifacts

        assert self.tracker is not None
        if final:
            self.tracker.log_final(final, self.spec.optim.epochs)
        if self.spec.data.task == "binary" and 0 < val_y.sum() < len(val_y):
            use_test = test_out is not None and test_y is not None and 0 < test_y.sum() < len(test_y)
            y, out, split = (test_y, test_out, "test") if use_test else (val_y, val_out, "validation")
            for path in write_roc_artifacts(self.task.path / "roc", y, out,
                                            f"{self.spec.model.name} ({split}, best epoch {self.best_epoch})"):
                self.tracker.log_artifact(path, "roc")
        self.tracker.log_artifact(self.task.path / "predictions.npz")
        if best is not None:
            weights = self.task.path / "best_model.pt"
            torch.save(self.eval_model.state_dict(), weights)
            if weights.stat().st_size < 200 * 2**20:
                self.tracker.log_artifact(weights)
            self.tracker.set_tags({"hpcvit.best_checkpoint": str(best)})
        self.tracker.set_tags({"hpcvit.state": "COMPLETED", "hpcvit.best_epoch": str(self.best_epoch),
                               f"best_{self.metric_name}": f"{self.best_metric}"})
        self.tracker.end("FINISHED")

    def _stopped(self) -> int:
        reason = _STOP.get("signal", "signal")
        if self.d.main:
            write_json_atomic(self.task.path / "stopped.json", {"signal": reason, "epoch": self.epoch,
                                                                 "step_in_epoch": self.step_in_epoch,
                                                                 "global_step": self.global_step, "time": now_iso()})
            if self.tracker:
                self.tracker.set_tags({"hpcvit.state": "PREEMPTED"})
                self.tracker.end("KILLED")
            self._progress(state="PREEMPTED")
        self._log(f"stopped by {reason} at epoch {self.epoch} step {self.step_in_epoch}; checkpoint saved")
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: torchrun ... -m hpcvit.train TASK_DIR", file=sys.stderr)
        return 2
    task_path = Path(argv[0]).resolve()
    task = TaskDir(SweepDir(task_path.parent.parent), int(task_path.name))
    for sig in (signal.SIGTERM, signal.SIGUSR2, signal.SIGINT):
        signal.signal(sig, _on_signal)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    trainer = None
    try:
        trainer = Trainer(task)
        return trainer.run()
    except Exception:
        if int(os.environ.get("RANK", "0")) == 0:
            write_json_atomic(task.path / "failed.json", {"error": traceback.format_exc(limit=8), "time": now_iso()})
            if trainer is not None and trainer.tracker is not None:
                trainer.tracker.set_tags({"hpcvit.state": "FAILED"})
                trainer.tracker.end("FAILED")
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
