"""Training images/s of hpcvit's training loop against a minimal plain PyTorch loop, per model, in one run.

ours   ``Trainer.train_epoch`` on a real sweep folder (single process, no DDP): sampler, DataLoader over the
       sweep's synthetic data set (``--data``), stop-flag check, AMP/scaler/clip branches, LR scheduler,
       loss summed on the device, checkpointing off.
plain  the same registry model (same seed), the same training images as tensors in memory (shuffled once,
       sliced per step), AdamW with the same lr and weight decay, BCEWithLogits, the same batch size, steps,
       autocast dtype and torch threads: ``zero_grad; loss = f(model(x), y); backward; step``.

Both run the same number of steps after warm-up steps, alternately, ``--repeats`` times; the table gives
the medians and overhead % = (plain / ours - 1) * 100, PASS when below ``--max-overhead`` (5 %).
Gradient clipping is off for both (``optim.grad_clip: null``): it is a training choice, not loop overhead.

``--data``: ``cache`` (default) reads the preprocessed memory-mapped cache (``data.cache_dir``), what large
runs use; ``hdf5`` reads and preprocesses the HDF5 file every batch (no cache); ``memory`` hands the trainer
the plain loop's in-memory tensors (``ArrayDataset``), isolating the loop itself from data loading.

Usage: python benchmarks/train_throughput.py [--models cnn_small,vit_seed] [--batch 64] [--img-size 32]
       [--in-chans 2] [--steps 20] [--warmup 5] [--repeats 5] [--device cpu|cuda] [--threads N] [--data cache]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_MODELS = "cnn_small,vit_seed,resnet15,deepvit,vit_tiny,swin_tiny,coatnet_0,efficientnet_b0"
SEED = 0
LR, WEIGHT_DECAY = 1e-3, 0.05


def make_sweep(root: Path, models: list[str], args: argparse.Namespace) -> Any:
    """A sweep folder with one task per model, as ``hpcvit submit`` writes it (no tracking: no ``run()``)."""
    from hpcvit.orchestrate import create_sweep
    from hpcvit.sweep import load_sweep

    val_fraction = 0.1
    n = math.ceil(args.batch * args.steps / (1 - val_fraction)) + 2 * args.batch
    cache = f"\n  cache_dir: {root / 'cache'}" if args.data == "cache" else ""
    spec = f"""
name: train-throughput
data:
  format: synthetic
  synthetic: {{n_samples: {n}, image_size: {args.img_size}, channels: {args.in_chans}, seed: 0}}
  val_fraction: {val_fraction}
  num_workers: 0{cache}
model:
  name: {models[0]}
optim:
  optimizer: adamw
  lr: {LR}
  weight_decay: {WEIGHT_DECAY}
  epochs: 1000
  batch_size: {args.batch}
  max_steps_per_epoch: {args.steps}
  grad_clip: null
  amp: {args.amp}
  seed: {SEED}
checkpoint: {{every_steps: null, every_minutes: null}}
resources: {{gpus_per_node: {1 if args.device == 'cuda' else 0}}}
sweep:
  grid:
    model.name: [{', '.join(models)}]
