"""The process group of one task's ranks, the collectives training uses, and every rank's RNG state."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hpcvit import rngs
from hpcvit.scheduler.jobenv import JobEnv

COLLECTIVE_TIMEOUT = dt.timedelta(minutes=10)


@dataclass
class Dist:
    """This process's place in the task: rank, device, and the group the per-step flags travel on."""

    rank: int
    local_rank: int
    world: int
    device: torch.device
    flag_group: Any = None
    """Process group of the per-step stop/save flags: a CPU (gloo) one beside NCCL; None: the default group."""

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(env: JobEnv, want_gpu: bool) -> Dist:
    """Pick the device and, under torchrun, join the process group (NCCL on GPUs, gloo on the CPU)."""
    use_cuda = torch.cuda.is_available() and want_gpu
    if use_cuda:
        torch.cuda.set_device(env.local_rank)
        device = torch.device("cuda", env.local_rank)
    else:
        device = torch.device("cpu")
    flag_group = None
    if env.distributed:
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=COLLECTIVE_TIMEOUT)
        if use_cuda:
            # The flags travel on the CPU: reading an NCCL result every step would make the CPU wait for the
            # GPU's queued work every step, so it could never run ahead (launch kernels, load the next batch).
            flag_group = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    return Dist(env.rank, env.local_rank, env.world_size, device, flag_group)


def data_parallel(model: torch.nn.Module, d: Dist) -> torch.nn.parallel.DistributedDataParallel | None:
    """``model`` wrapped for data-parallel training (None without a process group).

    With more than two ranks the sum of a gradient depends on its position in DDP's buckets (the reduction
    runs in chunks around the ring, and floating-point addition of three or more terms depends on the order).
    DDP lays its buckets out again after the first step, in the order the gradients became ready, so a
    resumed task, whose first step after the restart has the initial layout, would drift from its
    uninterrupted twin in the last bits. ``find_unused_parameters`` keeps the initial layout for the whole
    run (at the cost of one walk over the autograd graph per step); two ranks add commutatively and keep
    DDP's default."""
    if not dist.is_initialized():
        return None
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[d.local_rank] if d.device.type == "cuda" else None, find_unused_parameters=d.world > 2)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_max(values: list[int], d: Dist) -> list[int]:
    """Element-wise maximum of every rank's ``values`` (the stop and save flags)."""
    if not dist.is_initialized():
        return list(values)  # one process: no tensor, no host-device copy, no synchronisation
    t = torch.tensor(values, dtype=torch.int64, device="cpu" if d.flag_group is not None else d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.flag_group)
    return t.tolist()


def gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def rng_state(d: Dist) -> dict[str, Any]:
    """This rank's torch, numpy, python (and CUDA) generator states, as tensors and plain numbers only
    (loadable with ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if d.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(d.device)
    return state


def set_rng_state(state: dict[str, Any], d: Dist) -> None:
    torch.set_rng_state(state["torch"])
    n, p = state["numpy"], state["python"]
    rngs.restore((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]),
                 (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and d.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], d.device)


def gathered_order(n: int, world: int) -> np.ndarray:
    """Positions of ``n`` samples in the order an evaluation gathers them: rank r evaluates r, r+world, ...,
    and the ranks' parts are concatenated rank by rank."""
    return np.concatenate([np.arange(r, n, world) for r in range(world)]) if n else np.zeros(0, np.int64)
