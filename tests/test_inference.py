"""A trained run in use, from the user's side: ``hpcvit predict``, ``evaluate`` and ``export`` on a finished
sweep of two torchrun ranks, in a new process, with the data a user has."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from hpcvit.ledger import find_sweep
from tests.conftest import SPEC, hpcvit, write_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """A finished two-model sweep (two ranks each) with a test split."""
    workdir = tmp_path_factory.mktemp("inference")
    text = SPEC.format(name="use", n=320, size=16, epochs=2).replace(
        "  val_fraction: 0.25\n", "  val_fraction: 0.25\n  test_fraction: 0.25\n")
    spec = write_spec(workdir, text + "executor: local\nsweep:\n  grid:\n    model.name: [cnn_small, vit_seed]\n"
                      "    model.kwargs: [{}]\n")
    done = hpcvit("submit", str(spec), "--wait", cwd=workdir)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir, find_sweep(None, workdir / "runs")


def _data(sweep) -> Path:
    return next((sweep.root / "data").glob("*.h5"))


def test_predict_gives_trainings_test_outputs_for_the_same_rows(trained) -> None:
    workdir, sweep = trained
    for task in (0, 1):
        out = workdir / f"pred{task}.parquet"
        proc = hpcvit("predict", f"{sweep.sweep_id}/{task}", "--data", str(_data(sweep)), "-o", str(out),
                      "--batch-size", "37", cwd=workdir)
        assert proc.returncode == 0, proc.stderr
        table = pq.read_table(out).to_pydict()
        assert {"file", "row", "y", "score", "logit"} <= set(table), list(table)
        with np.load(sweep.task(task).file("predictions.npz")) as saved:
            assert "test_file" in saved.files and "test_row" in saved.files, "predictions name their rows"
            by_row = {int(r): i for i, r in enumerate(table["row"])}
            rows = saved["test_row"]
            assert set(np.unique(saved["test_file"])) == {str(_data(sweep))}
            logits = np.array([table["logit"][by_row[int(r)]] for r in rows])
            assert np.array_equal(np.array([table["y"][by_row[int(r)]] for r in rows]), saved["test_y"])
            # the same weights and preprocessing; batches of another size may round the last bit differently
            np.testing.assert_allclose(logits, saved["test_out"], rtol=0, atol=2e-6)
        assert len(table["row"]) == 320, "every row of the file"


def test_evaluate_reports_intervals_and_writes_figures(trained) -> None:
    workdir, sweep = trained
    proc = hpcvit("evaluate", f"{sweep.sweep_id}/0", "--data", str(_data(sweep)), "--format", "json",
                  "--figures", str(workdir / "figs"), cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    auc = found["metrics"]["roc_auc"]
    assert found["n"] == 320 and auc["low"] <= auc["value"] <= auc["high"] and auc["high"] - auc["low"] > 0
    assert "rejection_at_eff_0.3_is_bound" not in found["metrics"], "flags are not metrics"
    assert any(p.suffix == ".png" for p in (workdir / "figs").iterdir())
    assert f"figure file(s) written to {workdir / 'figs'}" in proc.stderr
    table = hpcvit("evaluate", f"{sweep.sweep_id}/0", "--data", str(_data(sweep)), cwd=workdir)
    assert table.returncode == 0 and "roc_auc" in table.stdout and "[" in table.stdout
    assert "(95 % bootstrap intervals)" in table.stdout.splitlines()[0], "in a pipe the title is one line"
    # the figures' legend gives the table's interval: the same resamples of the same events
    from hpcvit.inference.predict import predict
    from hpcvit.inference.runs import find_task, load_run
    from hpcvit.objectives.figures import auc_interval

    run = load_run(find_task(f"{sweep.sweep_id}/0", workdir / "runs"), "best")
    with h5py.File(_data(sweep)) as f:
        y = f["y"][:]
    legend = auc_interval(y, predict(run, [_data(sweep)]).raw)
    assert legend == pytest.approx((auc["value"], auc["low"], auc["high"]), abs=1e-9)


def test_evaluate_on_one_class_says_why_a_metric_has_no_value(trained, tmp_path: Path) -> None:
    workdir, sweep = trained
    with h5py.File(_data(sweep)) as f:
        keep = f["y"][:] == 1
        one = tmp_path / "signal_only.h5"
        with h5py.File(one, "w") as g:
            for key in f:
                g.create_dataset(key, data=f[key][:][keep])
    proc = hpcvit("evaluate", f"{sweep.sweep_id}/0", "--data", str(one), "--format", "json", "--figures",
                  str(tmp_path / "figs"), cwd=workdir)
    assert proc.returncode == 0, proc.stderr

    def no_nan(word: str) -> None:
        raise AssertionError(f"{word} in JSON")

    found = json.loads(proc.stdout, parse_constant=no_nan)
    assert found["metrics"]["roc_auc"] == {"value": None, "low": None, "high": None}
    assert f"all {int(keep.sum())} samples are of one class (y=1)" in proc.stderr
    assert "no figures written" in proc.stderr and "figure file(s) written" not in proc.stderr


@pytest.mark.parametrize("fmt", ["torchscript", "safetensors", "onnx"])
def test_an_export_alone_predicts_what_the_run_predicts(trained, fmt: str) -> None:
    workdir, sweep = trained
    for task in (0, 1):  # a CNN and a transformer (attention's fused kernel has no ONNX form: exported unfused)
        target = workdir / f"export_{fmt}_{task}"
        proc = hpcvit("export", f"{sweep.sweep_id}/{task}", "--format", fmt, "-o", str(target), cwd=workdir)
        assert proc.returncode == 0, proc.stderr
        card = json.loads((target / "model.json").read_text())
        assert card["model"]["name"] == ("cnn_small", "vit_seed")[task] and card["input"]["shape"] == [2, 16, 16]
        assert card["state"]["data_stats"]["std"] and card["metrics"]["test_roc_auc"] > 0
        assert card["environment"]["hpcvit.git_commit"] and card["data"]["fingerprint"]
        elsewhere = workdir / f"copy_{fmt}_{task}"  # the folder alone: moved away from the run
        target.rename(elsewhere)
        ours = workdir / f"exp_{fmt}_{task}.parquet"
        theirs = workdir / f"run_{task}.parquet"
        assert hpcvit("predict", str(elsewhere), "--data", str(_data(sweep)), "-o", str(ours),
                      cwd=workdir).returncode == 0
        if not theirs.exists():
            hpcvit("predict", f"{sweep.sweep_id}/{task}", "--data", str(_data(sweep)), "-o", str(theirs),
                   cwd=workdir, check=True)
        a, b = pq.read_table(ours).to_pydict(), pq.read_table(theirs).to_pydict()
        if fmt == "onnx":
            np.testing.assert_allclose(a["logit"], b["logit"], rtol=0, atol=1e-5)
        else:
            assert a["logit"] == b["logit"], f"{fmt}: bit for bit on the CPU"


def test_bad_uses_get_one_line_errors_and_write_nothing(trained, tmp_path: Path) -> None:
    workdir, sweep = trained
    data = str(_data(sweep))
    wrong = tmp_path / "wrong.h5"
    with h5py.File(wrong, "w") as f:
        f.create_dataset("X", data=np.zeros((4, 24, 24, 2), np.float32))
        f.create_dataset("y", data=np.zeros(4))
    nan = tmp_path / "nan.h5"
    with h5py.File(nan, "w") as f:
        images = np.zeros((4, 16, 16, 2), np.float32)
        images[2, 3, 4, 1] = np.nan
        f.create_dataset("X", data=images)
        f.create_dataset("y", data=np.zeros(4))
    nolabel = tmp_path / "nolabel.h5"
    with h5py.File(nolabel, "w") as f:
        f.create_dataset("X", data=np.zeros((4, 16, 16, 2), np.float32))
    cases = {
        "images 24x24": (["predict", f"{sweep.sweep_id}/0", "--data", str(wrong), "-o", str(tmp_path / "a.parquet")],
                         "images are 2x24x24"),
        "a NaN pixel": (["predict", f"{sweep.sweep_id}/0", "--data", str(nan), "-o", str(tmp_path / "n.parquet")],
                        "(row 2): 1 non-finite pixel(s)"),
        "no such task": (["predict", f"{sweep.sweep_id}/9", "--data", data, "-o", str(tmp_path / "b.parquet")],
                         "has no task 9"),
        "not a run": (["predict", "nonsense", "--data", data, "-o", str(tmp_path / "c.parquet")], "not a run"),
        "missing file": (["predict", f"{sweep.sweep_id}/0", "--data", str(tmp_path / "none.h5"), "-o",
                          str(tmp_path / "d.parquet")], "none.h5"),
        "output suffix": (["predict", f"{sweep.sweep_id}/0", "--data", data, "-o", str(tmp_path / "e.txt")],
                          ".parquet or .csv"),
        "no labels": (["evaluate", f"{sweep.sweep_id}/0", "--data", str(nolabel)], "no target column 'y'"),
        "a file twice": (["evaluate", f"{sweep.sweep_id}/0", "--data", data, str(Path(data).parent / "." /
                                                                                 Path(data).name)], "the same file as"),
        "export into a full folder": (["export", f"{sweep.sweep_id}/0", "--format", "safetensors", "-o",
                                       str(workdir / "runs")], "not empty"),
    }
    for name, (words, expected) in cases.items():
        proc = hpcvit(*words, cwd=workdir)
        line = proc.stderr.strip()
        assert proc.returncode != 0 and expected in line and "\n" not in line and "Traceback" not in line, (name, line)
        assert "to train" not in line and "data.channels None" not in line, (name, line)  # advice that fits predict
    assert not any(p.suffix in (".parquet", ".txt") for p in tmp_path.iterdir()), "nothing half-written"


def test_load_into_takes_what_fits_and_says_what_it_did_not() -> None:
    import torch
    from torch import nn

    from hpcvit.models.init import InitError, load_into

    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    target = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    fresh_head = target[2].weight.detach().clone()
    notes = load_into(target, source.state_dict(), "pre.pt")
    assert torch.equal(target[0].weight, source[0].weight) and torch.equal(target[0].bias, source[0].bias)
    assert torch.equal(target[2].weight, fresh_head), "a head of another shape keeps its fresh values"
    assert notes == ["re-initialised (another shape): 2.weight (3x8 vs 1x8), 2.bias (3 vs 1)"]
    with pytest.raises(InitError, match="none of its 2 tensors fits"):
        load_into(target, {"a.weight": torch.zeros(2), "b": torch.zeros(3)}, "other.pt")


def test_a_pretrain_then_fine_tune_chain_runs_as_two_sweeps(trained) -> None:
    import torch

    from tests.conftest import children

    workdir, sweep = trained
    base = SPEC.format(name="tune", n=320, size=32, epochs=1).replace("lr: 3e-3", "lr: 1e-12")

    def init(ref: str) -> str:
        return base.replace("model:\n  name: cnn_small\n  kwargs: {width: 8}\n",
                            f"model:\n  name: vit_seed\n  init_from: {ref}\n") + "executor: local\n"

    bad = write_spec(workdir, init(f"{sweep.sweep_id}/7"), "bad.yaml")
    refused = hpcvit("validate", str(bad), cwd=workdir)
    assert refused.returncode == 2 and "model.init_from" in refused.stderr and "has no task 7" in refused.stderr
    spec = write_spec(workdir, init(f"{sweep.sweep_id}/1"), "tune.yaml")
    done = hpcvit("submit", str(spec), "--wait", cwd=workdir)
    assert done.returncode == 0, done.stderr[-2000:]
    tuned = find_sweep(None, workdir / "runs")
    assert tuned.sweep_id != sweep.sweep_id
    best = sweep.task(1).checkpoints / "best.pt"
    assert tuned.task(0).spec().model.init_from == str(best.resolve()), "resolved to one file at submission"
    log = tuned.task(0).log.read_text()
    assert f"model.init_from: weights from {best.resolve()}" in log
    assert "re-initialised (another shape): pos (1x17x64 vs 1x65x64)" in log, "32x32 images: new positions"
    run = children(tuned)[0]
    assert run.data.params["model.init_from"] == str(best.resolve()) and "pos" in run.data.params[
        "model.init_from.notes"]
    pre = torch.load(best, weights_only=True)
    pre = pre.get("ema") or pre["model"]
    after = torch.load(tuned.task(0).checkpoints / "best.pt", weights_only=True)["model"]
    for k, v in pre.items():
        if k != "pos":  # lr 1e-12: one epoch leaves the pretrained weights where they were
            torch.testing.assert_close(after[k], v, rtol=0, atol=1e-6)
    # weights of another family (the CNN's into a ViT): nothing fits, the task fails with one line
    other = write_spec(workdir, init(f"{sweep.sweep_id}/0"), "other.yaml")
    assert hpcvit("submit", str(other), "--wait", cwd=workdir).returncode != 0
    failed = find_sweep(None, workdir / "runs").task(0)
    assert failed.state()["state"] == "FAILED" and "none of its" in failed.state()["message"], failed.state()
    log = failed.log.read_text()
    # one line from rank 0; no rank's traceback (torchrun's own report of the exit code stays)
    assert log.count("error: InitError: ") == 1 and "hpcvit/train" not in log, log[-3000:]


def test_a_parquet_regression_predicts_in_the_targets_units_with_the_files_columns(tmp_path: Path) -> None:
    """The mass layout a user brings (Parquet, row groups of 7, a cut on pt): the value in target units beside
    the row's own columns, the cut applied as in training."""
    from hpcvit.data.parquet import write_jets

    rng = np.random.default_rng(4)
    n = 240
    width = rng.uniform(1.0, 3.0, n)
    grid = np.arange(8) - 3.5
    x = np.exp(-(grid[None, :, None] ** 2 + grid[None, None, :] ** 2) / (2 * width[:, None, None] ** 2))
    x = np.repeat(x[:, None], 2, axis=1) + rng.normal(0, 0.01, (n, 2, 8, 8))
    pt = rng.uniform(10, 100, n)
    data = write_jets(tmp_path / "mass.parquet", x, {"m": 100 + 50 * width, "pt": pt}, image_column="X_jet",
                      row_group_size=7)
    spec = write_spec(tmp_path, f"""
name: massp
executor: local
data: {{format: parquet, paths: [{data}], input_key: X_jet, task: regression, target_key: m,
        cuts: {{pt: [20, null]}}, val_fraction: 0.25, test_fraction: 0.25}}
model: {{name: cnn_small, kwargs: {{width: 8}}}}
optim: {{epochs: 1, batch_size: 16, lr: 3e-3}}
resources: {{nproc_per_node: 1, cpus_per_task: 1}}
""")
    done = hpcvit("submit", str(spec), "--wait", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    sweep = find_sweep(None, tmp_path / "runs")
    out = tmp_path / "masses.csv"
    proc = hpcvit("predict", f"{sweep.sweep_id}/0", "--data", str(data), "-o", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(out).to_pydict()
    assert set(table) == {"file", "row", "m", "pt", "prediction"} and len(table["row"]) == int((pt >= 20).sum())
    assert min(table["pt"]) >= 20, "the run's cut applies"
    with np.load(sweep.task(0).file("predictions.npz")) as saved:
        by_row = {r: i for i, r in enumerate(table["row"])}
        got = np.array([table["prediction"][by_row[int(r)]] for r in saved["test_row"]])
        np.testing.assert_allclose(got, saved["test_out"], rtol=1e-5)  # the target's units, as training scored
        assert np.allclose([table["m"][by_row[int(r)]] for r in saved["test_row"]], saved["test_y"])
