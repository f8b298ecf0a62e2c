"""Output that works at 80 columns and in a pipe: numbers never cut, nothing wrapped where it is data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from hpcvit.results.compare import compare_table
from hpcvit.states import TaskState
from hpcvit.scheduler.status import TaskStatus
from tests.conftest import SPEC, TWO_MODELS, hpcvit, write_spec


def _rendered(table, width: int) -> list[str]:
    out = Console(width=width, record=True, force_terminal=True, color_system=None)
    out.print(table)
    return out.export_text().splitlines()


def _comparison():
    from hpcvit.results.rows import Col, Comparison

    rows = [{"task": i, "run": f"000{i}-x", "model": m, "optim.lr": lr, "status": "FINISHED", "params_M": p,
             "epochs": 30, "best_epoch": 3, "val_roc_auc": b, "test_roc_auc": b - 0.002, "val_roc_auc_last": b - 0.01,
             "test_rejection_at_eff_0.3": 295.0, "test_rejection_at_eff_0.5": 7.4, "img_s": 461.0, "wall_min": 12.5,
             "metric": "val_roc_auc", "run_id": "r", "_bounds": {"test_rejection_at_eff_0.3": i == 0}}
            for i, (m, lr, p, b) in enumerate([("cnn_small", 0.003, 0.24, 0.949213), ("maxvit_tiny", 0.0001, 28.52, 0.794512)])]
    columns = [Col("task", "#", 0), Col("model", "model", 0, numeric=False), Col("optim.lr", "lr", 4, 1, numeric=False),
               Col("status", "status", 0, 3, numeric=False), Col("params_M", "Mparams", 2, 2), Col("epochs", "ep", 0, 2),
               Col("val_roc_auc", "val roc_auc"), Col("test_roc_auc", "test roc_auc"),
               Col("val_roc_auc_last", "val last", 4, 2), Col("test_rejection_at_eff_0.3", "test 1/eB@.3", 1, 1),
               Col("test_rejection_at_eff_0.5", "test 1/eB@.5", 1, 3), Col("img_s", "img/s", 0, 4),
               Col("wall_min", "min", 1, 4)]
    return Comparison("smoke-20261123-001111-0669", "binary", "val_roc_auc", rows, columns, ["optim.lr"])


def test_the_comparison_fits_80_columns_with_every_number_whole() -> None:
    result = _comparison()
    headers = {c.header for c in result.columns}
    for width in (80, 60, 200):
        lines = _rendered(compare_table(result, width=width), width)
        assert max(len(line) for line in lines) <= width, (width, lines)
        text = "\n".join(lines)
        assert "0.9492" in text and "0.7945" in text and "0.9472" in text and "…" not in text, text
        assert "0.0001" in text and "0.003" in text, "the swept learning rate is a column"
        header = next(line for line in lines if " roc_auc" in line)
        for column, value in (("img/s", "461"), ("Mparams", "28.52"), ("1/eB@.5", "7.4"), ("min", "12.5")):
            assert (f" {column}" not in header) or value in text, (column, text)
        assert any(header.rstrip().endswith(h) for h in headers), header
    narrow = "\n".join(_rendered(compare_table(result, width=80), 80))
    assert ">=295.0" in narrow, "a rejection that is the background count's lower bound says so"
    wide = "\n".join(_rendered(compare_table(result, width=200), 200))
    assert "left out" not in wide and "12.5" in wide and "test roc_auc" in wide and "val roc_auc" in wide


def test_the_status_table_fits_80_columns() -> None:
    from hpcvit.cli import _status_table

    statuses = [TaskStatus(index=i, label=f"coatnet_0 lr=0.000{i} seed={i} weight_decay=0.05", state=state,
                           recorded=str(state), job_id=f"123456_{i}", executor="slurm", restarts=2, epoch=7,
                           epochs=30, metric="val_roc_auc", best_metric=0.81462, message="stopped by SIGUSR2 at epoch 7",
                           log=f"/scratch/runs/qg-coatnet-20261202/tasks/0000{i}/train.log")
                for i, state in enumerate([TaskState.RUNNING, TaskState.PREEMPTED, TaskState.COMPLETED])]
    sweep = SimpleNamespace(sweep_id="qg-coatnet-20261202-070000-abcd", root=Path("/scratch/runs/qg-coatnet-20261202"))
    out = Console(width=80, record=True, force_terminal=True, color_system=None)
    out.print(_status_table(sweep, statuses, out))
    lines = out.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80, lines
    text = "\n".join(lines)
    assert "0.8146" in text and "PREEMPTED" in text and "COMPLETED" in text and "roc_auc" in text
    assert "tasks/00002/train.log" in text, "a log path is not cut"


def test_the_models_table_at_80_columns_breaks_between_words_only() -> None:
    from hpcvit.models import list_models, model_entry
    from hpcvit.models.info import models_table
    from hpcvit.tables import LONGEST_WORD

    rows = [{"name": n, "family": "vit", "params_m": 27.59, "gflops": 0.61, "ok": True,
             "supports": {"2x32x32": True, "3x125x125": False}, "description": model_entry(n).description}
            for n in list_models()]
    for width in (80, 100):
        lines = _rendered(models_table(rows, 2, 32, width), width)
        assert max(len(line) for line in lines) <= width
        text = "\n".join(lines)
        words = {w for line in lines for w in line.replace("│", " ").split()}
        for row in rows:
            assert row["name"] in words, (row["name"], text)
            for word in row["description"].split():
                assert word in words or len(word) > LONGEST_WORD, (word, text)
        assert any(" description" in line for line in lines[:6]), "the description stays at 80 columns"


def test_errors_stay_on_one_line_in_a_pipe_however_long(tmp_path: Path) -> None:
    deep = tmp_path / ("a-very-long-folder-name-" * 6)
    deep.mkdir()
    bad = write_spec(deep, "name: x\nmodel: {name: cnn_small}\noptim: {lr: -1}\n", "spec-with-a-long-name.yaml")
    proc = hpcvit("validate", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert f"{bad}:3 optim.lr: Input should be greater than 0" in proc.stderr


def test_validate_and_models_print_records_alone_on_stdout(tmp_path: Path) -> None:
    import csv
    import io
    import json

    spec = write_spec(tmp_path, SPEC.format(name="records", n=64, size=16, epochs=1) + TWO_MODELS)
    as_json = hpcvit("validate", str(spec), "--format", "json", cwd=tmp_path, check=True)
    runs = json.loads(as_json.stdout)
    assert [r["model"] for r in runs] == ["cnn_small", "vit_seed"] and "valid: 2 run(s)" in as_json.stderr
    as_csv = hpcvit("validate", str(spec), "--format", "csv", cwd=tmp_path, check=True)
    assert "\r" not in as_csv.stdout
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["model"] for r in rows] == ["cnn_small", "vit_seed"]
    assert {k: str(v) for k, v in runs[1].items()} == rows[1], "json and csv hold the same records"
    models = list(csv.DictReader(io.StringIO(hpcvit("models", "--format", "csv", cwd=tmp_path, check=True).stdout)))
    assert {"cnn_small", "vit_seed"} <= {m["name"] for m in models}


def test_the_eta_counts_the_epochs_left_from_the_wall_time_of_one() -> None:
    import datetime as dt

    from hpcvit.scheduler.status import eta_seconds
    from hpcvit.tables import duration

    ended = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.timezone.utc)
    progress = {"epoch": 3, "epochs": 10, "epoch_wall_s": 60.0, "last": {"epoch_time_s": 50.0},
                "updated": ended.isoformat()}
    assert eta_seconds(progress, ended + dt.timedelta(seconds=20)) == 7 * 60 - 20
    del progress["epoch_wall_s"]  # an epoch resumed mid-way was not timed: the training time of the last one
    assert eta_seconds(progress, ended) == 7 * 50
    assert eta_seconds({**progress, "epoch": 10}, ended + dt.timedelta(hours=1)) == 0
    assert eta_seconds({"epoch": 0, "epochs": 3, "updated": ended.isoformat()}, ended) is None
    assert [duration(s) for s in (None, 9.6, 95, 4000)] == ["", "10s", "1m35s", "1h06m"]


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """``hpcvit validate SPEC | head -1``: exit 141 (SIGPIPE's), as other tools do, and no error on stderr."""
    import subprocess
    import sys

    spec = write_spec(tmp_path, SPEC.format(name="pipe", n=64, size=8, epochs=1) + TWO_MODELS)
    for words in (["validate", str(spec)], ["validate", str(spec), "--format", "csv"], ["models"]):
        proc = subprocess.Popen([sys.executable, "-m", "hpcvit.cli", *words], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        proc.stdout.readline()
        proc.stdout.close()  # before the command has written all it has to say
        code, stderr = proc.wait(120), proc.stderr.read().decode()
        assert code in (0, 141) and "error" not in stderr and "Traceback" not in stderr, (words, code, stderr)


def test_a_zip_of_models_shows_their_arguments_in_one_column_that_fits_80() -> None:
    """Each model of a zip has its own arguments: as columns they would be mostly empty and too many to fit."""
    from hpcvit.results.rows import Col, Comparison, _fold_kwargs

    kwargs = [{"nclusters_max": 16, "dmodel": 64, "nhid_ff_trsf": 128},
              {"n_queries": 16, "dmodel": 64, "dim_ff": 128, "nlayers_encoder": 3, "nlayers_decoder": 2},
              {"k": 8, "dmodel": 64, "dim_ff": 128, "nlayers_local": 3, "nlayers_global": 1, "coords": [1, 2, 3]}]
    swept = ["optim.lr", *dict.fromkeys(f"model.kwargs.{k}" for kw in kwargs for k in kw)]
    rows = [{"task": i, "model": m, "optim.lr": 0.001, **{f"model.kwargs.{k}": v for k, v in kw.items()},
             "status": "FINISHED", "params_M": 0.16, "epochs": 8, "val_efficiency": e, "test_efficiency": e - 0.01,
             "val_efficiency_last": e, "test_purity": 0.978, "test_merge_rate": 0.064, "img_s": 120.0,
             "wall_min": 20.0, "_bounds": {}}
            for i, (m, kw, e) in enumerate(zip(["clusters_finder", "hit_set_transformer", "hit_graph_transformer"],
                                               kwargs, [0.783, 0.711, 0.889]))]
    shown = _fold_kwargs(swept, rows)
    assert shown == ["optim.lr", "model.kwargs"]
    assert rows[2]["model.kwargs"] == "dmodel=64 dim_ff=128 k=8 nlayers_local=3 nlayers_global=1 coords=[1,2,3]"
    columns = [Col("task", "#", 0), Col("model", "model", 0, numeric=False),
               *(Col(k, k.rsplit(".", 1)[-1], -1, 1, numeric=False) for k in shown),
               Col("status", "status", 0, 3, numeric=False), Col("val_efficiency", "val efficiency"),
               Col("test_efficiency", "test efficiency"), Col("test_purity", "test purity", 3, 1),
               Col("test_merge_rate", "test merged", 3, 2), Col("img_s", "ev/s", 0, 4)]
    result = Comparison("sweep-hits-20261206-084915-3db2", "hit_clustering", "val_efficiency", rows, columns, swept)
    for width in (80, 120):
        lines = _rendered(compare_table(result, width=width), width)
        assert max(len(line) for line in lines) <= width, (width, lines)
        text = "\n".join(lines)
        assert "0.8890" in text and "0.7830" in text and "…" not in text, text
    record = result.records()[2]
    assert record["model.kwargs.k"] == 8 and record["model.kwargs.coords"] == [1, 2, 3], "records keep each one"
