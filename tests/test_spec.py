"""Job spec validation: good specs pass, bad ones fail with file:line and the field's path."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcvit.config import JobSpec
from hpcvit.sweep import load_sweep
from hpcvit.yamlio import SpecError
from tests.conftest import REPO, hpcvit, write_spec

GOOD = """
name: demo
model:
  name: cnn_small
optim:
  lr: 1e-3
  epochs: 2
"""


@pytest.mark.parametrize("spec", sorted((REPO / "jobs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_validate(spec: Path) -> None:
    sweep = load_sweep(spec)
    assert sweep.runs, spec


def test_good_spec_defaults_and_float_exponents(tmp_path: Path) -> None:
    sweep = load_sweep(write_spec(tmp_path, GOOD))
    (run,) = sweep.runs
    assert run.spec.optim.lr == pytest.approx(1e-3)  # PyYAML alone would read "1e-3" as a string
    assert run.spec.executor == "local"
    assert run.spec.data.preprocessing.zero_suppress == pytest.approx(1e-3)


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        (GOOD.replace("lr: 1e-3", "lr: -0.1"), 5, "optim.lr", "greater than 0"),
        (GOOD.replace("  epochs: 2", "  epochz: 2"), 6, "optim.epochz", "unknown field"),
        (GOOD.replace("cnn_small", "cnn_smal"), 3, "model.name", "did you mean cnn_small"),
        (GOOD.replace("  epochs: 2", "  epochs: two"), 6, "optim.epochs", "integer"),
        (GOOD + "executor: pbs\n", 7, "executor", "'local' or 'slurm'"),
        (GOOD + "resources:\n  sbatch_extra: {output: /tmp/x}\n", 8, "resources.sbatch_extra", "not allowed"),
        (GOOD + "resources:\n  sbatch_extra: {comment: \"a\\nb\"}\n", 8, "resources.sbatch_extra", "unsafe"),
        (GOOD + "resources:\n  partition: 'gpu; rm -rf /'\n", 8, "resources.partition", "not a valid Slurm name"),
        (GOOD + "data:\n  format: hdf5\n", 7, "data", "needs at least one entry in data.paths"),
    ],
)
def test_bad_specs_name_file_line_and_field(tmp_path: Path, text: str, line: int, field: str, words: str) -> None:
    path = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line} {field}:"), message
    assert words in message
    assert "\n" not in message


def test_yaml_syntax_and_duplicate_keys(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"spec.yaml:4: YAML syntax: .*flow sequence at line 3"):
        load_sweep(write_spec(tmp_path, "name: x\nmodel:\n  name: [cnn_small\n"))
    with pytest.raises(SpecError, match=r"spec.yaml:4 optim.lr: duplicate key"):
        load_sweep(write_spec(tmp_path, "name: x\noptim:\n  lr: 1.0\n  lr: 2.0\n"))
    with pytest.raises(SpecError, match="must be a mapping"):
        load_sweep(write_spec(tmp_path, "- a\n- b\n"))
    with pytest.raises(SpecError, match="cannot read spec"):
        load_sweep(tmp_path / "missing.yaml")


def test_sbatch_allow_list_lists_choices() -> None:
    with pytest.raises(ValueError) as info:
        JobSpec.model_validate({"name": "x", "model": {"name": "cnn_small"},
                                "resources": {"sbatch_extra": {"constrain": "a100"}}})
    assert "constraint" in str(info.value) and "constrain" in str(info.value)
    ok = JobSpec.model_validate({"name": "x", "model": {"name": "cnn_small"},
                                 "resources": {"sbatch_extra": {"constraint": "a100&ib", "exclusive": True}}})
    assert ok.resources.sbatch_extra == {"constraint": "a100&ib", "exclusive": True}


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    good = write_spec(tmp_path, GOOD, "good.yaml")
    bad = write_spec(tmp_path, GOOD.replace("lr: 1e-3", "lr: 0"), "bad.yaml")
    ok = hpcvit("validate", str(good), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "cnn_small" in ok.stdout and "1 run(s)" in ok.stdout
    fail = hpcvit("validate", str(bad), cwd=tmp_path)
    assert fail.returncode == 2
    assert f"{bad}:5 optim.lr: Input should be greater than 0" in fail.stderr.replace("\n", "")


def test_model_kwargs_checked_against_signature(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, GOOD.replace("  name: cnn_small", "  name: cnn_small\n  kwargs: {widht: 8}"))
    fail = hpcvit("validate", str(spec), cwd=tmp_path)
    assert fail.returncode == 2
    assert "takes no argument 'widht'" in fail.stderr and "width" in fail.stderr
