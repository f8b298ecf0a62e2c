"""``hpcvit compare`` from the user's side: every metric named with its split, test metrics beside validation,
the swept parameters as columns, seeds summarised (also at the end of ``submit --wait``), an all-failed sweep
said with its first error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcvit.ledger import create_sweep_dir, find_sweep
from hpcvit.results.compare import render, seed_groups
from hpcvit.results.rows import Col, Comparison
from hpcvit.sweep import expand
from tests.conftest import SPEC, children, hpcvit, parent_run, write_spec

GRID = """
  test_fraction: 0.2
sweep:
  grid:
    optim.lr: [3e-3, 1e-3]
    optim.seed: [0, 1]
"""


def _spec(name: str, lr: str = "3e-3") -> str:
    text = SPEC.format(name=name, n=480, size=16, epochs=2).replace("lr: 3e-3", f"lr: {lr}")
    text = text.replace("  val_fraction: 0.25\n", "  val_fraction: 0.25\n  test_fraction: 0.2\n")
    return text.replace("nproc_per_node: 2", "nproc_per_node: 1").replace("array_parallelism: 2",
                                                                          "array_parallelism: 4")


def test_seed_groups_mean_and_std(tmp_path: Path) -> None:
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("name: s\n")
    sweep = expand({"name": "s", "model": {"name": "cnn_small"},
                    "sweep": {"grid": {"model.name": ["cnn_small", "vit_seed"], "optim.seed": [0, 1, 2]}}})
    sweep_dir = create_sweep_dir(tmp_path / "runs", "s-1", spec_file, [r.spec for r in sweep.runs], "local",
                                 [r.label for r in sweep.runs])
    best = [0.80, 0.82, 0.84, 0.70, 0.71, None]  # task 5 has no metric yet: left out
    rows = [{"task": i, "model": "m", "val_roc_auc": b, "metric": "val_roc_auc"} for i, b in enumerate(best)]
    groups = seed_groups(sweep_dir, Comparison("s-1", "binary", "val_roc_auc", rows, []))
    assert [g["config"] for g in groups] == ["cnn_small", "vit_seed"]
    assert groups[0]["n_seeds"] == 3 and groups[0]["mean"] == pytest.approx(0.82)
    assert groups[0]["std"] == pytest.approx(0.02)
    assert groups[1]["tasks"] == [3, 4] and groups[1]["mean"] == pytest.approx(0.705)


def test_render_formats() -> None:
    rows = [{"task": 0, "run": "r", "model": "m", "status": "FINISHED", "val_roc_auc": 0.9, "test_roc_auc": 0.88,
             "test_rejection_at_eff_0.3": 12.0, "metric": "val_roc_auc", "_bounds": {"test_rejection_at_eff_0.3": True}}]
    result = Comparison("s", "binary", "val_roc_auc", rows,
                        [Col("task", "#", 0), Col("model", "model", 0, numeric=False),
                         Col("status", "status", 0, numeric=False), Col("val_roc_auc", "val roc_auc"),
                         Col("test_roc_auc", "test roc_auc"), Col("test_rejection_at_eff_0.3", "test 1/eB@.3", 1)])
    assert render(result, "markdown").splitlines()[2] == "| 0 | m | FINISHED | 0.9000 | 0.8800 | >=12.0 |"
    assert render(result, "csv").splitlines()[0].startswith("task,model,status,val_roc_auc,test_roc_auc,")
    record = json.loads(render(result, "json"))[0]
    assert record["test_rejection_at_eff_0.3_is_bound"] is True and record["run"] == "r"


@pytest.mark.slow
def test_a_seeded_grid_with_a_test_split_compares_with_every_split_named(workdir: Path) -> None:
    spec = write_spec(workdir, _spec("grid") + GRID.replace("  test_fraction: 0.2\n", ""))
    submitted = hpcvit("submit", str(spec), "--wait", cwd=workdir)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    assert "over seeds (mean +- std)" in submitted.stdout, "submit --wait ends with the seed summary"
    sweep = find_sweep(None, workdir / "runs")
    rows = json.loads(hpcvit("compare", "--format", "json", cwd=workdir, check=True).stdout)
    assert len(rows) == 4 and {"optim.lr", "optim.seed"} <= set(rows[0]) and "model.name" not in rows[0]
    assert sorted((r["optim.lr"], r["optim.seed"]) for r in rows) == [(0.001, 0), (0.001, 1), (0.003, 0), (0.003, 1)]
    runs = {r.info.run_id: r for r in children(sweep)}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep.manifest["tracking_uri"])
    for row in rows:
        run = runs[row["run_id"]]
        history = [h.value for h in client.get_metric_history(row["run_id"], "val_roc_auc")]
        assert row["val_roc_auc"] == max(history) and row["val_roc_auc_last"] == history[-1]
        assert row["test_roc_auc"] == run.data.metrics["test_roc_auc"], "test of the kept epoch, from MLflow"
        assert row["test_rejection_at_eff_0.3"] == run.data.metrics["test_rejection_at_eff_0.3"]
        assert "val_rejection_at_eff_0.3" not in row, "the objective's columns are of the test split"
    assert [r["val_roc_auc"] for r in rows] == sorted((r["val_roc_auc"] for r in rows), reverse=True)
    by_test = json.loads(hpcvit("compare", "--metric", "test_roc_auc", "--format", "json", cwd=workdir,
                                check=True).stdout)
    assert [r["test_roc_auc"] for r in by_test] == sorted((r["test_roc_auc"] for r in rows), reverse=True)
    table = hpcvit("compare", cwd=workdir, check=True).stdout
    header = next(line for line in table.splitlines() if "roc_auc" in line and "#" in line)
    for column in ("lr", "seed", "val roc_auc", "test roc_auc", "val last", "test 1/eB@.3"):
        assert column in header, (column, header)
    assert "over seeds" in table and "+-" in table
    parent = client.get_run(sweep.manifest["parent_run_id"])
    for lr in (0.001, 0.003):
        name = f"cnn_small lr_{lr:g}"
        tests = [r["test_roc_auc"] for r in rows if r["optim.lr"] == lr]
        summary = parent.data.metrics
        assert summary[f"{name}/test_roc_auc_mean"] == pytest.approx(sum(tests) / 2, abs=1e-12)
        assert summary[f"{name}/n_seeds"] == 2 and summary[f"{name}/val_roc_auc_std"] > 0
        assert summary[f"{name}/test_roc_auc_low"] < summary[f"{name}/test_roc_auc_mean"] < \
            summary[f"{name}/test_roc_auc_high"], "the interval of the seeds' mean holds the mean"
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"summary.html", "summary.csv", "roc_overlay.png"} <= logged, logged
    page = (sweep.root / "summary" / "summary.html").read_text()
    assert "cnn_small lr=0.001" in page and "data:image/png;base64," in page
    finished = hpcvit("resume", "--tasks", "0,2-3", cwd=workdir)
    assert finished.returncode != 0 and "task 0 is COMPLETED, nothing to resume" in finished.stderr
    bogus = hpcvit("compare", "--metric", "bogus", cwd=workdir)
    assert bogus.returncode == 2 and "--metric bogus: not a metric of this binary sweep" in bogus.stderr
    for split in ("val", "test"):
        png = workdir / f"roc_{split}.png"
        assert hpcvit("compare", "--plot", str(png), "--split", split, cwd=workdir).returncode == 0
        assert png.stat().st_size > 10_000


@pytest.mark.slow
def test_a_sweep_whose_tasks_all_failed_says_so_with_the_first_error(workdir: Path) -> None:
    spec = write_spec(workdir, _spec("allfail", lr="1e30") + "sweep:\n  grid:\n    optim.lr: [1e30, 1e31]\n")
    submitted = hpcvit("submit", str(spec), "--wait", cwd=workdir)
    assert submitted.returncode == 1
    compared = hpcvit("compare", cwd=workdir)
    assert compared.returncode == 1 and "runs by" not in compared.stdout, compared.stdout
    line = compared.stderr.strip()
    assert "no run has a val_roc_auc; task 0 failed: NonFiniteError" in line and "1 other failed task" in line, line
    assert "\n" not in line and line in submitted.stderr.replace("\n", ""), "submit --wait says the same"
    no_test = hpcvit("compare", "--plot", str(workdir / "x.png"), "--split", "test", cwd=workdir)
    assert no_test.returncode != 0
    sweep = find_sweep(None, workdir / "runs")
    assert parent_run(sweep).info.status == "FAILED", "a sweep whose tasks failed reads FAILED in MLflow"
    again = hpcvit("resume", "--tasks", "1", "--wait", cwd=workdir)
    assert "resubmitted 1 task(s)" in again.stdout and again.returncode == 1, again.stdout + again.stderr
    assert list(sweep.submissions()[-1]["jobs"]) == ["1"], "only the task asked for went in"
    for words, expected in ((["--tasks", "2"], "has no task 2"), (["--tasks", "1-x"], "'1-x' is not a task index")):
        refused = hpcvit("resume", *words, cwd=workdir)
        assert refused.returncode != 0 and expected in refused.stderr, refused.stderr
