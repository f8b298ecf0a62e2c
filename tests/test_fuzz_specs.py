"""Bad input in bulk: a corpus of bad specs, each refused with its one-line error, and hypothesis-made YAML
that the loader either accepts or refuses with a SpecError, never anything else."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcvit.checks import check_sweep
from hpcvit.sweep import load_sweep
from hpcvit.yamlio import SpecError
from tests.conftest import hpcvit
from tests.fuzz.cases import BASE, CASES


def _refusal(path: Path) -> str:
    with pytest.raises(SpecError) as info:
        check_sweep(load_sweep(path))
    return str(info.value)


@pytest.mark.parametrize(("text", "words"), [(t, w) for _, t, w in CASES], ids=[c for c, _, _ in CASES])
def test_every_bad_spec_gets_its_one_line_error(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    message = _refusal(path)
    assert message.startswith(str(path)), message
    assert "\n" not in message, message
    assert words in message, message


def test_the_corpus_is_large_and_its_base_is_valid(tmp_path: Path) -> None:
    assert len(CASES) >= 100 and len({c for c, _, _ in CASES}) == len(CASES)
    path = tmp_path / "base.yaml"
    path.write_text(BASE)
    assert len(load_sweep(path).runs) == 1


def test_binary_files_and_special_files_are_refused(tmp_path: Path) -> None:
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(b"name: caf\xe9\nmodel: {name: cnn_small}\n")
    assert "latin1.yaml:1: not UTF-8 text (byte 0xe9)" in _refusal(latin)
    fifo = tmp_path / "fifo.yaml"
    import os

    os.mkfifo(fifo)
    assert "not a regular file" in _refusal(fifo)  # and returns at once: a FIFO is never opened
    assert "not a regular file" in _refusal(Path("/dev/zero"))
    assert "not a regular file" in _refusal(tmp_path)
    assert "cannot read spec: No such file" in _refusal(tmp_path / "absent.yaml")


@pytest.mark.parametrize("case", ["alias-bomb", "model-kwargs-type", "optim: lr: .inf", "sweep: grid: {optim.lr: [0.1, -1]}",
                                  "name '$(id)'", "data: cuts: {pt: [5, 1]}"])
def test_the_cli_refuses_with_exit_2_one_line_and_nothing_written(tmp_path: Path, case: str) -> None:
    text, words = next((t, w) for c, t, w in CASES if c == case)
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    for command in (["validate"], ["submit"], ["submit", "--dry-run"]):
        proc = hpcvit(*command, str(path), cwd=tmp_path)
        assert proc.returncode == 2, (command, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and words in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"], "nothing written for a refused spec"


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=12))
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                          st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                       max_leaves=8)
_FIELDS = ["optim.lr", "optim.epochs", "optim.seed", "optim.batch_size", "data.val_fraction", "data.channels",
           "data.cuts", "data.preprocessing.clip_sigma", "model.kwargs", "resources.nodes", "checkpoint.keep",
           "sweep.grid", "sweep.zip", "name", "data.format", "optim.schedule"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("abcdefgnmx:{}[]-,&*!'\"#|>\n\t .0123456789")), max_size=200))
def test_arbitrary_text_loads_or_is_refused_with_a_spec_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "h.yaml"
    path.write_text(text)
    try:
        check_sweep(load_sweep(path), data=False)
    except SpecError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(_FIELDS), value=_values)
def test_any_value_in_any_field_is_valid_or_a_one_line_spec_error(tmp_path: Path, field: str, value: object) -> None:
    import yaml

    doc = yaml.safe_load(BASE)
    node = doc
    *parents, leaf = field.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    path = tmp_path / "v.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        sweep = load_sweep(path)
        check_sweep(sweep, data=False)
    except SpecError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path)), str(exc)
    else:
        import json
        import math

        for run in sweep.runs:  # whatever is accepted is finite and round-trips through the ledger
            dumped = run.spec.model_dump_json()
            assert json.loads(dumped, parse_constant=lambda c: math.nan) == run.spec.model_dump(mode="json")
