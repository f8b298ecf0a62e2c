"""The hit-clustering study of the README: the seed's model, the hit set transformer and the topological baseline
on the same generated events, as a user runs it.

Generates ``--events`` events (``make data-hits`` settings), writes ``jobs/sweep_hits.yaml`` with that file and
``--epochs``, runs it with ``hpcvit submit --wait`` (the local executor, both models at once), then reads each
run's test metrics (``clusters/metrics.csv``: the model and the baseline on the same test events) and the binned
efficiencies, and prints the README's tables (markdown) and writes them as JSON.

Usage: python benchmarks/hits_study.py [--events 20000] [--epochs 8] [--workdir DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHOWN = ("efficiency", "efficiency_close", "purity", "merge_rate", "split_rate", "ari", "energy_resolution",
         "pid_accuracy", "photon_nh_auc")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--workdir", type=Path, default=Path("hits-study"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"calo_hits_n{args.events}_seed1.h5"
    hpcvit = [sys.executable, "-m", "hpcvit.cli"]
    if not data.exists():
        subprocess.run([*hpcvit, "data", "generate", "--process", "calo-hits", "-n", str(args.events), "--seed", "1",
                        "--jet-energy", "10", "30", "--particles", "2", "6", "--ecal-cell-mm", "10", "-o", str(data)],
                       check=True)
    doc = yaml.safe_load((REPO / "jobs" / "sweep_hits.yaml").read_text())
    doc["data"]["paths"] = [str(data)]
    doc["data"]["cache_dir"] = str(work / "cache")
    doc["optim"]["epochs"] = args.epochs
    doc["output_dir"] = str(work / "runs")
    spec = work / "sweep_hits.yaml"
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    subprocess.run([*hpcvit, "submit", str(spec), "--wait"], check=True, cwd=work)
    sweep = max((work / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    results, binned = {}, {}
    for task in sorted((sweep / "tasks").iterdir()):
        folder = task / "clusters"
        with open(folder / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        model = rows[0]["method"].split(",")[0]
        results[model] = {k: float(rows[0][k]) for k in SHOWN if rows[0].get(k) not in (None, "")}
        results["topological baseline"] = {k: float(rows[1][k]) for k in SHOWN if rows[1].get(k) not in (None, "")}
        done = set(binned)
        with open(folder / "efficiency_binned.csv") as f:
            for r in csv.DictReader(f):
                if r["variable"] == "nearest" and (r["method"] != "topological" or "topological baseline" not in done):
                    name = model if r["method"] != "topological" else "topological baseline"
                    binned.setdefault(name, []).append((r["lo"], r["hi"], r["n"], r["efficiency"], r["merge_rate"]))
    print("| method | " + " | ".join(SHOWN) + " |")
    print("|---|" + "---|" * len(SHOWN))
    for name, m in results.items():
        print(f"| {name} | " + " | ".join(f"{m[k]:.3f}" if k in m else "" for k in SHOWN) + " |")
    print("\nefficiency (merged) by distance to the nearest particle (mm):")
    for name, rows in binned.items():
        print(f"{name}: " + "; ".join(f"{float(lo):g}-{float(hi):g} (n={n}): {float(e):.3f} ({float(mr):.3f})"
                                      for lo, hi, n, e, mr in rows))
    if args.json:
        args.json.write_text(json.dumps({"events": args.events, "epochs": args.epochs, "sweep": str(sweep),
                                         "metrics": results, "by_distance": binned}, indent=1) + "\n")


if __name__ == "__main__":
    main()
