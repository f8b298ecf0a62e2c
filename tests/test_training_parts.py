"""The parts of the trainer on their own: the sampler, the step plan, the schedules, RNG state, the checkpoint
format."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
import torch

from hpcvit.config import OptimSpec
from hpcvit.training import distributed
from hpcvit.training.optim import lr_factor, make_optimizer, make_scheduler
from hpcvit.training.sampler import ShardSampler, StepPlan
from hpcvit.training.state import CHECKPOINT_VERSION, CheckpointFormatError, TrainProgress, TrainState


@pytest.mark.parametrize("n,world,batch", [(103, 2, 8), (100, 4, 7), (9, 3, 2), (64, 1, 64), (5, 2, 16)])
def test_shards_are_disjoint_equal_and_cover_a_multiple_of_the_world(n: int, world: int, batch: int) -> None:
    shards = [ShardSampler(n, r, world, batch, seed=3) for r in range(world)]
    for s in shards:
        s.set_epoch(2)
    parts = [s.indices() for s in shards]
    assert len({len(p) for p in parts}) == 1, "every rank gets the same number of samples"
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat)) == (n // world) * world
    assert all(0 <= i < n for i in flat)
    assert {s.batches for s in shards} == {math.ceil((n // world) / batch)}


def test_the_order_is_a_function_of_seed_and_epoch_only() -> None:
    a, b = ShardSampler(50, 0, 1, 5, seed=1), ShardSampler(50, 0, 1, 5, seed=1)
    a.set_epoch(4)
    b.set_epoch(4)
    assert a.indices() == b.indices()
    b.set_epoch(5)
    assert a.indices() != b.indices()
    c = ShardSampler(50, 0, 1, 5, seed=2)
    c.set_epoch(4)
    assert a.indices() != c.indices()
    assert sorted(a.indices()) == list(range(50))
    unshuffled = ShardSampler(10, 1, 2, 2, seed=0, shuffle=False)
    assert unshuffled.indices() == [1, 3, 5, 7, 9]


def test_a_resumed_epoch_yields_exactly_the_rest() -> None:
    s = ShardSampler(40, 1, 2, 3, seed=9)
    s.set_epoch(1)
    whole = list(s)
    s.set_epoch(1, start_batch=4)
    assert list(s) == whole[12:] and len(s) == len(whole) - 12
    s.set_epoch(1, start_batch=s.batches)
    assert list(s) == [] and len(s) == 0


def test_max_batches_caps_the_epoch() -> None:
    s = ShardSampler(1000, 0, 2, 10, seed=0, max_batches=3)
    assert s.batches == 3 and s.per_rank == 30 and len(s.indices()) == 30


@pytest.mark.parametrize("per_rank,batch,accum", [(375, 8, 4), (300, 24, 1), (300, 8, 3), (10, 4, 5), (7, 7, 2)])
def test_step_plan_groups_every_micro_batch_once(per_rank: int, batch: int, accum: int) -> None:
    sampler = ShardSampler(per_rank, 0, 1, batch, seed=0)
    plan = StepPlan(sampler, accum)
    sizes = [plan.size(k) for k in range(plan.steps_per_epoch)]
    assert sum(m for m, _ in sizes) == sampler.batches
    assert sum(n for _, n in sizes) == per_rank
    assert all(1 <= m <= accum for m, _ in sizes)
    assert all(m == accum for m, _ in sizes[:-1]), "only the last step may be short"
    assert plan.size(plan.steps_per_epoch) == (0, 0)
    assert plan.first_batch(2) == 2 * accum


def test_375_samples_in_micro_batches_of_8_and_steps_of_4() -> None:
    plan = StepPlan(ShardSampler(750, 0, 2, 8, seed=0), 4)  # the resume test's numbers
    assert plan.steps_per_epoch == 12
    assert plan.size(0) == (4, 32) and plan.size(11) == (3, 375 - 11 * 32)


def test_warmup_then_cosine_reaches_zero_at_the_last_step() -> None:
    o = OptimSpec(epochs=4, warmup_epochs=1.0, schedule="cosine")
    f = lr_factor(o, steps_per_epoch=10)
    assert [f(k) for k in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)))
    assert f(40) == pytest.approx(0.0, abs=1e-12) and f(100) == pytest.approx(0.0, abs=1e-12)
    values = [f(k) for k in range(10, 41)]
    assert all(a >= b for a, b in zip(values, values[1:])), "cosine decays monotonically"


def test_step_and_constant_schedules() -> None:
    step = lr_factor(OptimSpec(epochs=9, schedule="step", step_epochs=3, gamma=0.5), steps_per_epoch=4)
    assert [step(k) for k in (0, 11, 12, 23, 24, 35)] == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])
    const = lr_factor(OptimSpec(epochs=2, schedule="constant", warmup_epochs=0.5), steps_per_epoch=4)
    assert [const(k) for k in range(5)] == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0])


def test_scheduler_state_round_trips() -> None:
    o = OptimSpec(epochs=3, lr=0.1, warmup_epochs=1.0)
    model = torch.nn.Linear(3, 1)
    opt = make_optimizer(o, model)
    sched = make_scheduler(o, opt, 5)
    for _ in range(7):
        opt.step()
        sched.step()
    again = make_scheduler(o, make_optimizer(o, model), 5)
    again.load_state_dict(sched.state_dict())
    assert again.get_last_lr() == sched.get_last_lr()
    assert [g["weight_decay"] for g in opt.param_groups] == [o.weight_decay, 0.0], "no decay on the bias"


def test_rng_state_restores_every_generator_and_loads_without_pickle() -> None:
    d = distributed.Dist(0, 0, 1, torch.device("cpu"))
    distributed.seed_everything(11)
    random.random()
    np.random.normal()  # leaves a cached gaussian in numpy's state
    saved = distributed.rng_state(d)
    draws = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal())
    buf = io.BytesIO()
    torch.save({"rng": [saved]}, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)["rng"][0]
    distributed.seed_everything(99)
    distributed.set_rng_state(loaded, d)
    again = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1])
    assert draws[2] == again[2] and draws[3] == again[3]


def test_train_state_checks_the_version_and_starts_a_new_ema_from_the_weights() -> None:
    model, ema = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    progress = TrainProgress(epoch=3, step_in_epoch=1, global_step=31, best_metric=0.8, best_epoch=2)
    saved = TrainState(progress, {"model": model, "ema": None}, optional={"ema": "model"}).state_dict(
        rng=[], world_size=1)
    assert saved["version"] == CHECKPOINT_VERSION and saved["ema"] is None and saved["epoch"] == 3

    fresh = TrainProgress()
    TrainState(fresh, {"model": torch.nn.Linear(2, 1), "ema": ema}, optional={"ema": "model"}).load_state_dict(saved)
    assert fresh == progress
    assert torch.equal(ema.weight, model.weight), "an EMA switched on later starts at the saved weights"

    with pytest.raises(CheckpointFormatError, match="version 1"):
        TrainState.check({**saved, "version": 1})
    with pytest.raises(CheckpointFormatError, match="no 'optimizer' state"):
        TrainState(TrainProgress(), {"optimizer": torch.optim.SGD(model.parameters(), lr=1)}).load_state_dict(saved)


def test_a_checkpoints_generators_restored_while_tracking_opens_stay_restored() -> None:
    """The MLflow run opens in a thread (its imports and retries draw) while the trainer restores a checkpoint's
    generator states: training goes on from the checkpoint's states, not from those the thread saw at its start
    and not one draw past them."""
    import random
    import threading

    import numpy as np

    from hpcvit import rngs

    random.seed(1)
    np.random.seed(1)
    inside, restored = threading.Event(), threading.Event()

    def opening() -> None:
        with rngs.host_generators_kept():
            inside.set()
            restored.wait(10)
            random.random()  # the thread's import or retry jitter, after the trainer restored its states
            np.random.random()

    thread = threading.Thread(target=opening)
    thread.start()
    inside.wait(10)
    random.seed(2)
    np.random.seed(2)
    checkpoint = (random.getstate(), np.random.get_state())
    rngs.restore(*checkpoint)
    restored.set()
    thread.join(10)
    assert random.getstate() == checkpoint[0]
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), checkpoint[1]))
