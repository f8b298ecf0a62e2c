"""Hit clustering trained and scored: metrics against hand-computed events, a loss that does not depend on the
order of the truth particles, a run through the trainer with its artifacts, and a preempted two-rank task on
variable-length batches resumed bitwise identical to its uninterrupted twin."""

from __future__ import annotations

import csv
import os
import signal
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from hpcvit.hits.condensation import condensation_loss, condense
from hpcvit.hits.generate import generate
from hpcvit.hits.heads import HEADS, edge_clusters, edge_truth, linkage
from hpcvit.hits.matching import match_slots
from hpcvit.hits.metrics import Event, adjusted_rand, event_table, summarize
from hpcvit.hits.models import (TYPES, build_clusters_finder, build_hit_condensation_transformer,
                               build_hit_graph_transformer, build_hit_set_transformer, neighbours)
from hpcvit.hits.simulate import EventConfig
from hpcvit.ledger import find_sweep
from hpcvit.models import build_hit_model, list_models
from hpcvit.training.loop import Trainer
from tests.conftest import checkpoint_differences, children, hpcvit, start_lines, wait_for, write_spec
from tests.test_train_features import make_sweep

G, NH = TYPES.index("photon"), TYPES.index("neutral_hadron")


def _event(truth: list[int], pred: list[int], energy: list[float], x: list[float] | None = None) -> Event:
    n = len(truth)
    pos = np.zeros((n, 3))
    pos[:, 0] = x if x is not None else 0.0
    return Event(np.array(energy, float), pos, np.array(truth), np.array(pred),
                 truth_type=np.array([G, NH, G]), truth_energy=np.array([5.0, 3.0, 1.0]),
                 pred_types=np.array([[0.9, 0, 0, 0, 0.1, 0], [0.2, 0, 0, 0, 0.8, 0], [0.5, 0, 0, 0, 0.5, 0]]))


