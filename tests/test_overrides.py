"""``KEY=VALUE`` after a spec on the command line: shrink or sweep a job without copying its YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hpcvit.ledger import find_sweep
from hpcvit.sweep import load_sweep
from hpcvit.yamlio import SpecError
from tests.conftest import REPO, SPEC, children, hpcvit, parent_run, write_spec

SMOKE = REPO / "jobs" / "smoke.yaml"


def test_overrides_replace_values_and_a_list_sweeps() -> None:
    sweep = load_sweep(SMOKE, ["optim.epochs=2", "data.synthetic.n_samples=500", "optim.lr=[1e-3, 3e-3]"])
    assert len(sweep.runs) == 4 and {r.spec.optim.epochs for r in sweep.runs} == {2}
    assert sorted({r.spec.optim.lr for r in sweep.runs}) == [1e-3, 3e-3]
    assert {r.spec.data.synthetic.n_samples for r in sweep.runs} == {500}
    one = load_sweep(SMOKE, ["model.name=vit_seed"])
    assert [r.spec.model.name for r in one.runs] == ["vit_seed"], "one value fixes what the file swept"
    listed = load_sweep(SMOKE, ["data.channels=[1]"])
    assert len(listed.runs) == 2 and listed.runs[0].spec.data.channels == [1], "a list field takes the list"
    assert load_sweep(SMOKE, ["sweep.grid.optim.seed=[0,1,2]"]).runs[5].spec.optim.seed == 2
    assert load_sweep(SMOKE, []).overrides == ()


@pytest.mark.parametrize("override, expected", [
    ("optim.epochs=abc", "smoke.yaml, override 1 optim.epochs: Input should be a valid integer"),
    ("optim.bogus=1", "override 1 optim.bogus: unknown field 'bogus'"),
    ("epochs", "override 1: 'epochs' is not KEY=VALUE"),
    ("optim.lr=[1e-3", "override 1 optim.lr: value '[1e-3' is not valid YAML"),
    ("optim.lr=[1e-3,-1]", "override 1 optim.lr: Input should be greater than 0"),
    ("optim.lr.x=1", "override 1 optim.lr.x: optim.lr is not a section"),
    ("optim.foo.bar=1", "override 1 optim.foo: unknown field 'foo'"),
    ("optim.lr=[]", "override 1 optim.lr: an empty list sweeps nothing"),
])
def test_a_bad_override_is_named_in_one_line(override: str, expected: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_sweep(SMOKE, ["optim.epochs=1", override])
    message = str(caught.value)
    assert expected.replace("override 1", "override 2") in message and "\n" not in message
    if "[1e-3," not in override:  # a swept value names the run it made; an override's own error is every run's
        assert "(run " not in message, message


def test_validate_takes_overrides_as_written_in_the_readme(tmp_path: Path) -> None:
    proc = hpcvit("validate", str(SMOKE), "optim.epochs=2", "data.synthetic.n_samples=500", "--format", "json",
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert {r["epochs"] for r in json.loads(proc.stdout)} == {2}
    bad = hpcvit("validate", str(SMOKE), "optim.epochs=0", cwd=tmp_path)
    assert bad.returncode == 2 and "override 1 optim.epochs" in bad.stderr


@pytest.mark.slow
def test_a_submitted_override_is_recorded_in_the_ledger_and_mlflow(workdir: Path) -> None:
    spec = write_spec(workdir, SPEC.format(name="over", n=96, size=16, epochs=3) + "executor: local\n")
    proc = hpcvit("submit", str(spec), "optim.epochs=1", "optim.seed=[1,2]", "--wait", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sweep = find_sweep(None, workdir / "runs")
    assert sweep.manifest["overrides"] == ["optim.epochs=1", "optim.seed=[1,2]"]
    assert [s.optim.seed for s in sweep.run_specs()] == [1, 2] and {s.optim.epochs for s in sweep.run_specs()} == {1}
    parent = parent_run(sweep)
    assert parent.data.tags["hpcvit.overrides"] == "optim.epochs=1 optim.seed=[1,2]"
    assert {r.data.params["optim.epochs"] for r in children(sweep)} == {"1"}


@pytest.mark.slow
def test_a_finished_sweep_is_extended_without_training_its_tasks_again(workdir: Path) -> None:
    spec = write_spec(workdir, SPEC.format(name="grow", n=96, size=16, epochs=1) + "executor: local\n")
    hpcvit("submit", str(spec), "optim.seed=[1]", "--wait", cwd=workdir, check=True)
    sweep = find_sweep(None, workdir / "runs")
    first = sweep.task(0).result()
    dry = hpcvit("submit", str(spec), "optim.seed=[1,2,3]", "--into", sweep.sweep_id, "--dry-run", cwd=workdir)
    assert dry.returncode == 0, dry.stderr
    assert (f"dry run: {sweep.sweep_id} would get 2 new configuration(s) as task(s) 1-2" in dry.stdout
            and "1 already in it (task(s) 0, not trained again); nothing was submitted" in dry.stdout), dry.stdout
    assert sweep.n_tasks == 1 and len(sweep.submissions()) == 1 and "#SBATCH" not in dry.stdout
    proc = hpcvit("submit", str(spec), "optim.seed=[1,2]", "--into", sweep.sweep_id, "--wait", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{sweep.sweep_id}: 1 new configuration(s) as task(s) 1; 1 already in it (task(s) 0, not trained" \
        in proc.stdout.replace("\n", " "), proc.stdout
    assert sweep.n_tasks == 2 and [s.optim.seed for s in sweep.run_specs()] == [1, 2]
    assert [list(r["jobs"]) for r in sweep.submissions()] == [["0"], ["1"]], "task 0 was not submitted again"
    assert sweep.task(0).result() == first and sweep.task(1).result()["status"] == "completed"
    assert sweep.manifest["extensions"][0]["tasks"] == [1] and sweep.manifest["finalized"] == "FINISHED"
    rows = json.loads(hpcvit("compare", "--format", "json", cwd=workdir, check=True).stdout)
    assert sorted(r["task"] for r in rows) == [0, 1] and {r["optim.seed"] for r in rows} == {1, 2}
    parent = parent_run(sweep)
    assert parent.info.status == "FINISHED" and parent.data.metrics["cnn_small/n_seeds"] == 2, "summary made again"
    runs = children(sweep)  # the new task's run was made by the extension, once
    assert sorted(r.data.tags["hpcvit.task_key"] for r in runs) == [t.key for t in sweep.tasks()]
    assert {r.info.status for r in runs} == {"FINISHED"}
    same = hpcvit("submit", str(spec), "optim.seed=[2]", "--into", sweep.sweep_id, cwd=workdir)
    assert same.returncode == 0 and "0 new configuration(s)" in same.stdout and sweep.n_tasks == 2
