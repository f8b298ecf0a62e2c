"""Successive halving against the full grid on generated top vs QCD jets: epochs spent and the best found.

Runs ``jobs/search_top.yaml`` twice on the local executor on the same Parquet file (``--data``; made with
``hpcvit data generate --process top-vs-qcd`` when it is missing): once as written (the search), once with its
``search`` block removed and ``optim.epochs`` set to the search's ``max_epochs`` (the full grid: every
configuration trained all its epochs, same seeds, same schedule). Reports the epochs each trained, the best
configuration of each by the search's metric at the last epoch, where the search's winner ranks in the full
grid, and whether the winner's last-epoch metric equals the same configuration's in the full grid bit for bit
(a promotion is an exact resume, so it must). A second call with the same ``--workdir`` reuses the runs that
finished there.

Usage: python benchmarks/search_top.py [--data FILE] [--n-jets 3000] [--workdir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "jobs" / "search_top.yaml"


def hpcvit(*args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "hpcvit.cli", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"hpcvit {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def run(doc: dict[str, Any], workdir: Path, name: str) -> dict[str, Any]:
    """Submit ``doc`` and wait; the last-epoch metric and epochs of every configuration, and the wall time."""
    spec = workdir / f"{name}.yaml"
    out = workdir / name
    wall_file = out / "bench_wall_s"
    if not wall_file.exists():  # a finished run in the same --workdir is reused
        spec.write_text(yaml.safe_dump(doc, sort_keys=False))
        start = time.monotonic()
        hpcvit("submit", str(spec), "--wait", "--output-dir", str(out), cwd=workdir)
        wall_file.write_text(f"{time.monotonic() - start:.1f}\n")
    wall = float(wall_file.read_text())
    sweep = next(p.parent for p in out.glob("*/manifest.json"))
    rows = json.loads(hpcvit("compare", str(sweep.name), "--output-dir", str(out), "--format", "json", cwd=workdir))
    labels = json.loads((sweep / "manifest.json").read_text())["labels"]
    return {"wall_s": wall, "configs": {labels[r["task"]]: {"final": r[f"{r['metric']}_last"], "epochs": r["epochs"],
                                                            "outcome": r.get("outcome", "completed")}
                                        for r in rows}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO / "data" / "top_vs_qcd_n3000_seed5.parquet")
    parser.add_argument("--n-jets", type=int, default=3000, help="jets generated when --data is missing")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not args.data.exists():
        args.data.parent.mkdir(parents=True, exist_ok=True)
        hpcvit("data", "generate", "--process", "top-vs-qcd", "-n", str(args.n_jets), "--seed", "5", "--no-progress",
               "-o", str(args.data), cwd=REPO)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="search-top-"))
    workdir.mkdir(parents=True, exist_ok=True)

    doc = yaml.safe_load(SPEC.read_text())
    doc["data"]["paths"] = [str(args.data.resolve())]
    doc["data"]["cache_dir"] = str(workdir / "cache")
    doc["executor"] = "local"
    search = doc["sweep"]["search"]
    grid = json.loads(json.dumps(doc))
    del grid["sweep"]["search"]
    grid["optim"]["epochs"] = search["max_epochs"]
    grid["name"] = doc["name"] + "-grid"

    found = run(doc, workdir, "search")
    full = run(grid, workdir, "grid")
    metric = search["metric"]
    sign = -1 if search.get("mode", "max") == "max" else 1

    def best(configs: dict[str, Any], only_complete: bool) -> str:
        pool = {k: v for k, v in configs.items()
                if not only_complete or v["epochs"] == search["max_epochs"]}
        return min(pool, key=lambda k: sign * pool[k]["final"])

    winner, grid_best = best(found["configs"], True), best(full["configs"], False)
    ranking = sorted(full["configs"], key=lambda k: sign * full["configs"][k]["final"])
    result = {
        "metric": metric,
        "epochs_search": sum(v["epochs"] for v in found["configs"].values()),
        "epochs_grid": sum(v["epochs"] for v in full["configs"].values()),
        "wall_search_s": round(found["wall_s"], 1), "wall_grid_s": round(full["wall_s"], 1),
        "winner": winner, "winner_value": found["configs"][winner]["final"],
        "winner_value_in_grid": full["configs"][winner]["final"],
        "winner_rank_in_grid": ranking.index(winner) + 1,
        "grid_best": grid_best, "grid_best_value": full["configs"][grid_best]["final"],
        "exact": found["configs"][winner]["final"] == full["configs"][winner]["final"],
        "grid": {k: v["final"] for k, v in full["configs"].items()},
        "search": {k: {"final": v["final"], "epochs": v["epochs"], "outcome": v["outcome"]}
                   for k, v in found["configs"].items()},
    }
    r = result
    print(f"{'':24}{'search':>12}{'full grid':>12}")
    print(f"{'epochs trained':24}{r['epochs_search']:>12}{r['epochs_grid']:>12}  "
          f"({r['epochs_search'] / r['epochs_grid']:.2f} of the grid)")
    print(f"{'wall time (s)':24}{r['wall_search_s']:>12}{r['wall_grid_s']:>12}  "
          f"({r['wall_search_s'] / r['wall_grid_s']:.2f} of the grid)")
    print(f"best by {metric} at the last epoch:")
    print(f"  search   {r['winner']}: {r['winner_value']:.4f} (rank {r['winner_rank_in_grid']} of "
          f"{len(ranking)} in the full grid)")
    print(f"  grid     {r['grid_best']}: {r['grid_best_value']:.4f}")
    print(f"  the winner's value equals its full-grid twin's bit for bit: {r['exact']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if r["exact"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