def test_cluster_metrics_against_hand_computed_events() -> None:
    # particle 0 (6 GeV over hits 0-2) and particle 1 (2 GeV, hits 3-4); a noise hit (truth -1, 0.5 GeV)
    perfect = _event([0, 0, 0, 1, 1, -1], [0, 0, 0, 1, 1, 2], [2, 2, 2, 1, 1, 0.5], x=[0, 1, 2, 300, 301, 50])
    t = event_table(perfect)
    assert t["found"].tolist() == [True, True] and t["merged"].tolist() == [False, False]
    assert t["deposit"].tolist() == [6.0, 2.0] and t["nearest"][0] == pytest.approx(299.5)
    # one cluster holds everything: particle 0 is found (it is the cluster's main particle), particle 1 merged
    merged = event_table(_event([0, 0, 0, 1, 1, -1], [0] * 6, [2, 2, 2, 1, 1, 0.5]))
    assert merged["found"].tolist() == [True, False] and merged["merged"].tolist() == [True, True]
    assert merged["cluster_purity"].tolist() == [pytest.approx(6 / 8.5)]
    # particle 0 split over clusters 0 (4 GeV) and 1 (2 GeV): found (4/6 > 1/2), and split
    split = event_table(_event([0, 0, 0, 1, 1], [0, 0, 1, 2, 2], [2, 2, 2, 1, 1]))
    assert split["found"].tolist() == [True, True] and split["split"].tolist() == [True, False]
    metrics, _ = summarize([perfect, _event([0, 0, 0, 1, 1], [0, 0, 1, 2, 2], [2, 2, 2, 1, 1])])
    assert metrics["efficiency"] == 1.0 and metrics["split_rate"] == 0.25 and metrics["merge_rate"] == 0.0
    # the photon's match says photon twice; the neutral hadron's says so once (event 1), and ties (event 2:
    # cluster 2, 0.5/0.5, read as photon): 3 of 4; p(photon) ranks photons 0.9, 0.9 above hadrons 0.2, 0.5
    assert metrics["pid_accuracy"] == 0.75
    assert metrics["photon_nh_auc"] == 1.0
    assert adjusted_rand(np.array([0, 0, 1, 1]), np.array([5, 5, 7, 7])) == 1.0
    assert adjusted_rand(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == pytest.approx(-0.5)


@pytest.mark.parametrize("builder,head", [(build_clusters_finder, "hits"), (build_hit_set_transformer, "slots"),
                                          (build_hit_graph_transformer, "edges"),
                                          (build_hit_condensation_transformer, "condensation")])
def test_the_loss_does_not_depend_on_the_order_of_the_particles(builder, head: str) -> None:
    torch.manual_seed(0)
    graph = head in ("edges", "condensation")
    small = {"nlayers_local": 1, "k": 6} if graph else {"nlayers_encoder": 1, "nlayers_decoder": 1}
    model = builder(5, **small)
    assert model.head == head
    b, h = 3, 40
    hits, pad = torch.randn(b, h, 5), torch.zeros(b, h, dtype=torch.bool)
    pad[1, 30:] = True
    particle = torch.randint(0, 5, (b, h))
    particle[pad] = -1
    rows = torch.tensor([[0, 22, 4.0, 1, 0, 0], [1, 211, 2.0, 0, 1, 0], [0, 2112, 6.0, 0, 0, 1],
                         [-1, 11, 1.0, 0.6, 0.8, 0], [0, 0, 0.0, 0, 0, 0]])
    labels = rows[particle.clamp_min(0)]
    with torch.no_grad():
        out = model(hits, pad)
    loss = HEADS[head].loss(out, {"particle": particle, "labels": labels, "pad": pad})
    perm = torch.tensor([3, 0, 4, 1, 2])  # particle j is called perm[j]
    renamed = torch.where(particle >= 0, perm[particle.clamp_min(0)], -1)
    again = HEADS[head].loss(out, {"particle": renamed, "labels": labels, "pad": pad})
    assert torch.allclose(loss, again, rtol=1e-6), (loss, again)
    if graph:
        # an edge's truth is whether its hits share a particle: renaming keeps it, moving one hit changes it
        same, _ = edge_truth(particle, labels, out["nbr"], out["nbr_pad"])
        assert torch.equal(same, edge_truth(renamed, labels, out["nbr"], out["nbr_pad"])[0])
        moved = particle.clone()
        moved[0, 0] = (moved[0, 0] + 1) % 4
        assert not torch.equal(same, edge_truth(moved, labels, out["nbr"], out["nbr_pad"])[0])
        return
    # the matching follows the particles, whatever their numbers
    assert torch.equal(match_slots(out["assign"], particle), match_slots(out["assign"], renamed))
    # and the check has teeth: a plain cross-entropy on the particle numbers moves with them
    plain = torch.nn.functional.cross_entropy(out["assign"].reshape(-1, out["assign"].shape[-1]),
                                              particle.reshape(-1), ignore_index=-1)
    plain2 = torch.nn.functional.cross_entropy(out["assign"].reshape(-1, out["assign"].shape[-1]),
                                               renamed.reshape(-1), ignore_index=-1)
    assert not torch.allclose(plain, plain2)


def test_edge_clusters_join_groups_by_the_mean_of_the_edges_between_them() -> None:
    # event 0: hits 0-1-2 and 3-4 sure of each other; between the groups, 2->3 says "one particle" (p = 0.73),
    # 3->2 and 4->0 say no (p = 0.007): the mean (0.25) keeps them apart, where connected components of the
    # edges above 0.5 would join them. Event 1: two hits and padding.
    nbr = torch.tensor([[[1, 2], [0, 2], [1, 3], [4, 2], [3, 0]], [[1, 0], [0, 1], [0, 1], [0, 1], [0, 1]]])
    edge = torch.full((2, 5, 2), -5.0)
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (3, 0), (4, 0)):
        edge[0, i, j] = 5.0
    edge[0, 2, 1] = 1.0
    edge[1, 0, 0] = 5.0
    pad = torch.tensor([[False] * 5, [False, False, True, True, True]])
    nbr_pad = torch.zeros(2, 5, 2, dtype=torch.bool)
    nbr_pad[1, :, 1] = True
    nbr_pad[1, 2:] = True
    hit_type = torch.zeros(2, 5, len(TYPES))
    hit_type[0, :3, G], hit_type[0, 3:, NH], hit_type[1, :, G] = 9.0, 9.0, 9.0
    out = {"edge": edge, "nbr": nbr, "nbr_pad": nbr_pad, "type": hit_type}
    slot, types = edge_clusters(out, pad, threshold=0.5)
    assert slot[0].tolist() == [0, 0, 0, 1, 1] and slot[1].tolist() == [0, 0, -1, -1, -1]
    assert types[0].shape == (2, len(TYPES)) and types[0][:, [G, NH]].argmax(1).tolist() == [0, 1]
    assert types[1].shape == (1, len(TYPES))
    assert edge_clusters(out, pad, threshold=0.2)[0][0].tolist() == [0] * 5  # the mean 0.25 passes 0.2
    edge[0, 3, 1] = edge[0, 4, 1] = 5.0  # every edge between the groups says yes: one cluster
    assert edge_clusters(out, pad, threshold=0.5)[0][0].tolist() == [0] * 5
    assert edge_clusters(out, pad, threshold=0.999)[0][0].tolist() == [0, 1, 2, 3, 4]