"""
    spec_file = root / "spec.yaml"
    spec_file.write_text(spec)
    return create_sweep(load_sweep(spec_file), root / "runs", submit=False, tracking=False)


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Plain:
    """The minimal loop: registry model, in-memory tensors, AdamW, BCEWithLogits."""

    def __init__(self, name: str, x: Any, y: Any, trainer: Any, args: argparse.Namespace):
        import torch
        from torch import nn

        from hpcvit.models import build_model

        self.device, self.batch, self.amp_dtype = trainer.d.device, args.batch, trainer.amp_dtype
        torch.manual_seed(SEED)
        self.model = build_model(name, x.shape[1], x.shape[2], 1).to(self.device)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.loss_fn = nn.BCEWithLogitsLoss()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED))
        self.x, self.y = x[order].contiguous(), y[order].contiguous()
        if self.device.type == "cuda":
            self.x, self.y = self.x.pin_memory(), self.y.pin_memory()

    def run(self, steps: int) -> float:
        import contextlib

        import torch

        t0 = time.perf_counter()
        for i in range(steps):
            j = (i * self.batch) % (len(self.x) - self.batch + 1)
            xb = self.x[j:j + self.batch].to(self.device, non_blocking=True)
            yb = self.y[j:j + self.batch].to(self.device, non_blocking=True).view(-1, 1)
            ctx = (torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None
                   else contextlib.nullcontext())
            with ctx:
                loss = self.loss_fn(self.model(xb).float(), yb)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
        _sync(self.device)
        return time.perf_counter() - t0


def ours(trainer: Any, steps: int) -> float:
    """Wall time of ``train_epoch`` over the last ``steps`` steps of an epoch (``max_steps_per_epoch`` ends it)."""
    trainer.epoch += 1
    trainer.step_in_epoch = trainer.steps_per_epoch - steps
    t0 = time.perf_counter()
    metrics = trainer.train_epoch()
    _sync(trainer.d.device)
    elapsed = time.perf_counter() - t0
    assert metrics is not None and trainer.step_in_epoch == trainer.steps_per_epoch
    return elapsed


def bench_model(sweep: Any, index: int, name: str, args: argparse.Namespace) -> dict[str, Any]:
    import gc

    import torch

    from hpcvit.data import ArrayDataset
    from hpcvit.models.info import model_info
    from hpcvit.training.loop import Trainer

    info = model_info(name, args.in_chans, args.img_size)
    trainer = Trainer(sweep.task(index))
    x_np, y_np = trainer.data.train.arrays()
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)
    if args.data == "memory":
        trainer.data.train = ArrayDataset(x_np, y_np)
    plain = Plain(name, x, y, trainer, args)
    ours(trainer, args.warmup)
    plain.run(args.warmup)
    t_ours, t_plain = [], []
    for r in range(args.repeats):
        # alternate the order, so that a slow phase of a shared machine hits both alike
        if r % 2 == 0:
            t_ours.append(ours(trainer, args.steps))
            t_plain.append(plain.run(args.steps))
        else:
            t_plain.append(plain.run(args.steps))
            t_ours.append(ours(trainer, args.steps))
    images = args.steps * args.batch
    ours_ips, plain_ips = images / statistics.median(t_ours), images / statistics.median(t_plain)
    overhead = (plain_ips / ours_ips - 1) * 100
    row = {"model": name, "params_m": info["params_m"], "gflops": info["gflops"], "ours_img_s": ours_ips,
           "plain_img_s": plain_ips, "overhead_pct": overhead, "pass": overhead < args.max_overhead,
           "ours_s": t_ours, "plain_s": t_plain}
    del trainer, plain
    gc.collect()
    return row


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    head = f"{'model':<16} {'params (M)':>10} {'GFLOPs/img':>10} {'ours img/s':>11} {'plain img/s':>11} " \
           f"{'overhead %':>10}  result"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<16} {_fmt(r['params_m'], '10.2f')} {_fmt(r['gflops'], '10.3f')} "
              f"{r['ours_img_s']:11.1f} {r['plain_img_s']:11.1f} {r['overhead_pct']:+10.1f}  "
              f"{'PASS' if r['pass'] else 'FAIL'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS,
                    help=f"comma-separated registry names (default {DEFAULT_MODELS})")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--in-chans", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps of each loop first")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of each loop (medians reported)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads for both loops (default: torch's)")
    ap.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                    help="mixed precision of both loops (auto: bf16 on CUDA, off on CPU)")
    ap.add_argument("--data", choices=("cache", "hdf5", "memory"), default="cache",
                    help="what our loop reads (see the module docstring)")
    ap.add_argument("--max-overhead", type=float, default=5.0, help="PASS below this overhead in %%")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if not 0 < args.warmup <= args.steps:
        ap.error("--warmup must be between 1 and --steps (both loops warm up on the epoch's last steps)")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} thread(s), "
          f"input {args.in_chans}x{args.img_size}x{args.img_size}, batch {args.batch}, {args.steps} steps x "
          f"{args.repeats} repeats after {args.warmup} warm-up steps, data: {args.data}, amp: {args.amp}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="hpcvit-train-bench-") as tmp:
        sweep = make_sweep(Path(tmp), models, args)
        for i, name in enumerate(models):
            rows.append(bench_model(sweep, i, name, args))
            r = rows[-1]
            print(f"  {name}: ours {r['ours_img_s']:.1f} img/s, plain {r['plain_img_s']:.1f} img/s "
                  f"({r['overhead_pct']:+.1f} %)", flush=True)
    print()
    print_table(rows, args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
