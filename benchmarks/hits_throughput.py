"""Hit clustering: hits/s of hpcvit's loader and training step against a plain PyTorch loop, and the padding.

loader  the objective's training loader (ragged cache -> scaled events -> padded batches built by length)
        iterated for one epoch: real (not padding) hits per second.
ours    ``Trainer.train_epoch`` on a sweep folder of generated events (single process, no DDP), the same
        ``--steps`` each repeat (``optim.max_steps_per_epoch``).
plain   the same registry model (same seed) on the very batches ours trains on (taken from its loader before
        timing, kept in memory), AdamW with the same settings, the same matched loss:
        ``zero_grad; loss = hit_loss(model(x), y); backward; step``.

Both run alternately ``--repeats`` times after a warm-up; ratio = ours hits/s / plain hits/s (target >= 0.9).
Padding: the share of a batch's slots that are padding, batches of the epoch's random order against batches
built by length (what training uses).

Usage: python benchmarks/hits_throughput.py [--events 1200] [--model hit_set_transformer] [--batch 16]
       [--steps 12] [--repeats 3] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KWARGS = {"clusters_finder": "{nclusters_max: 16, dmodel: 64, nhid_ff_trsf: 128}",
          "hit_set_transformer": "{n_queries: 16, dmodel: 64, dim_ff: 128, nlayers_encoder: 3, nlayers_decoder: 2}",
          "hit_graph_transformer": "{k: 8, dmodel: 64, dim_ff: 128, nlayers_local: 3, nlayers_global: 1}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1200)
    ap.add_argument("--model", default="hit_set_transformer", choices=sorted(KWARGS))
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import numpy as np
    import torch

    from hpcvit.hits.data import padding_fraction
    from hpcvit.hits.generate import generate
    from hpcvit.hits.simulate import EventConfig
    from hpcvit.orchestrate import create_sweep
    from hpcvit.sweep import load_sweep
    from hpcvit.training.loop import Trainer

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(args.events, root / "calo.h5", seed=1, cfg=EventConfig(jet_energy=(10.0, 30.0), particles=(2, 6),
                                                                        ecal_cell_mm=10.0), workers=2)
        spec = root / "spec.yaml"
        spec.write_text(f"""
name: hits-throughput
data: {{format: hdf5, paths: [{root / 'calo.h5'}], task: hit_clustering, input_key: feats, target_key: labels,
        val_fraction: 0.1, cache_dir: {root / 'cache'}}}
model: {{name: {args.model}, kwargs: {KWARGS[args.model]}}}
optim: {{epochs: 1000, batch_size: {args.batch}, lr: 1e-3, grad_clip: null, max_steps_per_epoch: {args.steps}}}
checkpoint: {{every_minutes: null, keep_best: false}}
resources: {{nproc_per_node: 1}}
""")
        sweep = create_sweep(load_sweep(spec), root / "runs", submit=False, tracking=False)
        trainer = Trainer(sweep.task(0))
        data = trainer.data

        # -- the loader, one epoch -------------------------------------------------------------------------
        loader = trainer._loader(data.train, trainer.sampler, args.batch)
        t0, hits = time.perf_counter(), 0
        for _, y in loader:
            hits += int((~y["pad"]).sum())
        loader_rate = hits / (time.perf_counter() - t0)
        sizes = data.train.sizes
        random_order = np.random.default_rng(0).permutation(len(sizes))
        pad_random = padding_fraction(sizes[random_order], args.batch)
        pad_length = padding_fraction(sizes[np.asarray(trainer.sampler.indices())], args.batch)

        # -- the same batches for the plain loop -----------------------------------------------------------
        trainer.sampler.set_epoch(0)
        batches = []
        for k, (x, y) in enumerate(trainer._loader(data.train, trainer.sampler, args.batch)):
            if k >= args.steps:
                break
            batches.append((x, y))
        real = sum(int((~y["pad"]).sum()) for _, y in batches)
        torch.manual_seed(0)
        model = trainer.objective.build_model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        head = trainer.objective.head

        def plain() -> float:
            model.train()
            t = time.perf_counter()
            for x, y in batches:
                opt.zero_grad(set_to_none=True)
                out = model(x["hits"], x["pad"])
                loss = head.loss(out, {k: y[k] for k in ("particle", "labels", "pad")})
                loss.backward()
                opt.step()
            return real / (time.perf_counter() - t)

        def ours() -> float:
            trainer.epoch, trainer.step_in_epoch = 0, 0  # epoch 0 again: the very batches the plain loop trains on
            t = time.perf_counter()
            assert trainer.train_epoch() is not None
            return real / (time.perf_counter() - t)

        plain(), ours()  # warm-up
        rates = {"ours": [], "plain": []}
        for _ in range(args.repeats):
            rates["plain"].append(plain())
            rates["ours"].append(ours())
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"model": args.model, "events": args.events, "batch": args.batch, "steps": args.steps,
              "threads": args.threads, "loader_hits_per_s": round(loader_rate), "padding_random_order": pad_random,
              "padding_by_length": pad_length, "hits_per_s": {k: [round(x) for x in v] for k, v in rates.items()},
              "ratio": med["ours"] / med["plain"]}
    print(f"loader: {loader_rate:,.0f} hits/s; padding {pad_random:.1%} in random order, {pad_length:.1%} by length")
    print(f"training step ({args.model}): hpcvit {med['ours']:,.0f} hits/s, plain loop {med['plain']:,.0f} hits/s, "
          f"ratio {result['ratio']:.2f} (target >= 0.9)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
