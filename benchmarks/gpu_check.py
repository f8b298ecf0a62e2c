"""GPU check in one command of under 8 minutes: hpcvit's training loop against a plain PyTorch loop on the
ViT-family models at 3x125x125, and an exact resume on the GPU.

On 2 or more GPUs: 2 ranks, NCCL, DDP, started by torchrun; on 1 GPU: 1 rank, started without torchrun (as
hpcvit starts one rank). Both loops use bf16 autocast and ``torch.compile``; the images are synthetic
(electron/photon layout, 3 channels). Each part below runs in a process of its own, bounded by steps; a part
that fails is recorded with its one-line error and the others still run; a time budget (``--budget-s``) gives
each process at most an equal share of what is left, and skips what can no longer start.

``<model>/hpcvit``  ``Trainer.train_epoch`` on a task of a real sweep folder (sampler, DataLoader workers over
                    the preprocessed memory-mapped cache, the per-step flag all-reduce, autocast, DDP, compile).
                    img/s over the steps after warm-up; data wait: the share of that wall time the training
                    thread spent in the loader's ``next()`` (the worst rank); checkpoint stall: ``Trainer.save()``
                    (snapshot, background write) until training can go on, and the write until durable.
``<model>/plain``   the same registry model and seed, the same preprocessed training images as pinned tensors
                    in memory (each rank its shard), AdamW, BCEWithLogits, DDP, compile, autocast:
                    ``zero_grad; loss = f(model(x), y); backward; step``. Data wait: slicing a batch and
                    copying it to the device; checkpoint stall: ``torch.save`` of model and optimiser and fsync
                    on rank 0, the other ranks waiting.
``resume_twin``     ``deterministic: true``, bf16, the same ranks: one task trains N steps straight; its twin is
                    stopped by SIGUSR2 after N/2 steps (it checkpoints and exits), resumed in a new process and
                    trained to step N; the final weights are compared bitwise.

Gradient clipping is off in both loops (a training choice, not loop overhead).

``--smoke`` runs the same code paths on the CPU with tiny sizes: 2 gloo ranks, 3x32x32, a few steps, no compile.

Usage: python benchmarks/gpu_check.py --out DIR [--smoke] [--models vit_tiny,swin_tiny,coatnet_0]
       [--world 1|2] [--budget-s 450] [--compile | --no-compile] [--batch N] [--steps N] [--warmup N]
Writes DIR/results.json, DIR/results.md and DIR/logs/ (one log per process).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

DEFAULT_MODELS = "vit_tiny,swin_tiny,coatnet_0"
LR, WEIGHT_DECAY, SEED = 1e-3, 0.05, 0
VAL_FRACTION = 0.05
KILL_GRACE_S = 10.0
MIN_LAUNCH_S = 20.0
"""A process is not started with less than this left of the budget (it is recorded as skipped)."""
NOTE = ("Data wait: share of the timed wall time the training thread waited for its next batch (worst rank). "
        "Checkpoint stall: until training can go on (hpcvit: snapshot, background write; plain: torch.save + "
        "fsync), over the median step.")
THROUGHPUT_KEYS = ("img_s", "step_s", "data_wait_frac", "ckpt_stall_s", "ckpt_stall_frac")

# -- configuration --------------------------------------------------------------------------------------------


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What every part runs with: the GPU sizes, or tiny CPU ones with ``--smoke``."""
    import torch

    cuda = torch.cuda.is_available() and not args.smoke
    gpus = torch.cuda.device_count() if cuda else 0
    world = args.world or (2 if (gpus >= 2 or args.smoke) else 1)
    if cuda and world > gpus:
        raise SystemExit(f"--world {world}: only {gpus} GPU(s) here")
    gpu = {"img_size": 125, "batch": 128, "warmup": 5, "steps": 20, "saves": 3, "workers": 4, "compile": True,
           "twin_model": "vit_tiny", "twin_batch": 32, "twin_steps": 8}
    smoke = {"img_size": 32, "batch": 4, "warmup": 1, "steps": 3, "saves": 1, "workers": 1, "compile": False,
             "twin_model": "vit_tiny", "twin_batch": 4, "twin_steps": 4}
    s = {**(smoke if args.smoke else gpu), "channels": 3, "amp": "bf16", "world": world,
         "device": "cuda" if cuda else "cpu", "backend": ("nccl" if cuda else "gloo") if world > 1 else "none",
         "models": [m.strip() for m in args.models.split(",") if m.strip()], "smoke": args.smoke,
         "threads": max(1, (os.cpu_count() or 2) // world // (1 if args.smoke else 2)),
         "torch": torch.__version__, "gpu_name": torch.cuda.get_device_name(0) if cuda else None, "gpus": gpus}
    for key in ("batch", "steps", "warmup"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.compile is not None:
        s["compile"] = args.compile
    if s["device"] == "cpu" and not args.smoke:
        print("no CUDA device here: this runs on the CPU (use --smoke for a quick check of the code paths)",
              file=sys.stderr)
    return s


def _spec(name: str, s: dict[str, Any], n: int, *, model: str, batch: int, steps: int, seed: int,
          optim: str, data: str, sweep: str) -> str:
    gpus = s["world"] if s["device"] == "cuda" else 0
    return f"""
name: {name}
data:
  format: synthetic
  synthetic: {{n_samples: {n}, image_size: {s['img_size']}, channels: {s['channels']}, seed: {seed}}}
  val_fraction: {VAL_FRACTION}
  num_workers: {s['workers']}{data}
model:
  name: {model}
optim:
  optimizer: adamw
  lr: {LR}
  weight_decay: {WEIGHT_DECAY}
  batch_size: {batch}
  max_steps_per_epoch: {steps}
  grad_clip: null
  amp: {s['amp']}
  seed: {SEED}
{optim}
checkpoint: {{every_steps: null, every_minutes: null, keep: 2}}
resources: {{gpus_per_node: {gpus}, nproc_per_node: {s['world']}, cpus_per_task: {os.cpu_count() or 2}}}
sweep:
{sweep}
"""


def _samples(steps: int, batch: int, world: int) -> int:
    """Images enough that every rank's training shard holds ``steps`` full batches (and the validation split
    both classes)."""
    return max(math.ceil(steps * batch * world / (1 - VAL_FRACTION)) + 2 * batch * world, 256)


def make_sweeps(work: Path, s: dict[str, Any]) -> tuple[Any, Any]:
    """The throughput sweep (one task per model, its cache built) and the twin sweep (two identical tasks)."""
    from hpcvit.data import build_datasets
    from hpcvit.orchestrate import create_sweep
    from hpcvit.sweep import load_sweep

    total = s["warmup"] + s["steps"]
    bench = _spec("gpu-check", s, _samples(total, s["batch"], s["world"]), model=s["models"][0], batch=s["batch"],
                  steps=total, seed=0, optim=f"  epochs: 1\n  schedule: constant\n  compile: {str(s['compile']).lower()}",
                  data=f"\n  cache_dir: {work / 'cache'}", sweep=f"  grid:\n    model.name: [{', '.join(s['models'])}]")
    twin = _spec("gpu-check-twin", s, _samples(s["twin_steps"], s["twin_batch"], s["world"]), model=s["twin_model"],
                 batch=s["twin_batch"], steps=s["twin_steps"], seed=1,
                 optim="  epochs: 2\n  compile: false\n  deterministic: true", data="",
                 sweep="  zip:\n    description: [straight, interrupted]")
    out = []
    for name, text in (("bench", bench), ("twin", twin)):
        (work / f"{name}.yaml").write_text(text)
        out.append(create_sweep(load_sweep(work / f"{name}.yaml"), work / name, submit=False, tracking=False))
    build_datasets(out[0].task(0).spec().data, out[0].root)  # the cache, before any timed process needs it
    return out[0], out[1]


# -- the worker processes -------------------------------------------------------------------------------------


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:400]


def _timed(loader: Any, owner: Any) -> Any:
    """``loader`` itself (its class still a subclass of its own), its iterators adding the time spent in
    ``next()`` to ``owner.waited``."""
    cls = type(loader)

    def timed_iter(self: Any) -> Any:
        it = cls.__iter__(self)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            finally:
                owner.waited += time.perf_counter() - t
            yield batch

    loader.__class__ = type(f"Timed{cls.__name__}", (cls,), {"__iter__": timed_iter})
    return loader


def probe_trainer(task: Any, mark_step: int | None = None, signal_at: int | None = None) -> Any:
    """hpcvit's Trainer on ``task``, timing its loader; the clock starts once ``mark_step`` steps are done (the
    device synchronised once there); rank 0 sends itself SIGUSR2 after step ``signal_at``."""
    from hpcvit.training.loop import Trainer

    class Probe(Trainer):
        waited, wait0, t0 = 0.0, 0.0, None

        def _loader(self, *args: Any, **kwargs: Any) -> Any:
            return _timed(super()._loader(*args, **kwargs), self)

        def _optimizer_step(self) -> None:
            super()._optimizer_step()
            if self.global_step == mark_step:
                _sync(self.d.device)
                self.t0, self.wait0 = time.perf_counter(), self.waited
            if self.global_step == signal_at and self.d.main:
                os.kill(os.getpid(), signal.SIGUSR2)

    return Probe(task)


def _dynamo_graphs() -> int:
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # noqa: BLE001 - information only
        return 0


def run_hpcvit(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from hpcvit.ledger import SweepDir
    from hpcvit.training import distributed

    warmup, steps = job["warmup"], job["steps"]
    trainer = probe_trainer(SweepDir(Path(job["sweep"])).task(job["index"]), mark_step=warmup)
    if trainer.steps_per_epoch != warmup + steps:
        raise RuntimeError(f"the epoch holds {trainer.steps_per_epoch} steps, not {warmup + steps}")
    graphs = _dynamo_graphs()
    metrics = trainer.train_epoch()
    _sync(trainer.d.device)
    t1 = time.perf_counter()
    if metrics is None or trainer.t0 is None or trainer.global_step != warmup + steps:
        raise RuntimeError(f"the epoch stopped at step {trainer.global_step} of {warmup + steps}")
    window = t1 - trainer.t0
    waits = distributed.gather(trainer.waited - trainer.wait0, trainer.d)
    stalls, writes = [], []
    for _ in range(job["saves"]):
        distributed.barrier()
        t = time.perf_counter()
        trainer.save()
        _sync(trainer.d.device)
        stalls.append(time.perf_counter() - t)
        t = time.perf_counter()
        trainer.wait_for_checkpoint()
        writes.append(time.perf_counter() - t)
    step_s = window / steps
    stall = sorted(stalls)[len(stalls) // 2]
    out = {"img_s": steps * job["batch"] * trainer.d.world / window, "step_s": step_s,
           "data_wait_frac": max(waits) / window, "ckpt_stall_s": stall, "ckpt_stall_frac": stall / step_s,
           "ckpt_write_s": sorted(writes)[len(writes) // 2], "compiled": trainer.compiled,
           "dynamo_graphs": _dynamo_graphs() - graphs, "amp": str(trainer.amp_dtype),
           "params_m": trainer.n_params / 1e6}
    del trainer
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def run_plain(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    import torch.distributed as dist
    from torch import nn

    from hpcvit.data import build_datasets
    from hpcvit.scheduler.jobenv import JobEnv
    from hpcvit.ledger import SweepDir
    from hpcvit.models import build_model

    env = JobEnv.read()
    cuda = job["device"] == "cuda"
    device = torch.device("cuda", env.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if env.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    sweep = SweepDir(Path(job["sweep"]))
    spec = sweep.task(job["index"]).spec()
    warmup, steps, batch = job["warmup"], job["steps"], job["batch"]
    need = (warmup + steps) * batch
    x_np, y_np = build_datasets(spec.data, sweep.root).train.arrays()
    x = torch.from_numpy(x_np[env.rank::env.world_size][:need].copy())
    y = torch.from_numpy(y_np[env.rank::env.world_size][:need].copy()).float()
    if len(x) < need:
        raise RuntimeError(f"rank {env.rank} holds {len(x)} training images, fewer than {need}")
    if cuda:
        x, y = x.pin_memory(), y.pin_memory()
    torch.manual_seed(SEED)
    model = build_model(spec.model.name, x.shape[1], x.shape[2], 1).to(device)
    model.train()
    ddp = (nn.parallel.DistributedDataParallel(model, device_ids=[env.local_rank] if cuda else None)
           if env.world_size > 1 else model)
    if job["compile"]:
        import torch._dynamo

        torch._dynamo.config.suppress_errors = False  # a plain loop: torch's defaults, failures show
        forward = torch.compile(ddp)
    else:
        forward = ddp
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loss_fn = nn.BCEWithLogitsLoss()
    dtype = torch.bfloat16 if job["amp"] == "bf16" else None
    waited, t0 = 0.0, 0.0
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            t0, waited = time.perf_counter(), 0.0
        t = time.perf_counter()
        xb = x[i * batch:(i + 1) * batch].to(device, non_blocking=True)
        yb = y[i * batch:(i + 1) * batch].to(device, non_blocking=True).view(-1, 1)
        waited += time.perf_counter() - t
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = loss_fn(forward(xb).float(), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    window = time.perf_counter() - t0
    waits = [waited]
    if dist.is_initialized():
        waits = [0.0] * env.world_size
        dist.all_gather_object(waits, waited)
    stalls = []
    path = Path(job["ckpt_dir"]) / f"plain-{spec.model.name}.pt"
    for _ in range(job["saves"]):
        if dist.is_initialized():
            dist.barrier()
        t = time.perf_counter()
        if env.rank == 0:
            with open(path, "wb") as f:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, f)
                f.flush()
                os.fsync(f.fileno())
        if dist.is_initialized():
            dist.barrier()
        stalls.append(time.perf_counter() - t)
    path.unlink(missing_ok=True)
    step_s = window / steps
    stall = sorted(stalls)[len(stalls) // 2]
    return {"img_s": steps * batch * env.world_size / window, "step_s": step_s,
            "data_wait_frac": max(waits) / window, "ckpt_stall_s": stall, "ckpt_stall_frac": stall / step_s,
            "compiled": bool(job["compile"]), "amp": str(dtype)}


def _save_weights(trainer: Any, path: str) -> None:
    if trainer.d.main:
        import torch

        torch.save({k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}, path)


def run_twin(job: dict[str, Any]) -> dict[str, Any]:
    """One leg of the twin: ``straight`` (task 0, N steps), ``half`` (task 1, stopped after N/2), ``resume``."""
    from hpcvit.ledger import SweepDir
    from hpcvit.training import stop

    sweep, n, leg = SweepDir(Path(job["sweep"])), job["twin_steps"], job["leg"]
    if leg == "half":
        stop.install_handlers()
        trainer = probe_trainer(sweep.task(1), signal_at=n // 2)
        if trainer.train_epoch() is not None:
            raise RuntimeError(f"the interrupted twin was not stopped (trained {trainer.global_step} steps)")
        return {"stopped_at": trainer.global_step}
    trainer = probe_trainer(sweep.task(0 if leg == "straight" else 1))
    started = trainer.global_step
    if trainer.train_epoch() is None or trainer.global_step != n:
        raise RuntimeError(f"the {leg} twin ended at step {trainer.global_step}, not {n}")
    _save_weights(trainer, job["weights"])
    return {"started_at": started, "steps": trainer.global_step}


def worker(job_file: Path) -> NoReturn:
    """A process of one launch: run its parts, rank 0 writing the results file after each."""
    import torch

    from hpcvit import fsio
    from hpcvit.scheduler.jobenv import JobEnv
    from hpcvit.training import distributed

    job = json.loads(job_file.read_text())
    env = JobEnv.read()
    torch.set_num_threads(job["threads"])
    results: dict[str, Any] = {}
    parts: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]]
    if job["kind"] == "throughput":
        parts = [(f"{job['model']}/hpcvit", run_hpcvit), (f"{job['model']}/plain", run_plain)]
    else:
        parts = [(f"twin_{job['leg']}", run_twin)]
    for name, fn in parts:
        t = time.perf_counter()
        try:
            record = {"status": "ok", **fn(job)}
        except Exception as exc:  # noqa: BLE001 - recorded, the next part still runs
            traceback.print_exc()
            record = {"status": "failed", "error": _one_line(exc)}
        # the part's trainer (a reference cycle) goes now: its loader's workers shut down before the next part
        gc.collect()
        record["seconds"] = time.perf_counter() - t
        results[name] = record
        print(f"rank {env.rank}: {name}: {record}", flush=True)
        if env.rank == 0:
            fsio.write_json(Path(job["result"]), results)
    distributed.shutdown()
    # Everything is written: end without the interpreter's exit handlers, which join the loader's persistent
    # workers, and those ignore SIGTERM (the trainer's stop signals); they exit when they see their parent gone.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# -- the parent: launches, budget, results --------------------------------------------------------------------

_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*")


def _log_error(log: Path) -> str:
    """The last line of ``log`` that names an exception, else its last line."""
    lines = [ln.rstrip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    named = [ln for ln in lines if _ERROR_LINE.match(ln) and not ln.startswith("torch.distributed.elastic")]
    return (named or lines or ["(empty log)"])[-1][:400]


def launch(job: dict[str, Any], name: str, s: dict[str, Any], work: Path, logs: Path,
           timeout: float) -> tuple[dict[str, Any], str | None]:
    """Run one process (torchrun for 2 ranks); its results file and, if it did not end well, why not."""
    job = {**job, "result": str(work / f"{name}.result.json")}
    job_file = work / f"{name}.job.json"
    job_file.write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE")}
    env["OMP_NUM_THREADS"] = str(s["threads"])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    script = [str(Path(__file__).resolve()), "--worker", str(job_file)]
    if s["world"] > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={s['world']}",
               "--max-restarts=0", *script]
    else:
        cmd = [sys.executable, *script]
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
    log = logs / f"{name}.log"
    started = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    why = None
    try:
        rc = proc.wait(timeout=timeout)
        if rc != 0:
            why = f"exit status {rc}: {_log_error(log)}"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        why = f"stopped after {timeout:.0f} s (its share of the time budget); log: {_log_error(log)}"
    result_file = Path(job["result"])
    results = json.loads(result_file.read_text()) if result_file.exists() else {}
    for record in results.values():  # the process's whole wall time: start-up and compilation included
        record["process_s"] = time.perf_counter() - started
    return results, why


def _failed(error: str) -> dict[str, Any]:
    return {"status": "failed", "error": error}


def checked(record: dict[str, Any] | None, keys: tuple[str, ...], why: str | None) -> dict[str, Any]:
    """``record`` if it is a failure with its error or holds a finite number under every key; else a failure."""
    if record is None:
        return _failed(why or "the process wrote no result")
    if record.get("status") == "failed":
        return record if record.get("error") else _failed("failed without an error message")
    bad = [k for k in keys if not isinstance(record.get(k), (int, float)) or not math.isfinite(record[k])
           or record[k] < 0]
    if bad:
        return {**record, "status": "failed", "error": f"no figure for {', '.join(bad)}"}
    return record


def compare_weights(a_path: Path, b_path: Path) -> dict[str, Any]:
    import torch

    a, b = torch.load(a_path, weights_only=True), torch.load(b_path, weights_only=True)
    if a.keys() != b.keys():
        return {"equal": False, "tensors": len(a), "differing": sorted(set(a) ^ set(b))[:5], "max_abs_diff": None}
    differing = [k for k in a if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])]
    diffs = [float((a[k].double() - b[k].double()).abs().max()) for k in differing
             if a[k].shape == b[k].shape and a[k].is_floating_point()]
    return {"equal": not differing, "tensors": len(a), "differing": differing[:5],
            "max_abs_diff": max(diffs) if diffs else 0.0}


class Budget:
    """Each launch gets at most an equal share of the seconds left; what it leaves unused goes to the rest."""

    def __init__(self, seconds: float, launches: int):
        self.deadline = time.monotonic() + seconds
        self.left = launches

    def share(self) -> float:
        remaining = self.deadline - time.monotonic() - KILL_GRACE_S
        share = remaining / max(self.left, 1)
        self.left -= 1
        return share


def run_all(s: dict[str, Any], out: Path, work: Path, budget_s: float) -> dict[str, Any]:
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    parts: dict[str, Any] = {}
    t = time.perf_counter()
    try:
        bench, twin = make_sweeps(work, s)
        setup_error = None
    except Exception as exc:  # noqa: BLE001 - every part then fails with it
        traceback.print_exc()
        bench = twin = None
        setup_error = f"setup: {_one_line(exc)}"
    setup_s = time.perf_counter() - t
    print(f"setup (data, cache, sweeps): {setup_s:.1f} s", flush=True)
    budget = Budget(budget_s - setup_s, 3 + len(s["models"]))
    base = {"device": s["device"], "threads": s["threads"], "amp": s["amp"], "batch": s["batch"],
            "warmup": s["warmup"], "steps": s["steps"], "saves": s["saves"], "compile": s["compile"],
            "twin_steps": s["twin_steps"], "ckpt_dir": str(work)}

    # the exact-resume twin first: three short processes, no compile
    twin_error = setup_error
    legs: dict[str, Any] = {}
    started = 0
    for leg in ("straight", "half", "resume"):
        if twin_error:
            break
        share, started = budget.share(), started + 1
        if share < MIN_LAUNCH_S:
            twin_error = "skipped: the time budget was spent"
            break
        job = {**base, "kind": "twin", "leg": leg, "sweep": str(twin.root), "weights": str(work / f"twin-{leg}.pt")}
        results, why = launch(job, f"twin-{leg}", s, work, logs, share)
        legs[leg] = checked(results.get(f"twin_{leg}"), (), why)
        print(f"twin {leg}: {legs[leg]}", flush=True)
        if legs[leg]["status"] != "ok":
            twin_error = f"{leg}: {legs[leg]['error']}"
    if twin_error:
        budget.left -= 3 - started
        parts["resume_twin"] = _failed(twin_error)
    else:
        cmp = compare_weights(work / "twin-straight.pt", work / "twin-resume.pt")
        parts["resume_twin"] = {"status": "ok", "model": s["twin_model"], "batch": s["twin_batch"],
                                "steps": legs["straight"]["steps"], "stopped_at": legs["half"]["stopped_at"],
                                "resumed_at": legs["resume"]["started_at"], **cmp,
                                "seconds": sum(leg["seconds"] for leg in legs.values()),
                                "process_s": sum(leg["process_s"] for leg in legs.values())}

    for i, model in enumerate(s["models"]):
        names = (f"{model}/hpcvit", f"{model}/plain")
        share = budget.share()
        if setup_error or share < MIN_LAUNCH_S:
            for n in names:
                parts[n] = _failed(setup_error or "skipped: the time budget was spent")
            continue
        job = {**base, "kind": "throughput", "model": model, "index": i, "sweep": str(bench.root)}
        results, why = launch(job, model, s, work, logs, share)
        for n in names:
            parts[n] = checked(results.get(n), THROUGHPUT_KEYS, why)
            print(f"{n}: {parts[n]}", flush=True)
    return {"settings": s, "setup_s": setup_s, "budget_s": budget_s, "parts": parts}


# -- the report -----------------------------------------------------------------------------------------------


def _num(v: Any, spec: str, scale: float = 1.0, unit: str = "") -> str:
    return "-" if not isinstance(v, (int, float)) else f"{format(v * scale, spec)}{unit}"


def markdown(result: dict[str, Any]) -> str:
    s, parts = result["settings"], result["parts"]
    where = (f"{s['world']} x {s['gpu_name']}" if s["device"] == "cuda" else f"CPU, {s['world']} rank(s)")
    head = (f"{where}, backend {s['backend']}, torch {s['torch']}, {s['amp']} autocast, compile "
            f"{'on' if s['compile'] else 'off'}, {s['channels']}x{s['img_size']}x{s['img_size']}, batch "
            f"{s['batch']} per rank, {s['steps']} timed steps after {s['warmup']} warm-up; "
            f"{result['elapsed_s']:.0f} s in all (setup {result['setup_s']:.0f} s).")
    lines = [f"# GPU check{' (smoke, CPU)' if s['smoke'] else ''}", "", head, "",
             "| model | loop | img/s | vs plain | data wait | checkpoint stall | stall / step | durable write | status |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model in s["models"]:
        plain = parts.get(f"{model}/plain", {})
        for loop in ("hpcvit", "plain"):
            r = parts.get(f"{model}/{loop}", {})
            ok = r.get("status") == "ok"
            ratio = (r["img_s"] / plain["img_s"] if ok and plain.get("status") == "ok" and plain["img_s"] > 0
                     else None)
            status = ("ok" + (" (compiled)" if r.get("compiled") else "")) if ok else \
                f"FAILED: {r.get('error', 'missing')}".replace("|", "/")
            lines.append(f"| {model} | {loop} | {_num(r.get('img_s'), '.0f')} | {_num(ratio, '.2f', unit='x')} | "
                         f"{_num(r.get('data_wait_frac'), '.1f', 100, ' %')} | {_num(r.get('ckpt_stall_s'), '.3f', unit=' s')} | "
                         f"{_num(r.get('ckpt_stall_frac'), '.0f', 100, ' %')} | {_num(r.get('ckpt_write_s'), '.2f', unit=' s')} | "
                         f"{status} |")
    t = parts["resume_twin"]
    lines.append("")
    if t.get("status") == "ok":
        lines.append(f"Exact resume ({t['model']}, deterministic, batch {t['batch']} per rank): {t['steps']} steps "
                     f"straight vs stopped after {t['stopped_at']} and resumed at {t['resumed_at']}: final weights "
                     + ("bitwise equal" if t["equal"] else f"DIFFER ({len(t['differing'])}+ of {t['tensors']} "
                        f"tensors, max |diff| {t['max_abs_diff']})") + f" ({t['tensors']} tensors).")
    else:
        lines.append(f"Exact resume: FAILED: {t.get('error')}")
    lines += ["", NOTE]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="directory for results.json, results.md and logs/")
    ap.add_argument("--smoke", action="store_true", help="the same code paths on the CPU, tiny sizes")
    ap.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated registry names ({DEFAULT_MODELS})")
    ap.add_argument("--world", type=int, choices=(1, 2), help="ranks (default: 2 with 2+ GPUs or --smoke, else 1)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="wall-clock budget of the whole check")
    ap.add_argument("--batch", type=int, help="batch per rank")
    ap.add_argument("--steps", type=int, help="timed steps per loop")
    ap.add_argument("--warmup", type=int, help="untimed steps first (compilation)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction,
                    help="torch.compile in both loops (default: on, off with --smoke)")
    ap.add_argument("--work", type=Path, help="keep the sweeps and data here (default: a temporary directory)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    if args.out is None:
        ap.error("--out DIR is required")
    if args.steps is not None and args.steps < 1 or args.warmup is not None and args.warmup < 1:
        ap.error("--steps and --warmup must be at least 1")
    from hpcvit.models import check_model_name

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        try:
            check_model_name(m)
        except ValueError as exc:
            ap.error(f"--models: {exc}")
    t0 = time.perf_counter()
    s = settings(args)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"gpu check: {s['device']}, {s['world']} rank(s), backend {s['backend']}, models {', '.join(s['models'])}, "
          f"budget {args.budget_s:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="hpcvit-gpu-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = run_all(s, args.out, work, args.budget_s - (time.perf_counter() - t0))
        result["elapsed_s"] = time.perf_counter() - t0
    (args.out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "results.md").write_text(markdown(result))
    print(markdown(result))
    failed = [n for n, r in result["parts"].items() if r["status"] != "ok"]
    twin = result["parts"]["resume_twin"]
    return 1 if failed or not twin.get("equal") else 0


if __name__ == "__main__":
    sys.exit(main())
