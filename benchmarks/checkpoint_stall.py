"""How long a checkpoint holds up training, as a fraction of one training step, written in and out of line.

One process trains a registry model (default CoAtNet-0, 27M parameters) with AdamW on random images and
checkpoints it with :class:`hpcvit.checkpoint.CheckpointManager` (model + optimiser state, the format a
task writes), measured in the same run:

step        median time of a training step (forward, backward, optimiser step) with no checkpoint
sync        ``save``: the whole write (torch.save, fsync, SHA-256, sidecar, prune) before the next step
async       ``save_async``: the stall of the training thread (the snapshot: tensors copied) before it
            trains on; and the extra time of the steps that ran while the writer was at work (the writer
            shares the CPU cores with training, at a lower priority), summed until the write is durable.
            The first background save allocates the snapshot's memory; later ones copy into it: the stall
            reported is the median of the later ones, the first is reported beside it

Each ratio is over the median step; the target is a stall under 10 % of one step. With ``--device cuda``
the snapshot is a device-side copy and the writer moves it to pinned host memory on its own stream.

Usage: python benchmarks/checkpoint_stall.py [--model coatnet_0] [--img-size 32] [--in-chans 2] [--batch 64]
       [--saves 4] [--device cpu|cuda] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET = 0.10


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_name: str, img_size: int, in_chans: int, batch: int, saves: int, device_name: str,
            directory: Path) -> dict[str, Any]:
    import torch
    from torch import nn

    from hpcvit.checkpoint import CheckpointManager
    from hpcvit.models import build_model

    device = torch.device(device_name)
    torch.manual_seed(0)
    model = build_model(model_name, in_chans, img_size, 1).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.BCEWithLogitsLoss()
    x = torch.randn(batch, in_chans, img_size, img_size, device=device)
    y = torch.randint(0, 2, (batch, 1), device=device).float()

    def step() -> float:
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        _sync(device)
        return time.perf_counter() - t

    def state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state()}

    for _ in range(3):
        step()
    step_s = statistics.median(step() for _ in range(8))
    mgr = CheckpointManager(directory, keep=2)
    sync_s, stall_s, extra_s, write_steps = [], [], [], []
    for k in range(saves):
        t = time.perf_counter()
        mgr.save(state(), step=2 * k, epoch=0)
        sync_s.append(time.perf_counter() - t)
        step()
        t = time.perf_counter()
        mgr.save_async(state(), step=2 * k + 1, epoch=0)
        _sync(device)
        stall_s.append(time.perf_counter() - t)
        extra, n = 0.0, 0
        while mgr.writing:
            extra += step() - step_s
            n += 1
        mgr.wait()
        extra_s.append(max(extra, 0.0))
        write_steps.append(n)
    n_params = sum(p.numel() for p in model.parameters())
    nbytes = max(p.stat().st_size for p in directory.glob("ckpt-*.pt"))
    return {"model": model_name, "device": device_name, "mparams": n_params / 1e6, "checkpoint_mb": nbytes / 2**20,
            "batch": batch, "img_size": img_size, "step_s": step_s,
            "sync_stall_s": statistics.median(sync_s), "async_stall_s": statistics.median(stall_s[1:] or stall_s),
            "async_first_stall_s": stall_s[0], "async_first_ratio": stall_s[0] / step_s,
            "async_extra_step_time_s": statistics.median(extra_s), "steps_during_write": statistics.median(write_steps),
            "sync_ratio": statistics.median(sync_s) / step_s,
            "async_ratio": statistics.median(stall_s[1:] or stall_s) / step_s,
            "async_extra_ratio": statistics.median(extra_s) / step_s, "target": TARGET}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="coatnet_0")
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--in-chans", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--saves", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        r = measure(args.model, args.img_size, args.in_chans, args.batch, args.saves, args.device, Path(tmp))
    print(f"{r['model']} ({r['mparams']:.1f}M params, checkpoint {r['checkpoint_mb']:.0f} MiB), {r['device']}, "
          f"batch {r['batch']} x {args.in_chans}x{r['img_size']}x{r['img_size']}: one step {r['step_s']:.3f} s")
    print(f"{'checkpoint':<34}{'stall s':>9}{'/ step':>9}")
    print(f"{'sync save (before)':<34}{r['sync_stall_s']:>9.3f}{r['sync_ratio']:>9.1%}")
    print(f"{'async save: first one':<34}{r['async_first_stall_s']:>9.3f}{r['async_first_ratio']:>9.1%}")
    print(f"{'async save: training thread stall':<34}{r['async_stall_s']:>9.3f}{r['async_ratio']:>9.1%}")
    print(f"{'async save: slower steps, summed':<34}{r['async_extra_step_time_s']:>9.3f}{r['async_extra_ratio']:>9.1%}"
          f"  ({r['steps_during_write']:.0f} steps during the write)")
    ok = r["async_ratio"] < TARGET
    print(f"target: stall < {TARGET:.0%} of a step: {'PASS' if ok else 'FAIL'}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
