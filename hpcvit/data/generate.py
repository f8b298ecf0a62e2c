"""Monte-Carlo jet images in the published Parquet layout: Pythia 8 events, anti-kT jets, a simple detector.

Processes (labels as in the published files: 1 = signal, i.e. top, or quark as ``y = jetIsQuark``):

* ``top-vs-qcd``: boosted hadronic ttbar (``Top:gg2ttbar``, ``Top:qqbar2ttbar``, W -> quarks) against QCD dijets
  (``HardQCD:all``); anti-kT R = 0.8, jet pT 500-650 GeV; a top jet must contain the top and its three decay
  quarks (Delta R < R from the jet axis, taken from the hard-process record).
* ``quark-vs-gluon``: Z(-> neutrinos) + jet, ``qg -> Z q`` (quark jets) against ``q qbar -> Z g`` (gluon jets);
  anti-kT R = 0.4, jet pT 100-150 GeV; the jet must contain the hard outgoing parton.

Jets are clustered from all visible final-state particles with |eta| < 5 by Pythia's ``SlowJet`` running
FastJet's anti-kT (its built-in fjcore; ``clusterer="fastjet"`` uses the fastjet package instead, same
algorithm). Jet |eta| and pT windows are configurable.

Images: the jet's constituents pixelised around the jet axis, 125 x 125 pixels of 0.0174 in eta by 2 pi / 360 in
phi, three channels: (0) track pT of charged constituents with pT > 1 GeV and |eta| < 2.4; (1) ECAL energy of
photons and electrons per pixel, smeared by 3 %/sqrt(E) (+) 0.5 %; (2) HCAL energy of neutral hadrons summed in
5 x 5-pixel towers, smeared by 100 %/sqrt(E) (+) 5 % and spread evenly over the tower's pixels (calorimeters
|eta| < 3). Rows: ``X_jets`` (list<list<list<double>>> 3 x 125 x 125), ``y``, ``pt``, ``m0`` (jet mass), plus
``eta`` and ``phi`` of the jet axis; one row per row group by default, snappy, as the CMS converter writes.

Work is split into shards of ``shard_size`` jets of one class, each with its own seed derived from the run's
seed (``numpy.random.SeedSequence``), generated in worker processes with a fresh Pythia initialised with that
seed: the output depends on the seed, ``n`` and ``shard_size`` only, not on the number of workers.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from hpcvit import fsio
from hpcvit.parallel import spawn_map

IMAGE = 125
PIXEL_ETA = 0.0174
PIXEL_PHI = 2 * math.pi / 360
TOWER = 5
TRACK_PT_MIN, TRACK_ETA_MAX, CALO_ETA_MAX, PARTICLE_ETA_MAX = 1.0, 2.4, 3.0, 5.0
ECAL_STOCHASTIC, ECAL_CONSTANT = 0.03, 0.005
HCAL_STOCHASTIC, HCAL_CONSTANT = 1.0, 0.05
_NEUTRINOS = {12, 14, 16}

PROCESSES: dict[str, dict[str, Any]] = {
    "top-vs-qcd": {"labels": {1: "top", 0: "qcd"}, "jet_r": 0.8, "pt_min": 500.0, "pt_max": 650.0, "eta_max": 2.0},
    "quark-vs-gluon": {"labels": {1: "quark", 0: "gluon"}, "jet_r": 0.4, "pt_min": 100.0, "pt_max": 150.0,
                       "eta_max": 2.0},
}


@dataclass(frozen=True)
class GenConfig:
    """One generation run."""

    process: str
    n: int
    seed: int = 1
    pt_min: float | None = None
    pt_max: float | None = None
    eta_max: float | None = None
    jet_r: float | None = None
    ecm: float = 13000.0
    shard_size: int = 50
    clusterer: str = "fjcore"

    def resolved(self) -> GenConfig:
        if self.process not in PROCESSES:
            raise ValueError(f"unknown process {self.process!r} (choose from {', '.join(PROCESSES)})")
        d = PROCESSES[self.process]
        cfg = replace(self, **{k: d[k] for k in ("pt_min", "pt_max", "eta_max", "jet_r") if getattr(self, k) is None})
        if cfg.n < 2:
            raise ValueError("n must be at least 2 (one jet of each class)")
        if not 0 < cfg.pt_min < cfg.pt_max:
            raise ValueError(f"need 0 < pt_min < pt_max, got {cfg.pt_min}, {cfg.pt_max}")
        if not 0 < cfg.eta_max <= 2.5 or not 0 < cfg.jet_r <= 1.5 or cfg.shard_size < 1:
            raise ValueError("need 0 < eta_max <= 2.5, 0 < jet_r <= 1.5 and shard_size >= 1")
        if cfg.clusterer not in ("fjcore", "fastjet"):
            raise ValueError("clusterer is fjcore or fastjet")
        return cfg

    @property
    def pthat(self) -> tuple[float, float]:
        """Hard-process pT window: below the jet window (jets lose pT out of the cone) and above it."""
        return 0.9 * self.pt_min, 1.2 * self.pt_max


@dataclass(frozen=True)
class Shard:
    index: int
    label: int
    n_jets: int
    seed: int


def plan(cfg: GenConfig) -> list[Shard]:
    """Shards alternating between the classes (label 1 gets the odd jet), each with an independent seed."""
    per = {1: cfg.n - cfg.n // 2, 0: cfg.n // 2}
    sizes = {lab: [cfg.shard_size] * (k // cfg.shard_size) + ([k % cfg.shard_size] if k % cfg.shard_size else [])
             for lab, k in per.items()}
    order: list[tuple[int, int]] = []
    for i in range(max(len(v) for v in sizes.values())):
        order += [(lab, sizes[lab][i]) for lab in (1, 0) if i < len(sizes[lab])]
    seqs = np.random.SeedSequence(cfg.seed).spawn(len(order))
    return [Shard(i, lab, size, int(s.generate_state(1)[0] % 900_000_000) + 1)
            for i, ((lab, size), s) in enumerate(zip(order, seqs))]


def pythia_settings(cfg: GenConfig, label: int, seed: int) -> list[str]:
    lo, hi = cfg.pthat
    common = [f"Beams:eCM = {cfg.ecm}", "Print:quiet = on", "Random:setSeed = on", f"Random:seed = {seed}",
              "ParticleDecays:limitTau0 = on", "ParticleDecays:tau0Max = 10",
              f"PhaseSpace:pTHatMin = {lo}", f"PhaseSpace:pTHatMax = {hi}"]
    if cfg.process == "top-vs-qcd":
        proc = (["Top:gg2ttbar = on", "Top:qqbar2ttbar = on", "24:onMode = off", "24:onIfAny = 1 2 3 4 5"]
                if label == 1 else ["HardQCD:all = on"])
    else:
        proc = ["WeakBosonAndParton:qg2gmZq = on" if label == 1 else "WeakBosonAndParton:qqbar2gmZg = on",
                "WeakZ0:gmZmode = 2", "23:onMode = off", "23:onIfAny = 12 14 16"]
    return common + proc


# -- the event loop (runs in worker processes) ---------------------------------------------------------------
def _dr(eta1: float, phi1: float, eta2: float, phi2: float) -> float:
    dphi = (phi1 - phi2 + math.pi) % (2 * math.pi) - math.pi
    return math.hypot(eta1 - eta2, dphi)


def _targets(process_record, cfg: GenConfig, label: int) -> list[list[tuple[float, float]]]:
    """Partons a jet must contain: per top [top, b, q, q'] (top label), or [the outgoing parton] (q/g)."""
    pp = process_record
    if cfg.process == "top-vs-qcd":
        if label == 0:
            return []
        out = []
        for i in range(pp.size()):
            p = pp[i]
            if p.idAbs() != 6:
                continue
            quarks, todo = [], list(p.daughterList())
            while todo:
                d = pp[todo.pop()]
                if d.idAbs() == 24 or d.idAbs() == 6:
                    todo += list(d.daughterList())
                elif 1 <= d.idAbs() <= 5:
                    quarks.append((d.eta(), d.phi()))
            if len(quarks) == 3:
                out.append([(p.eta(), p.phi()), *quarks])
        return out
    partons = []
    for i in range(pp.size()):
        p = pp[i]
        if p.status() == 23 and (p.idAbs() <= 5 or p.idAbs() == 21) and p.pT() > 0:
            partons.append([(p.eta(), p.phi())])
    return partons


def _pixelise(event, constituents: list[int], jet_eta: float, jet_phi: float, rng: np.random.Generator):
    """Sparse (channel, ieta, iphi, value) of one jet's image."""
    n = len(constituents)
    pt, eta, phi, e = (np.empty(n) for _ in range(4))
    ida, charged = np.empty(n, dtype=np.int64), np.empty(n, dtype=bool)
    for j, c in enumerate(constituents):
        p = event[c]
        pt[j], eta[j], phi[j], e[j], ida[j], charged[j] = p.pT(), p.eta(), p.phi(), p.e(), p.idAbs(), p.isCharged()
    ie = np.floor((eta - jet_eta) / PIXEL_ETA + IMAGE / 2).astype(np.int64)
    dphi = (phi - jet_phi + np.pi) % (2 * np.pi) - np.pi
    ip = np.floor(dphi / PIXEL_PHI + IMAGE / 2).astype(np.int64)
    inside = (ie >= 0) & (ie < IMAGE) & (ip >= 0) & (ip < IMAGE)
    img = np.zeros((3, IMAGE, IMAGE))
    trk = inside & charged & (pt > TRACK_PT_MIN) & (np.abs(eta) < TRACK_ETA_MAX)
    np.add.at(img[0], (ie[trk], ip[trk]), pt[trk])
    calo = inside & (np.abs(eta) < CALO_ETA_MAX)
    em = calo & ((ida == 22) | (ida == 11))
    np.add.at(img[1], (ie[em], ip[em]), e[em])
    hits = img[1] > 0
    if hits.any():
        ev = img[1][hits]
        sigma = np.sqrt((ECAL_STOCHASTIC / np.sqrt(ev)) ** 2 + ECAL_CONSTANT ** 2)
        img[1][hits] = np.maximum(ev * (1 + sigma * rng.standard_normal(ev.size)), 0.0)
    had = calo & ~charged & (ida != 22) & (ida != 11) & (ida != 13) & ~np.isin(ida, list(_NEUTRINOS))
    if had.any():
        towers = np.zeros((IMAGE // TOWER, IMAGE // TOWER))
        np.add.at(towers, (ie[had] // TOWER, ip[had] // TOWER), e[had])
        t = towers > 0
        ev = towers[t]
        sigma = np.sqrt((HCAL_STOCHASTIC / np.sqrt(ev)) ** 2 + HCAL_CONSTANT ** 2)
        towers[t] = np.maximum(ev * (1 + sigma * rng.standard_normal(ev.size)), 0.0)
        img[2] = np.kron(towers, np.ones((TOWER, TOWER))) / (TOWER * TOWER)
    ch, r, c = np.nonzero(img)
    return ch.astype(np.int8), r.astype(np.int16), c.astype(np.int16), img[ch, r, c]


class _FastJetClusterer:
    """anti-kT from the fastjet package over the visible final-state particles (a Python loop over them)."""

    def __init__(self, r: float, pt_min: float):
        import fastjet

        self.fj, self.jetdef, self.pt_min = fastjet, fastjet.JetDefinition(fastjet.antikt_algorithm, r), pt_min

    def jets(self, event) -> list[tuple[float, float, float, float, list[int]]]:
        parts = []
        for i in range(event.size()):
            p = event[i]
            if p.isFinal() and p.isVisible() and abs(p.eta()) < PARTICLE_ETA_MAX:
                pj = self.fj.PseudoJet(p.px(), p.py(), p.pz(), p.e())
                pj.set_user_index(i)
                parts.append(pj)
        cs = self.fj.ClusterSequence(parts, self.jetdef)
        return [(j.pt(), j.eta(), j.phi_std(), j.m(), [c.user_index() for c in j.constituents()])
                for j in self.fj.sorted_by_pt(cs.inclusive_jets(self.pt_min))]


class _SlowJetClusterer:
    """anti-kT by Pythia's SlowJet, which runs FastJet's algorithm (fjcore) in C++ on the event record."""

    def __init__(self, r: float, pt_min: float):
        import pythia8mc

        # power -1 = anti-kT; select 2 = visible final-state particles; massSet 2 = particle masses
        self.sj = pythia8mc.SlowJet(-1, r, pt_min, PARTICLE_ETA_MAX, 2, 2)

    def jets(self, event) -> list[tuple[float, float, float, float, list[int]]]:
        sj = self.sj
        sj.analyze(event)
        return [(sj.pT(i), sj.p(i).eta(), sj.phi(i), sj.m(i), list(sj.constituents(i))) for i in range(sj.sizeJet())]


def run_shard(cfg: GenConfig, shard: Shard) -> dict[str, Any]:
    """Generate ``shard.n_jets`` jets of class ``shard.label``; returns sparse images and jet scalars."""
    import pythia8mc

    t0 = time.monotonic()
    py = pythia8mc.Pythia("", False)
    for s in pythia_settings(cfg, shard.label, shard.seed):
        if not py.readString(s):
            raise RuntimeError(f"Pythia rejected setting {s!r}")
    if not py.init():
        raise RuntimeError(f"Pythia initialisation failed for {cfg.process} label {shard.label}")
    rng = np.random.default_rng(shard.seed)
    cl = (_SlowJetClusterer if cfg.clusterer == "fjcore" else _FastJetClusterer)(cfg.jet_r, 0.5 * cfg.pt_min)
    parts: dict[str, list] = {k: [] for k in ("jet", "ch", "r", "c", "v")}
    scal: dict[str, list[float]] = {k: [] for k in ("pt", "m0", "eta", "phi")}
    n_events = failed = 0
    max_events = 1000 + 1000 * shard.n_jets
    match = cfg.process == "quark-vs-gluon" or shard.label == 1  # QCD jets need no parton match
    while len(scal["pt"]) < shard.n_jets:
        if n_events >= max_events:
            raise RuntimeError(f"{cfg.process} label {shard.label}: only {len(scal['pt'])} of {shard.n_jets} jets "
                               f"in {n_events} events; are the pT/eta windows reachable?")
        n_events += 1
        if not py.next():
            failed += 1
            continue
        event = py.event
        need = _targets(py.process, cfg, shard.label)
        for pt, eta, phi, m, cons in cl.jets(event):
            if not (cfg.pt_min <= pt < cfg.pt_max and abs(eta) < cfg.eta_max):
                continue
            if match and not any(all(_dr(eta, phi, e2, p2) < cfg.jet_r for e2, p2 in group) for group in need):
                continue
            ch, r, c, v = _pixelise(event, cons, eta, phi, rng)
            parts["jet"].append(np.full(len(v), len(scal["pt"]), dtype=np.int32))
            for key, arr in zip(("ch", "r", "c", "v"), (ch, r, c, v)):
                parts[key].append(arr)
            for key, val in zip(("pt", "m0", "eta", "phi"), (pt, m, eta, phi)):
                scal[key].append(val)
            if len(scal["pt"]) == shard.n_jets:
                break
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out.update({k: np.asarray(v, dtype=np.float64) for k, v in scal.items()})
    out.update(index=shard.index, label=shard.label, n_events=n_events, failed=failed,
               seconds=time.monotonic() - t0)
    return out


def _worker_init() -> None:
    """Send the C++ banners (FastJet's) to /dev/null: workers report through return values only."""
    fd = os.open(os.devnull, os.O_WRONLY)
    os.dup2(fd, 1)
    os.close(fd)


def _work(args: tuple[GenConfig, Shard]) -> dict[str, Any]:
    return run_shard(*args)


def densify(result: dict[str, Any]) -> np.ndarray:
    n = len(result["pt"])
    x = np.zeros((n, 3, IMAGE, IMAGE))
    np.add.at(x, (result["jet"], result["ch"].astype(np.int64), result["r"].astype(np.int64),
                  result["c"].astype(np.int64)), result["v"])
    return x


def metadata(cfg: GenConfig) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    return {
        "process": cfg.process, "labels": {str(k): v for k, v in PROCESSES[cfg.process]["labels"].items()},
        "seed": cfg.seed, "n_jets": cfg.n, "shard_size": cfg.shard_size, "ecm_gev": cfg.ecm,
        "generator": {"pythia8mc": ver("pythia8mc"), "clusterer": cfg.clusterer, "fastjet": ver("fastjet"),
                      "hpcvit": ver("hpcvit"), "settings": {
                          f"label_{lab}": [x for x in pythia_settings(cfg, lab, 0) if not x.startswith("Random:seed")]
                          for lab in (1, 0)}},
        "cuts": {"pt_min": cfg.pt_min, "pt_max": cfg.pt_max, "abs_eta_max": cfg.eta_max, "jet_r": cfg.jet_r,
                 "algorithm": "anti-kT", "pthat": list(cfg.pthat),
                 "matching": "top and its 3 decay quarks within R" if cfg.process == "top-vs-qcd"
                 else "hard outgoing parton within R"},
        "image": {"size": IMAGE, "pixel_eta": PIXEL_ETA, "pixel_phi": PIXEL_PHI,
                  "channels": ["track pT", "ECAL energy", "HCAL energy"]},
        "detector": {"track_pt_min": TRACK_PT_MIN, "track_abs_eta_max": TRACK_ETA_MAX,
                     "calo_abs_eta_max": CALO_ETA_MAX, "ecal_resolution": [ECAL_STOCHASTIC, ECAL_CONSTANT],
                     "hcal_resolution": [HCAL_STOCHASTIC, HCAL_CONSTANT], "hcal_tower_pixels": TOWER},
    }


def generate(cfg: GenConfig, out: str | Path, workers: int | None = None, row_group_size: int = 1,
             progress: bool = True, on_shard: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Generate ``cfg.n`` jets (half per class) into the Parquet file ``out`` (written atomically).

    Returns a summary: jets, events per class, seconds, jets per second.
    """
    import pyarrow.parquet as pq

    from hpcvit.data.parquet import jets_table

    cfg = cfg.resolved()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shards = plan(cfg)
    workers = max(1, min(workers or os.cpu_count() or 1, len(shards)))
    meta = metadata(cfg)
    t0 = time.monotonic()
    events = {0: 0, 1: 0}
    done: dict[int, dict[str, Any]] = {}
    next_write = 0
    writer = None
    bar = None
    try:
        with fsio.atomic_path(out) as tmp:
            if progress:
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                    TimeRemainingColumn,
                )

                bar = Progress(TextColumn(f"[bold]{cfg.process}[/] jets"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn())
                bar.start()
                task = bar.add_task("jets", total=cfg.n, rate="")
            for res in spawn_map(_work, [(cfg, s) for s in shards], workers, ordered=False,
                                 initializer=_worker_init, what="generator"):
                done[res["index"]] = res
                events[res["label"]] += res["n_events"]
                if on_shard:
                    on_shard(res)
                if bar is not None:
                    got = bar.tasks[0].completed + len(res["pt"])
                    bar.update(task, completed=got, rate=f"{got / (time.monotonic() - t0):.1f} jets/s")
                while next_write in done:  # write in shard order: the file does not depend on scheduling
                    r = done.pop(next_write)
                    n = len(r["pt"])
                    table = jets_table(densify(r), {"y": np.full(n, float(r["label"])), "pt": r["pt"],
                                                    "m0": r["m0"], "eta": r["eta"], "phi": r["phi"]},
                                       metadata=meta)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema, compression="snappy")
                    writer.write_table(table, row_group_size=row_group_size)
                    next_write += 1
            writer.close()
            writer = None
    finally:
        if bar is not None:
            bar.stop()
        if writer is not None:
            writer.close()
    seconds = time.monotonic() - t0
    labels = PROCESSES[cfg.process]["labels"]
    per = {1: cfg.n - cfg.n // 2, 0: cfg.n // 2}
    return {"path": str(out), "jets": cfg.n, "seconds": round(seconds, 2), "jets_per_s": round(cfg.n / seconds, 1),
            "workers": workers, "events": {labels[k]: v for k, v in events.items()},
            "efficiency": {labels[k]: round(per[k] / max(events[k], 1), 4) for k in events},
            "config": asdict(cfg), "bytes": out.stat().st_size}


def summary_line(s: dict[str, Any]) -> str:
    return (f"wrote {s['jets']} jets to {s['path']} ({s['bytes'] / 1e6:.1f} MB) in {s['seconds']:.1f} s: "
            f"{s['jets_per_s']:.1f} jets/s on {s['workers']} worker(s); jets per event "
            + ", ".join(f"{k} {v}" for k, v in s["efficiency"].items()))


def to_json(s: dict[str, Any]) -> str:
    return json.dumps(s, indent=1, sort_keys=True)
