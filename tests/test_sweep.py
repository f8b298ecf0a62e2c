"""Sweep expansion: grid and zip, per-run validation, errors pointing at the sweep value."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from hpcvit.scheduler.slurm import sbatch_script
from hpcvit.sweep import expand, load_sweep
from hpcvit.yamlio import SpecError
from tests.conftest import REPO, hpcvit, write_spec

BASE = {"name": "s", "model": {"name": "cnn_small"}}


def test_grid_is_the_cartesian_product_in_order() -> None:
    sweep = expand({**BASE, "sweep": {"grid": {"model.name": ["cnn_small", "vit_seed"],
                                               "optim.lr": [1e-3, 3e-4, 1e-4]}}})
    got = [(r.spec.model.name, r.spec.optim.lr) for r in sweep.runs]
    assert got == [(m, lr) for m in ("cnn_small", "vit_seed") for lr in (1e-3, 3e-4, 1e-4)]
    assert [r.index for r in sweep.runs] == list(range(6))
    assert sweep.runs[4].label == "vit_seed lr=0.0003"


def test_zip_pairs_values_and_multiplies_with_grid() -> None:
    sweep = expand({**BASE, "sweep": {"grid": {"optim.seed": [0, 1]},
                                      "zip": {"model.name": ["cnn_small", "vit_seed"], "optim.batch_size": [32, 16]}}})
    got = [(r.spec.optim.seed, r.spec.model.name, r.spec.optim.batch_size) for r in sweep.runs]
    assert got == [(0, "cnn_small", 32), (0, "vit_seed", 16), (1, "cnn_small", 32), (1, "vit_seed", 16)]


def test_nested_free_form_fields_can_be_swept() -> None:
    sweep = expand({**BASE, "sweep": {"grid": {"model.kwargs.width": [8, 16]}}})
    assert [r.spec.model.kwargs for r in sweep.runs] == [{"width": 8}, {"width": 16}]


def test_no_sweep_block_is_one_run() -> None:
    assert len(expand(BASE).runs) == 1


@pytest.mark.parametrize(("sweep", "words"), [
    ({"zip": {"optim.lr": [0.1, 0.2], "optim.seed": [1]}}, "equal lengths"),
    ({"grid": {"optim.lrr": [0.1]}}, "unknown field 'lrr' of optim; valid: optimizer, lr"),
    ({"grid": {"optim.lr.x": [0.1]}}, "optim.lr has no sub-fields"),
    ({"grid": {"resources.nodes": [1, 2]}}, "cannot vary within a sweep"),
    ({"grid": {"optim.lr": []}}, "at least one value"),
    ({"grid": {"optim.lr": [0.1]}, "zip": {"optim.lr": [0.2]}}, "both grid and zip"),
])
def test_bad_sweeps(sweep: dict, words: str) -> None:
    with pytest.raises(SpecError, match=re.escape(words)):
        expand({**BASE, "sweep": sweep})


def test_invalid_value_in_sweep_points_at_its_line(tmp_path: Path) -> None:
    path = write_spec(tmp_path, """
        name: s
        model: {name: cnn_small}
        sweep:
          grid:
            model.name: [cnn_small, vit_seed]
            optim.lr:
              - 1e-3
              - -5.0
    """)
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    message = str(info.value)
    assert message.startswith(f"{path}:8 optim.lr: Input should be greater than 0"), message
    assert "(run 1: model.name=cnn_small, optim.lr=-5.0)" in message


def test_sbatch_script_matches_golden_file(tmp_path: Path) -> None:
    """The exact script submitit would submit for a 12-task array throttled to 4 (paths normalised)."""
    sweep = expand({**BASE, "executor": "slurm",
                    "resources": {"nodes": 1, "gpus_per_node": 2, "cpus_per_task": 8, "mem_gb": 32, "time_min": 240,
                                  "partition": "gpu", "account": "phys", "qos": "normal", "array_parallelism": 4,
                                  "signal_delay_s": 180, "sbatch_extra": {"constraint": "a100", "exclusive": True}},
                    "sweep": {"grid": {"optim.seed": list(range(12))}}})
    script = sbatch_script(sweep.base, tmp_path / "sweep" / "submitit", len(sweep.runs))
    import sys

    script = script.replace(str(tmp_path), "<SWEEP_ROOT>").replace(sys.executable, "<PYTHON>")
    golden = REPO / "tests" / "golden" / "sbatch_array.sh"
    assert script == golden.read_text()


def _tiny_jets(path: Path, n: int = 40) -> None:
    """A few jets in the published quark/gluon layout (the data a spec's paths name)."""
    import numpy as np

    from hpcvit.data.parquet import write_jets

    path.parent.mkdir(parents=True, exist_ok=True)
    write_jets(path, np.ones((n, 3, 8, 8)), {"y": np.arange(n) % 2, "pt": np.full(n, 100.0), "m0": np.ones(n)})


def test_dry_run_prints_array_and_submits_nothing(tmp_path: Path) -> None:
    spec = REPO / "jobs" / "sweep_coatnet.yaml"
    n = len(load_sweep(spec).runs)
    for p in load_sweep(spec).base.data.paths:  # the dry run checks the data as a submission would
        _tiny_jets(tmp_path / p)
    proc = hpcvit("submit", str(spec), "--dry-run", "--output-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    limit = load_sweep(spec).base.resources.array_parallelism
    assert f"#SBATCH --array=0-{n - 1}%{min(n, limit)}" in proc.stdout
    assert "#SBATCH --requeue" in proc.stdout and "#SBATCH --signal=USR2@" in proc.stdout
    assert "nothing submitted" in proc.stderr, "in a pipe, stdout holds the script alone"
    assert "what --executor slurm would submit" not in proc.stderr, "the sweep's own executor is Slurm"
    assert not (tmp_path / "runs").exists()
    local = hpcvit("submit", str(spec), "--executor", "local", "--dry-run", "--output-dir", str(tmp_path / "runs"),
                   cwd=tmp_path)
    assert local.returncode == 0 and "executor local): the script is what --executor slurm would submit" in local.stderr
    assert ("checked data: 2 parquet file(s) readable, 80 rows of 3x8x8 images, columns y present; 80 selected, "
            "64/8/8 train/val/test, targets fit the task") in proc.stderr, proc.stderr
    script = tmp_path / "job.sh"
    script.write_text(proc.stdout)
    assert proc.stdout.startswith("#!/bin/bash\n") and subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert all(line.startswith("#SBATCH --") for line in proc.stdout.splitlines() if line.startswith("#SBATCH"))
    to_file = hpcvit("submit", str(spec), "--dry-run", "-o", str(tmp_path / "out.sh"), cwd=tmp_path)
    assert to_file.returncode == 0 and (tmp_path / "out.sh").read_text() == proc.stdout.replace(
        proc.stdout.split("/runs/")[1].split("/")[0], (tmp_path / "out.sh").read_text().split("/runs/")[1].split("/")[0])


def test_dry_run_prints_the_script_where_no_slurm_is_installed(tmp_path: Path) -> None:
    """A laptop or a login node without the Slurm client tools: the script is printed all the same (Slurm's
    default array size assumed), nothing is submitted."""
    import os
    import sys

    spec = REPO / "jobs" / "sweep_coatnet.yaml"
    for p in load_sweep(spec).base.data.paths:
        _tiny_jets(tmp_path / p)
    bare = tmp_path / "bin"
    bare.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    env["PATH"] = str(bare)  # no srun, sbatch, squeue or scontrol to be found
    proc = subprocess.run([sys.executable, "-m", "hpcvit.cli", "submit", str(spec), "--dry-run", "--output-dir",
                           str(tmp_path / "runs")], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    n = len(load_sweep(spec).runs)
    assert proc.stdout.startswith("#!/bin/bash\n") and f"#SBATCH --array=0-{n - 1}%" in proc.stdout
    assert "srun --unbuffered" in proc.stdout and "nothing submitted" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_dry_run_checks_the_data_as_submit_does(tmp_path: Path) -> None:
    spec = REPO / "jobs" / "sweep_coatnet.yaml"
    for command in (["submit", "--dry-run"], ["submit"], ["validate"]):
        proc = hpcvit(*command, str(spec), "--output-dir" if "submit" in command else "--all",
                      *([str(tmp_path / "runs")] if "submit" in command else []), cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.startswith(f"error: {spec}:9 data.paths: file(s) not found: {tmp_path}/data/"), proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    _tiny_jets(tmp_path / "data/quark-gluon/qg_train_0.parquet")
    _tiny_jets(tmp_path / "data/quark-gluon/qg_train_1.parquet")
    text = spec.read_text().replace("target_key: y", "target_key: y\n  channels: [0, 5]")
    bad = write_spec(tmp_path, text, "channels.yaml")
    proc = hpcvit("submit", str(bad), "--dry-run", cwd=tmp_path)
    assert proc.returncode == 2 and "channels.yaml:14 data.channels: " in proc.stderr, proc.stderr
    assert "data.channels [5] out of range: the images have 3 channels" in proc.stderr
    assert not (tmp_path / "runs").exists()
