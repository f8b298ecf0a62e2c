"""The trained models of a hit-clustering sweep on events they have never seen: a second generated file (another
seed), scored as each run scores its test split, the topological baseline beside them, with binomial errors.

A run's own test split holds 400 events of the README study; particles close to another are rare (about 100
within 100-200 mm, 16 within 100 mm). This scores each task's best weights on ``--events`` more events, with the
scaling kept in its checkpoint, through the objective's own evaluation and artifacts
(``<workdir>/<model>/metrics.csv`` and ``efficiency_binned.csv``), and prints the efficiency by distance.

A model that appears in several tasks (a zip of its arguments) is scored per task, under the task's run name.
``--thresholds`` scores a model with edges (hit_graph_transformer, hit_condensation_transformer) at other linkage
thresholds than its own, each under ``<name>@<threshold>``: how merges trade against splits on the same weights.
``--weights last`` scores the last checkpoint's weights instead of the best on the validation split.

``--cone`` makes the unseen events of narrower jets, where showers overlap more often.

Usage: python benchmarks/hits_holdout.py SWEEP_DIR [--events 4000] [--seed 2] [--cone RAD] [--workdir DIR]
       [--json out.json] [--models NAME ...] [--tasks INDEX ...] [--thresholds T ...] [--weights best|last]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=2)
    ap.add_argument("--cone", type=float, help="the jets' angular spread, rad (default: the generator's 0.12); "
                                                "narrower puts more particles close to another")
    ap.add_argument("--workdir", type=Path, default=Path("hits-holdout"))
    ap.add_argument("--json", type=Path)
    ap.add_argument("--models", nargs="*", help="score only these models' tasks (default: every task; none: "
                                                "only print what the workdir holds)")
    ap.add_argument("--tasks", nargs="+", type=int, help="score only these task indices")
    ap.add_argument("--weights", choices=["best", "last"], default="best",
                    help="the task's best weights on its validation split (default) or those of its last checkpoint")
    ap.add_argument("--thresholds", nargs="+", type=float,
                    help="linkage thresholds to score an edge model at (default: the model's own)")
    args = ap.parse_args()

    import torch

    from hpcvit.ledger import SweepDir
    from hpcvit.objectives import get_objective

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cone = [] if args.cone is None else ["--cone", f"{args.cone:g}"]
    data = work / f"calo_hits_n{args.events}_seed{args.seed}{'_cone' + cone[1] if cone else ''}.h5"
    if not data.exists():  # as `make data-hits` makes them, another seed
        subprocess.run([sys.executable, "-m", "hpcvit.cli", "data", "generate", "--process", "calo-hits", "-n",
                        str(args.events), "--seed", str(args.seed), "--jet-energy", "10", "30", "--particles", "2",
                        "6", "--ecal-cell-mm", "10", *cone, "-o", str(data)], check=False)
        if not data.exists():  # the generator has said what is wrong
            sys.exit(2)
    torch.set_num_threads(2)
    # every event of the file in the test split but a sliver, which stays "training": the split needs one
    sliver = min(0.999, 1 - 1.5 / max(args.events, 2))
    specs = {task: task.spec() for task in SweepDir(args.sweep.resolve()).tasks()}
    names = [spec.model.name for spec in specs.values()]
    for task, spec in specs.items():
        label = spec.model.name if names.count(spec.model.name) == 1 else task.run_name
        if (args.models is not None and spec.model.name not in args.models) or (args.tasks and task.index not in
                                                                                  args.tasks):
            continue
        held = spec.data.model_copy(update={"paths": [str(data)], "cache_dir": str(work / "cache"),
                                            "val_fraction": 0.0, "test_fraction": sliver})
        spec = spec.model_copy(update={"data": held})
        objective = get_objective(spec.data.task)(spec, work)
        saved = torch.load(max(task.checkpoints.glob("ckpt-*.pt")), weights_only=True)
        objective.build_data({k: saved[k] for k in objective.state_keys})
        model = objective.build_model()
        weights = saved["model"] if args.weights == "last" else torch.load(task.file(task.BEST_WEIGHTS),
                                                                            weights_only=True)
        model.load_state_dict(weights)
        model.eval()
        several = bool(args.thresholds) and hasattr(model, "threshold")  # the models whose edges are linked
        thresholds = args.thresholds if several else [objective.threshold]
        evaluators = [objective.evaluator() for _ in thresholds]
        loader = objective.loader(_subset(objective.data.test), None, 16, workers=0, generator=None,
                                  pin_memory=False, worker_init_fn=None, persistent=False)
        with torch.no_grad():
            for x, y in loader:
                out = model(*objective.inputs(x, torch.device("cpu")))  # once; only the clusters read the threshold
                for threshold, evaluator in zip(thresholds, evaluators):
                    objective.threshold = threshold
                    evaluator.add(out, y)
        for threshold, evaluator in zip(thresholds, evaluators):
            metrics, predictions = objective.evaluate([evaluator.local()])
            name = f"{label}@{threshold:g}" if several else label
            objective.write_artifacts(work / name, {"test": predictions}, name)
            print(f"{name}: {len(objective.data.test)} events, efficiency {metrics['efficiency']:.3f}", flush=True)
    results: dict[str, dict] = {}  # every model scored in the workdir (a run with --models adds to the earlier ones)
    for folder in sorted(p.parent for p in work.glob("*/metrics.csv")):
        with open(folder / "metrics.csv") as f:
            model, base = list(csv.DictReader(f))
        with open(folder / "efficiency_binned.csv") as f:
            rows = [r for r in csv.DictReader(f) if r["variable"] == "nearest" and int(r["n"])]
        results[folder.name] = {"metrics": _numbers(model), "by_distance": _with_errors(rows, "topological", False)}
        results["topological baseline"] = {"metrics": _numbers(base), "by_distance": _with_errors(rows, "topological",
                                                                                                   True)}
    print("\n| distance (mm) | particles | " + " | ".join(results) + " |")
    print("|---|---|" + "---|" * len(results))
    bins = next(iter(results.values()))["by_distance"]
    for k, b in enumerate(bins):
        cells = [f"{r['by_distance'][k]['efficiency']:.3f} +- {r['by_distance'][k]['error']:.3f}"
                 for r in results.values()]
        print(f"| {b['lo']:g}-{b['hi']:g} | {b['n']} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"events": args.events, "seed": args.seed, "cone": args.cone,
                                         "sweep": str(args.sweep), "results": results}, indent=1, default=float) + "\n")


def _numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if k != "method" and v not in ("", None)}


def _subset(dataset):
    from torch.utils.data import Subset

    return Subset(dataset, list(range(len(dataset))))


def _with_errors(rows: list[dict], baseline: str, want_baseline: bool) -> list[dict]:
    out = []
    for r in rows:
        if (r["method"] == baseline) != want_baseline:
            continue
        n, e = int(r["n"]), float(r["efficiency"])
        out.append({"lo": float(r["lo"]), "hi": float(r["hi"]), "n": n, "efficiency": e,
                    "error": math.sqrt(e * (1 - e) / n), "merge_rate": float(r["merge_rate"])})
    return out


if __name__ == "__main__":
    main()