def test_condensation_gives_each_hit_to_the_nearest_strong_hit_within_the_radius() -> None:
    # hit 0 (beta 0.9) is a condensation point and takes hit 1 (0.3 away, too close to be a point itself); hit 3
    # (0.3) is 2 away, a point, and takes hit 2 (0.5 from it, 0.05 weak); hit 4 is weak and far from both: a
    # cluster of its own. Raising the threshold past 0.3 leaves hits 2, 3 alone; shrinking the radius makes hit 1
    # a point of its own and leaves hit 2 out of hit 3's reach.
    beta = np.array([0.9, 0.5, 0.05, 0.3, 0.02])
    coords = np.array([[0.0, 0], [0.3, 0], [2.5, 0], [2.0, 0], [10.0, 0]])
    assert condense(beta, coords, 0.1, 0.8).tolist() == [0, 0, 1, 1, 2]
    assert condense(beta, coords, 0.4, 0.8).tolist() == [0, 0, 1, 2, 3]
    assert condense(beta, coords, 0.1, 0.2).tolist() == [0, 1, 3, 2, 4]
    assert condense(np.zeros(0), np.zeros((0, 2)), 0.1, 0.8).tolist() == []
    # a weak hit within reach of both points goes to the closer, not to the stronger
    assert condense(np.array([0.9, 0.8, 0.05]), np.array([[0.0], [1.0], [0.7]]), 0.1, 0.8).tolist() == [0, 1, 1]
    # positions gone bad (NaN): every hit a cluster of its own, numbered below the hit count
    assert condense(np.array([0.9, 0.5, 0.2]), np.full((3, 2), np.nan), 0.1, 0.8).tolist() == [0, 1, 2]


def test_linkage_started_from_groups_weighs_every_edge_between_them() -> None:
    # edges 0-2 say "one particle" (0.9), 1-3 say "two" (0.1). From single hits, 0 and 2 join; from the groups
    # {0, 1} and {2, 3}, the mean of the edges between them (0.5) keeps them apart at 0.8 and joins them at 0.4.
    nbr, missing = np.array([[2], [3], [0], [1]]), np.zeros((4, 1), bool)
    prob = np.array([[0.9], [0.1], [0.9], [0.1]])
    assert linkage(prob, nbr, missing, 0.8).tolist() == [0, 1, 0, 2]
    assert linkage(prob, nbr, missing, 0.8, start=np.array([0, 0, 1, 1])).tolist() == [0, 0, 1, 1]
    assert linkage(prob, nbr, missing, 0.4, start=np.array([0, 0, 1, 1])).tolist() == [0, 0, 0, 0]
    # group numbers need not be small or dense; a group with no edge between its hits stays one
    assert linkage(prob, nbr, missing, 0.8, start=np.array([70, 9, 70, 9])).tolist() == [1, 0, 1, 0]


