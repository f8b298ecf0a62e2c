"""The README tells the truth: its YAML validates, its commands parse as written, its error example is what
hpcvit prints, the files and specs it names exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import yaml

from hpcvit.cli import build_parser
from hpcvit.data.parquet import write_jets
from hpcvit.checks import check_sweep
from hpcvit.sweep import load_sweep
from tests.conftest import REPO, hpcvit

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)


def _commands() -> list[str]:
    """Every ``hpcvit ...`` command in the README's code: the code blocks and the inline `...` spans."""
    found = []
    for lang, body in BLOCKS:
        if lang in ("bash", ""):
            for line in body.splitlines():
                line = line.split("#")[0].strip().removeprefix("$ ")
                if re.match(r"^(\.venv/bin/)?hpcvit ", line):
                    found.append(line)
    found += [m for m in re.findall(r"`((?:\.venv/bin/)?hpcvit [^`]+)`", README)]
    return found


_PLACEHOLDERS = {"SPEC": "spec.yaml", "SWEEP": "some-sweep", "TASK": "0", "PATTERN": "vit*", "FILE": "job.sh",
                 "local\\|slurm": "slurm", "table\\|csv\\|json\\|markdown": "csv",
                 "torchscript\\|onnx\\|safetensors": "onnx"}


def _concrete(command: str) -> list[list[str]]:
    """A documented command line made concrete: placeholders filled, ``[...]`` options both left out and put in,
    ``a|b|c`` sub-commands each taken."""
    command = re.sub(r"^(\.venv/bin/)?hpcvit\s+", "", command)
    for key, value in _PLACEHOLDERS.items():
        command = command.replace(key, value)
    bare = command
    while re.search(r"\[[^\[\]]*\]", bare):  # innermost first: options may nest
        bare = re.sub(r"\[[^\[\]]*\]", "", bare)
    variants = [bare, command.replace("[", "").replace("]", "")]
    out = []
    for v in variants:
        words = shlex.split(v)
        if words and "|" in words[-1 if len(words) == 2 and words[0] == "data" else 0]:
            head = words[:1] if words[0] == "data" else []
            for choice in words[len(head)].split("|"):
                out.append([*head, choice, *words[len(head) + 1:]])
        else:
            out.append(words)
    return out


@pytest.mark.parametrize("command", sorted(set(_commands())))
def test_every_documented_command_parses(command: str) -> None:
    parser = build_parser()
    for words in _concrete(command):
        if words == ["--help"]:
            continue
        if words[:2] == ["data", "generate"]:
            words = [*words, *([] if "--process" in words else ["--process", "top-vs-qcd"]),
                     *([] if "-n" in words else ["-n", "10"])]
        if words == ["data", "convert"] or words == ["data", "inspect"]:
            words = [*words, "x.parquet"]
        try:
            args = parser.parse_args(words)
        except SystemExit as exc:
            raise AssertionError(f"README command {command!r} does not parse as {words}") from exc
        assert callable(args.func)


def test_the_yaml_spec_validates_on_files_in_its_layout(tmp_path: Path) -> None:
    spec_text = next(body for lang, body in BLOCKS if lang == "yaml")  # the first: a whole job spec
    doc = yaml.safe_load(spec_text)
    for p in doc["data"]["paths"]:
        path = tmp_path / p
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        write_jets(path, rng.random((20, 3, 8, 8)), {"y": np.arange(20) % 2, "pt": np.full(20, 50.0),
                                                    "ieta": np.zeros(20)})
    spec = tmp_path / "readme.yaml"
    spec.write_text(spec_text)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        sweep = load_sweep(spec)
        checked = check_sweep(sweep)
    finally:
        os.chdir(cwd)
    assert len(sweep.runs) == 4 * 2 * 3 and "parquet file(s) readable" in checked[0]


def test_the_search_example_is_the_search_job_and_validate_prints_its_rungs() -> None:
    (block,) = [yaml.safe_load(body) for lang, body in BLOCKS if lang == "yaml" and "search:" in body]
    job = yaml.safe_load((REPO / "jobs" / "search_top.yaml").read_text())
    assert block["sweep"] == job["sweep"], "the README's search block must be jobs/search_top.yaml's"
    quoted = re.search(r"`(rung 0: [^`]+)`", README).group(1)
    proc = hpcvit("validate", "jobs/search_top.yaml", "--no-data", cwd=REPO)
    assert proc.returncode == 0 and quoted in proc.stderr + proc.stdout, proc.stderr


