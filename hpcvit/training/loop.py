"""The training loop of one task: DDP training resumable to the exact step, evaluation, the outcome.

Stopping is cooperative: SIGTERM, SIGUSR2 or SIGINT on any rank sets a flag (:mod:`.stop`); before each
optimiser step (before fetching its first micro-batch) the ranks all-reduce their flags, so all of them stop at
the same step, save one checkpoint and exit. Rank 0 writes ``stopped.json`` (to be requeued) or
``result.json`` (finished) into the task folder for the launcher to read.

A step is one optimiser step of ``optim.grad_accum_steps`` micro-batches; the sampler counts micro-batches,
so a resumed epoch starts at micro-batch ``step_in_epoch * grad_accum_steps``. Optional: an EMA of the
weights (evaluated instead of the raw weights), ``torch.compile``, channels-last, deterministic kernels.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Sampler

from hpcvit.checkpoint import CheckpointManager
from hpcvit.ledger import TaskDir
from hpcvit.objectives import Objective, get_objective, is_better
from hpcvit.scheduler.jobenv import JobEnv
from hpcvit.rngs import host_generators_kept
from hpcvit.states import TaskState
from hpcvit.training import distributed, optim, startup, stop, workers as worker_procs
from hpcvit.training.distributed import Dist
from hpcvit.training.guard import NonFiniteGuard
from hpcvit.training.model import build_model
from hpcvit.training.meter import EpochMeter
from hpcvit.training.report import TaskReport
from hpcvit.training.sampler import ShardSampler, StepPlan
from hpcvit.training.state import CheckpointFormatError, TrainProgress, TrainState

RUN_LOCK_WAIT_S = 300.0
"""How long a new trainer waits for a previous copy of its task to exit before it refuses to start."""


class Trainer:
    """One task's training, from its spec and its task folder; what differs between kinds of task (data, model,
    loss, metrics, artifacts) is its :class:`~hpcvit.objectives.Objective`'s."""

    def __init__(self, task: TaskDir, env: JobEnv | None = None):
        self.task = task
        self.spec = task.spec()
        o = self.spec.optim
        if o.deterministic:
            optim.set_deterministic()
        self.env = env or JobEnv.read()
        self.d: Dist = distributed.init_distributed(self.env, self.spec.resources.gpus_per_node > 0)
        # One live trainer per task: rank 0 holds the task's lock; every rank reads checkpoints only after it.
        self.run_lock = task.acquire_trainer_lock(RUN_LOCK_WAIT_S) if self.d.main else None
        distributed.barrier()
        startup.mark("process group")
        distributed.seed_everything(o.seed)
        self.report = TaskReport(task, self.spec, self.d.main, self.env)
        self.ckpt = CheckpointManager(task.checkpoints, self.spec.checkpoint.keep, self.spec.checkpoint.keep_best)
        if self.d.main:
            self.ckpt.clean()
        loaded = self.ckpt.load_latest(check=TrainState.check)
        if loaded is None and self.ckpt.skipped:
            raise RuntimeError(f"none of the checkpoints in {task.checkpoints} can be resumed from "
                               f"({len(self.ckpt.skipped)} refused; the newest: {self.ckpt.skipped[0]}); "
                               "move them away to train this task from scratch")
        saved, self.ckpt_meta = loaded if loaded else (None, None)
        startup.mark("checkpoint read")
        self.objective: Objective = get_objective(self.spec.data.task)(self.spec, task.sweep.root)
        self.data = self.objective.build_data(saved)
        startup.mark("data")
        self.metric_name, self.metric_mode = self.objective.primary_metric(self.spec.checkpoint.best_metric)
        model, self._init_notes = build_model(self.objective, self.data, fresh=saved is None, log=self.report.log)
        self.n_params = sum(p.numel() for p in model.parameters())
        model.train()
        self.model = model.to(self.d.device)
        if o.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # The EMA copy is taken before DDP and compile wrap the model: a plain module, on the same device.
        self.ema = self._make_ema() if o.ema_decay is not None else None
        self.ddp_module = distributed.data_parallel(self.model, self.d)
        self.ddp = self.ddp_module if self.ddp_module is not None else self.model
        self.compiled = False
        if o.compile:
            self._compile()
        self.optimizer = optim.make_optimizer(o, self.model)
        self.accum = o.grad_accum_steps
        # The sampler counts micro-batches; a step is one optimiser step of up to ``accum`` of them.
        self.sampler = ShardSampler(len(self.data.train), self.d.rank, self.d.world, o.batch_size, o.seed,
                                    max_batches=o.max_steps_per_epoch * self.accum if o.max_steps_per_epoch
                                    else None, arrange=self.objective.arrange)
        self.plan = StepPlan(self.sampler, self.accum)
        self._train_loader: Any = None
        self.steps_per_epoch = self.plan.steps_per_epoch
        self.scheduler = optim.make_scheduler(o, self.optimizer, self.steps_per_epoch)
        self.amp_dtype = optim.amp_dtype(o, self.d.device)
        self.scaler = optim.make_scaler(self.amp_dtype)
        self.guard = NonFiniteGuard(o.nonfinite, self.d)
        self.meter = EpochMeter(self.d.device)
        self._resumed_partial: dict[str, Any] | None = None
        self._resumed_rng: dict[str, Any] | None = None
        self.progress = TrainProgress()
        self.state = TrainState(self.progress, {
            "model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler,
            "ema": self.ema.module if self.ema is not None else None,
        }, optional={"ema": "model", "scaler": None})
        self.last_save = time.monotonic()
        startup.mark("model")
        if saved:
            self._restore(saved)
        self._first_step_done, self._saved_step = False, self.progress.global_step if saved else -1

    # -- the progress counters, as attributes -----------------------------------------------------------------
    epoch = property(lambda self: self.progress.epoch, lambda self, v: setattr(self.progress, "epoch", v))
    step_in_epoch = property(lambda self: self.progress.step_in_epoch,
                             lambda self, v: setattr(self.progress, "step_in_epoch", v))
    global_step = property(lambda self: self.progress.global_step,
                           lambda self, v: setattr(self.progress, "global_step", v))

    def _fresh_model(self) -> nn.Module:
        """A new copy of the model (for the FLOP count, which must not touch the trained one or its RNG)."""
        state = torch.get_rng_state()
        try:
            return self.objective.build_model()
        finally:
            torch.set_rng_state(state)

    def _make_ema(self) -> nn.Module:
        from timm.utils.model_ema import ModelEmaV3

        o = self.spec.optim
        return ModelEmaV3(self.model, decay=o.ema_decay, use_warmup=o.ema_warmup)

    def _compile(self) -> None:
        """Compile the training forward (DDP's wrapper included, as PyTorch recommends); eager on failure."""
        self.ddp, why = optim.try_compile(self.ddp, self.d.device)
        self.compiled = why is None
        if why is not None:
            msg = f"optim.compile: torch.compile is not available here ({why}); training uncompiled"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            self.report.log(f"WARNING {msg}")

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated, tested and kept as the best: the EMA's when there is one."""
        return self.ema.module if self.ema is not None else self.model

    # -- checkpoint --------------------------------------------------------------------------------
    def _restore(self, saved: dict[str, Any]) -> None:
        try:
            self.state.load_state_dict(saved)
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:  # another model's or optimiser's state
            where = self.task.checkpoints / str((self.ckpt_meta or {}).get("file", "?"))
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointFormatError(
                f"{where}: does not fit model {self.spec.model.name} {self.spec.model.kwargs or ''} ({first}); "
                "move the task's checkpoints away to train it from scratch") from None
        if saved["world_size"] == self.d.world:
            self._resumed_rng = saved["rng"][self.d.rank]  # set just before training: see _run
            partial = saved.get("epoch_partial")
            self._resumed_partial = partial[self.d.rank] if partial else None
        else:
            self.report.log(f"checkpoint was written by {saved['world_size']} ranks, now {self.d.world}: "
                            f"restarting epoch {self.epoch} from its first batch (not bitwise-exact)")
            self.step_in_epoch = 0

    def save(self, is_best: bool = False, durable: bool = False) -> None:
        """Checkpoint on rank 0 (collective: every rank calls it); nothing non-finite is ever written.

        Rank 0 writes a snapshot in the background (training goes on); ``durable`` waits until it is on disk.
        """
        self.guard.check(self.epoch, self.global_step)
        self.guard.check_weights(self.model, self.epoch, self.global_step)
        rng = distributed.gather(distributed.rng_state(self.d), self.d)
        partial = distributed.gather(self.meter.state_dict(), self.d)
        if self.d.main:
            extra = {**self.objective.state_dict(), "epoch_partial": partial if self.step_in_epoch else None}
            state = self.state.state_dict(rng=rng, world_size=self.d.world, extra=extra)
            p = self.progress
            self.ckpt.save_async(state, step=p.global_step, epoch=p.epoch, metric=p.best_metric, is_best=is_best)
            self.last_save = time.monotonic()
        self._saved_step = self.progress.global_step
        if durable:
            self.wait_for_checkpoint()

    def wait_for_checkpoint(self) -> None:
        """Collective: return once rank 0's last checkpoint is durable (it raises the writer's error, if any)."""
        if self.d.main:
            self.ckpt.wait()
        # Other ranks must not read best.pt (or exit) before rank 0 has finished writing it.
        distributed.barrier()

    def _counters(self) -> dict[str, Any]:
        p = self.progress
        return {"epoch": p.epoch, "step_in_epoch": p.step_in_epoch, "global_step": p.global_step,
                "best_metric": p.best_metric, "best_epoch": p.best_epoch}

    def _report_progress(self, state: TaskState, last: dict[str, float] | None = None) -> None:
        self.report.progress(state, self._counters(), self.metric_name, last)

    # -- loops -------------------------------------------------------------------------------------
    def _loader(self, dataset: Any, sampler: Sampler | None, batch_size: int, seed: int | None = None,
                persistent: bool = False) -> Any:
        workers = self.spec.data.num_workers
        return self.objective.loader(
            dataset, sampler, batch_size, workers=workers,
            generator=torch.Generator().manual_seed(seed) if seed is not None else None,
            pin_memory=self.d.device.type == "cuda", worker_init_fn=stop.ignore_in_worker if workers else None,
            context=worker_procs.context(workers), persistent=persistent)

    def _backward(self, x: Any, y: Any, weight: float, sync: bool) -> torch.Tensor:
        """Forward and backward of one micro-batch, its loss weighted by its share of the step; the unweighted loss."""
        inputs, target = self.objective.inputs(x, self.d.device), self.objective.target(y, self.d.device)
        # DDP all-reduces the gradients only in the backward of a step's last micro-batch.
        no_sync = self.ddp_module.no_sync() if self.ddp_module is not None and not sync else contextlib.nullcontext()
        with no_sync:
            with optim.autocast(self.d.device, self.amp_dtype):
                out = self.ddp(*inputs)
                loss = self.objective.loss(out, target)
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
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), o.grad_clip)
            if not self.scaler:  # with fp16 the scaler itself skips steps whose gradients overflowed
                self.guard.observe(norm)
        if o.nonfinite == "skip_batch" and not self.guard.step_ok():
            self.optimizer.zero_grad(set_to_none=True)
        elif self.scaler:
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
        ck, o = self.spec.checkpoint, self.spec.optim
        self.sampler.set_epoch(self.epoch, self.plan.first_batch(self.step_in_epoch))
        loader = self._train_loader
        if loader is None:
            loader = self._loader(self.data.train, self.sampler, self.spec.optim.batch_size,
                                  self.spec.optim.seed * 7919 + self.epoch, persistent=True)
            if callable(getattr(loader, "close", None)):  # iterated again each epoch: its workers stay until closed
                self._train_loader = loader
        it = iter(loader)
        self.ddp.train()
        meter = self.meter
        if self.step_in_epoch == 0:
            meter.reset()
        else:  # a resumed epoch continues the sums its checkpoint carried (or starts them, from an old one)
            meter.reset(self._resumed_partial)
        self._resumed_partial = None
        while True:
            if self.d.main:
                self.ckpt.raise_if_failed()  # a failed background write ends the task now, not at the next save
            due = (ck.every_minutes is not None and self.d.main
                   and time.monotonic() - self.last_save >= ck.every_minutes * 60)
            # one collective per step carries the stop, save and non-finite flags of every rank
            stop_now, save_now, bad = distributed.all_reduce_max(
                [int(stop.requested()), int(due), self.guard.local_flag(self.global_step)], self.d)
            if bad:
                self.guard.fail(self.epoch, self.global_step)
            if stop_now:
                del it
                self.save(durable=True)
                return None
            if save_now:
                self.save()
            n_micro, n_samples = self.plan.size(self.step_in_epoch)
            if n_micro == 0:
                break
            self.optimizer.zero_grad(set_to_none=True)
            for m in range(n_micro):
                batch = next(it, None)  # the sampler holds exactly the micro-batches the plan counts
                if batch is None:
                    raise RuntimeError(f"epoch {self.epoch}: data ran out inside step {self.step_in_epoch}")
                x, y = batch
                n = self.objective.count(y)
                loss = self._backward(x, y, n / n_samples, sync=m == n_micro - 1)
                self.guard.observe(loss)
                if o.nonfinite == "stop" or torch.isfinite(loss):  # skip_batch: skipped steps add no loss
                    meter.add(loss, n)
            self._optimizer_step()
            if not self._first_step_done:
                self._first_step_done = True
                startup.mark("first step")
                self.report.log(f"first step after {startup.summary()}")
            if ck.every_steps and self.global_step % ck.every_steps == 0:
                self.save()
        elapsed = meter.seconds
        sums = distributed.gather((float(meter.loss_sum.item()), meter.samples), self.d)
        n_total = sum(n for _, n in sums)
        metrics = {"train_loss": sum(s for s, _ in sums) / max(n_total, 1),
                   "throughput_img_s": n_total / max(elapsed, 1e-9), "epoch_time_s": elapsed,
                   "lr": self.scheduler.get_last_lr()[0]}
        if o.nonfinite == "skip_batch":
            metrics["skipped_steps"] = float(self.guard.skipped)
        return metrics

    @torch.no_grad()
    def evaluate(self, dataset: Any, model: nn.Module | None = None) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """Metrics of ``model`` (default: :attr:`eval_model`) on ``dataset`` and the predictions, every rank's
        gathered."""
        model = self.eval_model if model is None else model
        self.ddp.eval()
        # Each rank's last forward updated its own BatchNorm statistics (and its EMA of them); evaluate rank 0's,
        # the saved ones. (DDP broadcasts the model's again before the next training forward, so training is
        # unchanged; only rank 0's EMA is ever saved or evaluated.)
        distributed.broadcast_buffers(model)
        indices = list(range(self.d.rank, len(dataset), self.d.world))
        loader = self._loader(torch.utils.data.Subset(dataset, indices), None, self.spec.optim.batch_size * 2)
        collect = self.objective.evaluator()
        with host_generators_kept():  # metrics import lazily, and imports draw: see hpcvit.rngs
            for x, y in loader:
                with optim.autocast(self.d.device, self.amp_dtype):
                    collect.add(model(*self.objective.inputs(x, self.d.device)), y)
            return self.objective.evaluate(distributed.gather(collect.local(), self.d))

    def _facts(self) -> dict[str, Any]:
        """What the MLflow run records beside the spec; on a first start only, so it leaves every generator as
        it found it (the FLOP count builds and runs a model and imports what draws: see hpcvit.rngs)."""
        state = distributed.rng_state(self.d)
        try:
            init = {"model.init_from.notes": self._init_notes} if self._init_notes else {}
            return {"model.n_params": self.n_params, **self.objective.facts(self._fresh_model),
                    "dist.world_size": self.d.world, **init}
        finally:
            distributed.set_rng_state(state, self.d)

    def run(self) -> int:
        try:
            return self._run()
        finally:
            if self._train_loader is not None:
                self._train_loader.close()

    def _run(self) -> int:
        self.last_save = time.monotonic()
        startup.mark("restore")
        self.report.open_tracking(self._facts)
        o = self.spec.optim
        extras = [f"{self.accum} micro-batches per step" if self.accum > 1 else "",
                  f"EMA {o.ema_decay}" if self.ema is not None else "", "compiled" if self.compiled else "",
                  "channels-last" if o.channels_last else "", "deterministic" if o.deterministic else ""]
        self.report.log(f"start: epoch {self.epoch} step {self.step_in_epoch}/{self.steps_per_epoch} of {o.epochs} "
                        f"epochs, {self.d.world} rank(s) on {self.d.device}, {self.n_params / 1e6:.2f}M params"
                        + "".join(f", {e}" for e in extras if e))
        self._report_progress(TaskState.RUNNING)
        p = self.progress
        budget = self.task.budget()  # an adaptive search's rung: stop after its epochs, the schedule unchanged
        until = min(o.epochs, budget["epochs"]) if budget else o.epochs
        if self._resumed_rng is not None:
            # restored last: what a restarted process does first must not move them (see hpcvit.rngs)
            distributed.set_rng_state(self._resumed_rng, self.d)
            self._resumed_rng = None
        while p.epoch < until:
            train_metrics = self.train_epoch()
            if train_metrics is None:
                return self._stopped()
            self.guard.check(p.epoch, p.global_step)  # before evaluating weights that may not be finite
            if self.spec.checkpoint.before_evaluation and self._saved_step != p.global_step:
                self.save(durable=True)  # on disk before evaluating: a stop killed during it keeps this epoch
            val_metrics, _ = self.evaluate(self.data.val)  # the EMA weights when there are any
            metrics = {**train_metrics, **{f"val_{k}": v for k, v in val_metrics.items()}}
            if self.ema is not None:
                raw_metrics, _ = self.evaluate(self.data.val, self.model)
                metrics.update({f"val_raw_{k}": v for k, v in raw_metrics.items()})
            score = metrics[self.metric_name]
            improved = is_better(score, p.best_metric, self.metric_mode)
            if improved:
                p.best_metric, p.best_epoch = score, p.epoch
            self.report.epoch(p.epoch, {**metrics, f"best_{self.metric_name}": p.best_metric})
            self.report.log(f"epoch {p.epoch}: " + " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
            p.epoch += 1
            p.step_in_epoch = 0
            self.save(is_best=improved)
            self._report_progress(TaskState.RUNNING, last=metrics)
        if p.epoch < o.epochs:
            return self._rung_done(budget or {})
        return self._finished()

    def _rung_done(self, budget: dict[str, Any]) -> int:
        """The rung's epochs are trained and checkpointed: its last epoch's metrics for the rung's decision."""
        # durable before the marker says so: the rung's end may promote the task at once (a new trainer reads it)
        self.wait_for_checkpoint()
        last = self.task.progress().get("last") if self.d.main else None
        self.report.rung_done(int(budget.get("rung", 0)), self.epoch, last or {})
        self._report_progress(TaskState.RUNG_DONE, last=last)
        self.report.log(f"rung {budget.get('rung', 0)} done at epoch {self.epoch} of {self.spec.optim.epochs}; "
                        "checkpoint saved")
        return 0

    def _finished(self) -> int:
        """Evaluate the best epoch's weights (its EMA with ``optim.ema_decay``) on validation (and test), write
        result and artifacts, close the run."""
        self.wait_for_checkpoint()
        best = self.ckpt.best()
        if best is not None:
            state = self.ckpt.load(best)
            self.model.load_state_dict(state["model"])
            if self.ema is not None and state.get("ema") is not None:
                self.ema.module.load_state_dict(state["ema"])
        by_split = {"val": self.evaluate(self.data.val)[1]}
        final: dict[str, float] = {}
        if self.data.test is not None:
            test_metrics, by_split["test"] = self.evaluate(self.data.test)
            final = {f"test_{k}": v for k, v in test_metrics.items()}
        for split, dataset in (("val", self.data.val), ("test", self.data.test)):
            if split in by_split:  # each sample's file and row, in the order evaluate gathered them
                order = distributed.gathered_order(len(dataset), self.d.world)
                by_split[split] = {**self.objective.sample_ids(dataset, order), **by_split[split]}
        predictions = {f"{split}_{k}": v for split, arrays in by_split.items() for k, v in arrays.items()}
        label = f"{self.spec.model.name}, best epoch {self.progress.best_epoch}"
        objective = self.objective

        def artifacts(folder: Path) -> list[Path]:
            return objective.write_artifacts(folder, by_split, label)

        p = self.progress
        result = {"metric": self.metric_name, "best_metric": p.best_metric, "best_epoch": p.best_epoch, "final": final}
        # the last epoch's metrics stay in progress.json (a search ranks its last rung by them)
        self._report_progress(TaskState.COMPLETED, last=self.task.progress().get("last") if self.d.main else None)
        self.report.finished(result, predictions, best_state=self.eval_model.state_dict(), best_checkpoint=best,
                             artifacts=(objective.artifacts_dir, artifacts))
        self.report.log("finished")
        return 0

    def _stopped(self) -> int:
        reason = stop.reason()
        state = self.report.stopped(reason, {k: v for k, v in self._counters().items() if "best" not in k})
        self._report_progress(state)
        self.report.log(f"stopped by {reason} at epoch {self.epoch} step {self.step_in_epoch}; checkpoint saved")
        return 0