def test_the_condensation_loss_is_least_when_each_particle_gathers_apart_from_the_others() -> None:
    # two particles of three hits and one noise hit; the particles' first hits are their strongest
    owner = torch.tensor([[0, 0, 0, 1, 1, 1, -1]])
    pad = torch.zeros(1, 7, dtype=torch.bool)
    logit = torch.tensor([[9.0, -3, -3, 9.0, -3, -3, -9.0]])
    apart = torch.tensor([[[0.0, 0], [0, 0], [0, 0], [5, 0], [5, 0], [5, 0], [0, 9]]])
    mixed = apart[:, [0, 3, 1, 4, 2, 5, 6]]  # each particle's hits spread over both places
    good = condensation_loss(logit, apart, owner, pad)
    assert good < 1e-3, good
    assert condensation_loss(logit, mixed, owner, pad) > 10 * good + 1.0
    assert condensation_loss(-logit, apart, owner, pad) > good + 1.0  # no hit condenses: beta loss near 2
    close = apart.clone()
    close[0, 3:6, 0] = 0.5  # each particle gathered, but within the other's unit ball: repelled
    assert condensation_loss(logit, close, owner, pad) > good + 1.0
    loud = logit.clone()
    loud[0, 6] = 9.0  # the noise hit as strong as a condensation point
    assert condensation_loss(loud, apart, owner, pad) == pytest.approx(float(good) + 1.0, abs=1e-3)
    # a batch of this event and one of noise alone: the mean of the two, the second only its noise term
    quiet = torch.full((1, 7), -9.0)
    both = condensation_loss(torch.cat([logit, quiet]), torch.cat([apart, apart]),
                             torch.cat([owner, torch.full((1, 7), -1)]), torch.zeros(2, 7, dtype=torch.bool))
    assert both == pytest.approx((float(good) + float(torch.sigmoid(torch.tensor(-9.0)))) / 2, abs=1e-6)
    padded = torch.cat([apart, torch.full((1, 2, 2), 3.0)], 1)  # padding anywhere changes nothing
    assert torch.allclose(condensation_loss(torch.cat([logit, torch.zeros(1, 2)], 1), padded,
                                            torch.cat([owner, torch.full((1, 2), -1)], 1),
                                            torch.tensor([[False] * 7 + [True] * 2])), good)


@pytest.mark.parametrize("name", list_models(inputs="hits"))
def test_every_hit_model_trains_every_parameter_through_its_head(name: str) -> None:
    torch.manual_seed(0)
    model = build_hit_model(name, 7, len(TYPES))
    b, h = 2, 30
    hits, pad = torch.randn(b, h, 7), torch.zeros(b, h, dtype=torch.bool)
    pad[1, 20:] = True
    particle = torch.randint(0, 3, (b, h)).masked_fill(pad, -1)
    rows = torch.tensor([[0, 22, 4.0, 1, 0, 0], [1, 211, 2.0, 0, 1, 0], [0, 2112, 6.0, 0, 0, 1]])
    loss = HEADS[model.head].loss(model(hits, pad), {"particle": particle, "labels": rows[particle.clamp_min(0)],
                                                     "pad": pad})
    loss.backward()
    params = dict(model.named_parameters())
    assert not [n for n, p in params.items() if p.grad is None], f"{name}: parameters outside the loss"
    assert all(torch.isfinite(p.grad).all() for p in params.values()), name
    with torch.no_grad():
        slot, types = HEADS[model.head].clusters(model(hits, pad), pad)
    assert slot.shape == (b, h) and (slot[pad] == -1).all() and (slot[~pad] >= 0).all()
    assert len(types) == b and all(t.shape[0] > int(s[s >= 0].max()) for t, s in zip(types, slot))


def test_neighbours_leave_out_the_hit_itself_and_the_padding() -> None:
    coords = torch.tensor([[[0.0], [1.0], [3.0], [7.0]], [[0.0], [2.0], [0.5], [0.0]]])
    pad = torch.tensor([[False] * 4, [False, False, True, True]])
    nbr, missing = neighbours(coords, pad, 2)
    assert nbr[0].tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]] and not missing[0].any()
    assert nbr[1, 0, 0] == 1 and nbr[1, 1, 0] == 0 and missing[1].tolist() == [[False, True], [False, True],
                                                                                [True, True], [True, True]]
    with pytest.raises(ValueError, match=r"coords \[1, 2, 9\]"):
        build_hit_graph_transformer(5, coords=[1, 2, 9])


SPEC = """
name: {name}
data:
  format: hdf5
  paths: [{path}]
  task: hit_clustering
  input_key: feats
  target_key: labels
  hits: {{scaling: {scaling}}}
  val_fraction: 0.25
  test_fraction: 0.25
model:
  name: {model}
  kwargs: {kwargs}
optim: {{epochs: {epochs}, batch_size: 8, lr: 2e-3, seed: 3}}
checkpoint: {{every_steps: 2, every_minutes: null, keep: 3}}
resources: {{nproc_per_node: {ranks}, cpus_per_task: 2, array_parallelism: 2}}
"""
SMALL = {"clusters_finder": "{nclusters_max: 6, dmodel: 16, nhid_ff_trsf: 32, nlayers_encoder: 1, nlayers_decoder: 1}",
         "hit_set_transformer": "{n_queries: 6, dmodel: 16, dim_ff: 32, nlayers_encoder: 1, nlayers_decoder: 1}",
         "hit_graph_transformer": "{k: 6, dmodel: 16, dim_ff: 32, nlayers_local: 1, nlayers_global: 1}"}