def test_the_error_example_is_what_validate_prints(tmp_path: Path) -> None:
    example = next(body for _, body in BLOCKS if "hpcvit validate bad.yaml" in body).strip().splitlines()
    start, run = example.index("$ cat bad.yaml"), example.index("$ hpcvit validate bad.yaml")
    (tmp_path / "bad.yaml").write_text("\n".join(example[start + 1:run]) + "\n")
    proc = hpcvit("validate", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == example[run + 1], proc.stderr


def test_named_files_and_specs_exist() -> None:
    for name in re.findall(r"`((?:jobs|benchmarks|docs|slurm|tests)/[\w./-]+)`", README):
        assert (REPO / name).exists(), f"the README names {name}, which does not exist"
    for name in re.findall(r"\]\(((?:docs)/[^)]+)\)", README):
        assert (REPO / name).exists(), f"the README shows {name}, which does not exist"


_ON_A_SWEEP = ("status", "compare", "logs")
"""Sub-commands that read a finished sweep: the README's lines of them are run on one."""


@pytest.mark.slow
def test_the_commands_on_a_sweep_run_as_written_on_a_finished_one(tmp_path: Path) -> None:
    from tests.conftest import SPEC, TWO_MODELS, write_spec

    text = SPEC.format(name="readme", n=96, size=16, epochs=1).replace("  val_fraction: 0.25\n",
                                                                       "  val_fraction: 0.25\n  test_fraction: 0.25\n")
    spec = write_spec(tmp_path, text + TWO_MODELS + "executor: local\n")
    submitted = hpcvit("submit", str(spec), "--wait", cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    sweep_id = next(p.parent.name for p in (tmp_path / "runs").glob("*/manifest.json"))
    ran = 0
    for command in sorted(set(_commands())):
        for words in _concrete(command):
            if not words or words[0] not in _ON_A_SWEEP or {"-f", "--follow"} & set(words):
                continue
            words = [sweep_id if w == "some-sweep" else str(tmp_path / w) if w == "job.sh" else w for w in words]
            if words[0] == "logs" and len(words) == 1:
                words += [sweep_id, "0"]
            proc = hpcvit(*words, cwd=tmp_path)
            assert proc.returncode == 0 and proc.stdout.strip(), f"README: `{command}` as {words}: {proc.stderr}"
            ran += 1
    assert ran >= 3, f"only {ran} README command(s) read a sweep"
    shown = next(body for lang, body in BLOCKS if body.lstrip().startswith("$ hpcvit compare"))
    printed = hpcvit("compare", cwd=tmp_path, check=True).stdout

    def header(text: str) -> list[str]:
        return next(line for line in text.splitlines() if line.lstrip().startswith("# ")).split()

    assert header(shown) == header(printed), "the README's compare example has the columns compare prints"
    use = next(body for lang, body in BLOCKS if "hpcvit export some-sweep/0" in body)
    data = next((tmp_path / "runs" / sweep_id / "data").glob("*.h5"))
    for line in use.splitlines():
        words = shlex.split(line.split("#")[0])
        words = [sweep_id + w.removeprefix("some-sweep") if w.startswith("some-sweep") else
                 str(data) if w == "showers.h5" else w for w in words]
        proc = hpcvit(*words[1:], cwd=tmp_path)
        assert proc.returncode == 0, f"README: `{line}`: {proc.stderr}"
    assert (tmp_path / "scores.parquet").exists() and (tmp_path / "winner" / "model.json").exists()
    assert len((tmp_path / "scores.csv").read_text().splitlines()) == 97, "96 images and the header"
    tune = next(body for lang, body in BLOCKS if lang == "yaml" and "init_from" in body)
    doc = yaml.safe_load(spec.read_text())
    doc["model"] = yaml.safe_load(tune)["model"]
    doc.pop("sweep", None)
    doc["model"]["init_from"] = doc["model"]["init_from"].replace("some-sweep", sweep_id)
    tuned = write_spec(tmp_path, yaml.safe_dump(doc), "tune.yaml")
    checked = hpcvit("validate", str(tuned), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    title = next(line for line in shown.splitlines() if "runs by" in line).split(": ", 1)[1]
    assert title in printed, title