def _events(path: Path, n: int) -> Path:
    generate(n, path, seed=11, cfg=EventConfig(jet_energy=(3.0, 8.0), particles=(2, 3), ecal_cell_mm=30.0,
                                              noise=3.0))
    return path


@pytest.mark.parametrize("model,scaling", [("clusters_finder", "seed"), ("hit_set_transformer", "standard"),
                                           ("hit_graph_transformer", "standard")])
def test_a_hit_clustering_run_trains_and_writes_its_figures(workdir: Path, model: str, scaling: str) -> None:
    path = _events(workdir / "calo.h5", 64)
    sweep = make_sweep(workdir, SPEC.format(name="hits", path=path, scaling=scaling, model=model, kwargs=SMALL[model],
                                            epochs=2, ranks=1))
    trainer = Trainer(sweep.task(0))
    assert trainer.metric_name == "val_efficiency" and trainer.metric_mode == "max"
    assert trainer.run() == 0
    result = sweep.task(0).result()
    assert set(result["final"]) >= {"test_efficiency", "test_purity", "test_ari", "test_merge_rate", "test_loss"}
    assert all(0 <= result["final"][k] <= 1 for k in ("test_efficiency", "test_purity", "test_merge_rate"))
    folder = sweep.task(0).path / "clusters"
    rows = (folder / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("method,efficiency") and rows[2].startswith("topological baseline,")
    model_row = next(csv.DictReader(rows))
    # the figures score the saved predictions, cluster types included: the same numbers as the run's test metrics
    for key in ("efficiency", "purity", "pid_accuracy"):
        assert float(model_row[key]) == pytest.approx(result["final"][f"test_{key}"], abs=1e-9, nan_ok=True), key
    assert (folder / "efficiency_binned.png").exists() and list(folder.glob("event_*.png"))
    saved = torch.load(max(sweep.task(0).checkpoints.glob("ckpt-*.pt")), weights_only=True)
    assert saved["hit_scale"]["preset"] == scaling and saved["hit_scale"] == trainer.data.scale.to_dict()
    run = children(sweep)[0]
    assert run.data.metrics["test_efficiency"] == result["final"]["test_efficiency"]
    assert run.data.params["data.task"] == "hit_clustering"
    table = hpcvit("compare", str(sweep.root), cwd=workdir)
    assert table.returncode == 0 and "ev/s" in table.stdout and "img/s" not in table.stdout, table.stdout
    plotted = hpcvit("compare", str(sweep.root), "--plot", str(workdir / "sweep.png"), cwd=workdir)
    assert plotted.returncode == 0 and (workdir / "sweep.png").stat().st_size > 10_000, plotted.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model", ["hit_set_transformer", "hit_graph_transformer"])
def test_a_preempted_two_rank_hit_task_resumes_bitwise_identical(workdir: Path, model: str) -> None:
    path = _events(workdir / "calo.h5", 160)
    text = SPEC.format(name="hits-twin", path=path, scaling="standard", model=model,
                       kwargs=SMALL[model], epochs=2, ranks=2) + textwrap.dedent("""
        sweep:
          zip:
            description: [uninterrupted, interrupted]
        """)
    spec = write_spec(workdir, text)
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    task = sweep.task(1)
    wait_for(lambda: task.checkpoints.exists() and any(task.checkpoints.glob("ckpt-*.json")), 300,
             "the first periodic checkpoint")
    os.killpg(task.state()["trainer_pgid"], signal.SIGTERM)
    wait_for(lambda: task.state().get("state") == "PREEMPTED", 120, "task 1 to checkpoint and stop")
    wait_for(lambda: sweep.task(0).state().get("state") == "COMPLETED", 600, "task 0 to finish")
    resumed = hpcvit("resume", "--wait", cwd=workdir, timeout=900)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert len(start_lines(task.log)) == 2
    a = torch.load(max(sweep.task(0).checkpoints.glob("ckpt-*.pt")), weights_only=True)
    b = torch.load(max(task.checkpoints.glob("ckpt-*.pt")), weights_only=True)
    assert a["global_step"] == b["global_step"] and a["hit_scale"] == b["hit_scale"]
    assert checkpoint_differences(sweep, sweep, 0, 1) == [], "every tensor and generator state of every rank too"
    assert sweep.task(0).result()["final"] == task.result()["final"]

