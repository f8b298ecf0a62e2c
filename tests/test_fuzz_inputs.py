"""Bad input other than specs, in bulk: data files, run folders, checkpoints and the environment, each answered
with one line naming what is wrong and where (exit 2 for bad input), never a traceback; hypothesis-made files
for the data and ledger readers, which either read them or raise their own one-line error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpcvit.fsio import DamagedFileError
from hpcvit.ledger import SweepDir
from tests.conftest import hpcvit, write_spec
from tests.fuzz.inputs import DATA_CASES, FOLDER_CASES, DataCase, manifest_edit

SPEC = """
name: bad-data
data: {data}
model: {{name: cnn_small, kwargs: {{width: 8}}}}
optim: {{epochs: 1, batch_size: 8}}
"""


def _one_line_refusal(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stdout}\n{proc.stderr}"
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


DRY_RUN_CASES = {next(c.id for c in DATA_CASES if c.field == f) for f in {c.field for c in DATA_CASES}}
"""One case per field also goes through ``submit --dry-run`` (the same check; a process start each)."""


@pytest.mark.parametrize("case", DATA_CASES, ids=[c.id for c in DATA_CASES])
def test_every_bad_data_file_is_refused_at_validate_with_its_line(tmp_path: Path, case: DataCase) -> None:
    spec = write_spec(tmp_path, SPEC.format(data=case.make(tmp_path)))
    before = sorted(p.name for p in tmp_path.iterdir())
    line = _one_line_refusal(hpcvit("validate", str(spec), cwd=tmp_path))
    assert f"spec.yaml:2 {case.field}: " in line and case.words in line, line
    if case.id in DRY_RUN_CASES:
        dry = _one_line_refusal(hpcvit("submit", str(spec), "--dry-run", cwd=tmp_path))
        assert dry == line, "dry-run checks the data as validate does"
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing written"


def test_the_data_corpus_covers_both_formats_and_every_field() -> None:
    assert len(DATA_CASES) >= 40 and len({c.id for c in DATA_CASES}) == len(DATA_CASES)
    assert {c.id.split(":")[0] for c in DATA_CASES} == {"hdf5", "parquet"}
    assert {c.field for c in DATA_CASES} >= {"data.paths", "data.target_key", "data.input_key", "data.cuts",
                                             "data.channels", "data.max_samples", "data.positive_value",
                                             "data.scalar_inputs", "data.val_fraction"}


@pytest.mark.parametrize("job,target", [("egamma_generated", "make data-egamma"), ("mass_generated", "make data-mass"),
                                        ("sweep_hits", "make data-hits"), ("quark_gluon", "make data-qg")])
def test_a_shipped_jobs_missing_data_names_the_make_target(tmp_path: Path, job: str, target: str) -> None:
    spec = Path(__file__).parents[1] / "jobs" / f"{job}.yaml"
    line = _one_line_refusal(hpcvit("validate", str(spec), cwd=tmp_path))
    assert "data.paths: file(s) not found" in line and f"`{target}` writes" in line, line


# -- run folders --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One finished sweep (1 task, 1 epoch, local executor, SQLite tracking) to copy and damage."""
    root = tmp_path_factory.mktemp("finished")
    spec = write_spec(root, """
        name: damaged
        data: {format: synthetic, synthetic: {n_samples: 160, image_size: 16, channels: 2, seed: 1}}
        model: {name: cnn_small, kwargs: {width: 8}}
        optim: {epochs: 1, batch_size: 16}
        """)
    proc = hpcvit("submit", str(spec), "--wait", cwd=root)
    assert proc.returncode == 0, proc.stderr
    yield next((root / "runs").glob("damaged-*"))


def _copy(finished: Path, name: str) -> Path:
    copy = finished.parent / name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(finished, copy)
    return copy


def _answers(folder: Path, damaged: str) -> None:
    """Every reader of the folder answers: exit 0, or exit 2 with one line naming ``damaged``; no traceback."""
    for command in (["status"], ["compare"], ["sync"], ["resume"]):
        proc = hpcvit(*command, str(folder), cwd=folder.parent.parent, timeout=120)
        assert "Traceback" not in proc.stderr, (command, proc.stderr)
        if proc.returncode != 0:
            line = _one_line_refusal(proc)
            assert Path(damaged).name in line, (command, line)


@pytest.mark.parametrize("case", FOLDER_CASES, ids=[c.id for c in FOLDER_CASES])
def test_a_damaged_run_folder_is_named_never_a_traceback(finished: Path, case) -> None:
    folder = _copy(finished, "copy-" + "".join(ch if ch.isalnum() else "-" for ch in case.id))
    path = folder / case.file
    if case.content is None:
        path.unlink()
    else:
        path.write_bytes(case.content)
    _answers(folder, case.file)
    if case.file.startswith("tasks/00000/") and case.file.endswith(("progress.json", "result.json")):
        status = hpcvit("status", str(folder), cwd=folder.parent.parent)
        assert "COMPLETED" in status.stdout, "a damaged report does not change a finished task's state"


@pytest.mark.parametrize("n_tasks", [999, "3", 0, None])
def test_a_hand_edited_task_count_is_refused_not_turned_into_phantom_tasks(finished: Path, n_tasks: object) -> None:
    folder = _copy(finished, f"copy-n-tasks-{n_tasks}")
    manifest = folder / SweepDir.MANIFEST
    manifest.write_text(manifest_edit(manifest.read_text(), n_tasks))
    proc = hpcvit("status", str(folder), cwd=folder.parent.parent)
    line = _one_line_refusal(proc)
    assert "manifest.json: n_tasks" in line, line


def test_another_models_checkpoint_fails_the_task_naming_the_file(finished: Path, tmp_path: Path) -> None:
    """A checkpoint whose checksum is right but whose tensors belong to another model (a copied folder)."""
    import torch

    from hpcvit.checkpoint import CheckpointManager

    folder = _copy(finished, "copy-foreign-checkpoint")
    task = SweepDir(folder).task(0)
    manager = CheckpointManager(task.checkpoints, keep=2, keep_best=True)
    newest = max(task.checkpoints.glob("ckpt-*.pt"))
    state = torch.load(newest, weights_only=True)
    state["model"] = {k: torch.zeros(3, 3) for k in state["model"]}  # same names, other shapes
    manager.save(state, step=10_000, epoch=0, metric=None)
    manager.wait()
    (task.path / "result.json").unlink()
    task.write_state(state="PREEMPTED")  # as if Slurm had stopped it before it finished
    proc = hpcvit("resume", str(folder), "--wait", cwd=folder.parent.parent, timeout=300)
    assert "Traceback" not in proc.stderr
    status = hpcvit("status", str(folder), cwd=folder.parent.parent)
    assert "FAILED" in status.stdout and "does not fit model cnn_small" in status.stdout, status.stdout
    failure = json.loads((task.path / "failed.json").read_text())
    assert "ckpt-000010000.pt: does not fit model cnn_small" in failure["summary"], failure["summary"]


# -- the environment ----------------------------------------------------------------------------------------------
def test_an_unreachable_tracking_server_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, """
        name: offline
        data: {format: synthetic, synthetic: {n_samples: 160, image_size: 16}}
        model: {name: cnn_small}
        tracking: {uri: "http://127.0.0.1:9/"}
        """)
    line = _one_line_refusal(hpcvit("submit", str(spec), cwd=tmp_path, timeout=120))
    assert line.startswith(f"error: {spec}:4 tracking.uri: the tracking store http://127.0.0.1:9/ cannot be used"), line
    assert "Connection refused" in line and not (tmp_path / "runs").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_one_line(tmp_path: Path) -> None:  # pragma: no cover - CI runs as root
    out = tmp_path / "ro"
    out.mkdir(mode=0o555)
    spec = write_spec(tmp_path, f"""
        name: ro
        output_dir: {out}
        data: {{format: synthetic}}
        model: {{name: cnn_small}}
        """)
    proc = hpcvit("submit", str(spec), cwd=tmp_path)
    assert proc.returncode == 1 and "permission denied" in proc.stderr.lower() and "Traceback" not in proc.stderr


def test_a_full_disk_at_submission_is_one_line_naming_the_file(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (root only)")
    try:
        (disk / "filler").write_bytes(bytes(900 * 1024))
        spec = write_spec(tmp_path, f"""
            name: full
            output_dir: {disk / 'runs'}
            data: {{format: synthetic, synthetic: {{n_samples: 400, image_size: 16}}}}
            model: {{name: cnn_small}}
            """)
        proc = hpcvit("submit", str(spec), cwd=tmp_path)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert lines[0].startswith(f"error: no space left on device: {disk / 'runs'}"), lines[0]
        assert not list((disk / "runs").glob("full-*")), "the half-made sweep folder is removed"
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# -- hypothesis: the readers either read a file or refuse it in one line ----------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.binary(max_size=300) | st.text(max_size=200).map(str.encode)
       | st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                      lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                      max_leaves=8).map(lambda v: json.dumps(v).encode()))
def test_ledger_readers_read_or_name_the_file(tmp_path: Path, content: bytes) -> None:
    from hpcvit.ledger import TaskDir
    from hpcvit.tracking.task_run import read_buffer

    root = tmp_path / "sweep"
    (root / "tasks" / "00000").mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"n_tasks": 1, "labels": ["x"]}))
    sweep = SweepDir(root)
    task = TaskDir(sweep, 0)
    for name, read in ((TaskDir.STATE, task.state), (TaskDir.PROGRESS, task.progress), (TaskDir.RESULT, task.result),
                       (TaskDir.FAILED, task.failure), (SweepDir.SUBMISSIONS, sweep.submissions),
                       (TaskDir.TRACKING_BUFFER, lambda: read_buffer(task.tracking_buffer)),
                       (TaskDir.RUN_ID, task.run_id), (SweepDir.MANIFEST, lambda: sweep.n_tasks)):
        target = (root / name) if name in (SweepDir.SUBMISSIONS, SweepDir.MANIFEST) else task.path / name
        target.write_bytes(content)
        try:
            read()
        except DamagedFileError as exc:
            assert str(exc).startswith(str(target)) and "\n" not in str(exc), str(exc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(x_shape=st.lists(st.integers(0, 9), min_size=1, max_size=4),
       x_kind=st.sampled_from(["f4", "f8", "i2", "u1", "S2", "?"]),
       y_shape=st.lists(st.integers(0, 9), min_size=0, max_size=2),
       y_kind=st.sampled_from(["f8", "i8", "S1", "f4"]), nan=st.booleans(), task=st.sampled_from(["binary", "regression"]))
def test_any_hdf5_layout_is_read_or_refused_with_a_data_error(tmp_path: Path, x_shape: list[int], x_kind: str,
                                                              y_shape: list[int], y_kind: str, nan: bool,
                                                              task: str) -> None:
    import h5py

    from hpcvit.config import DataSpec
    from hpcvit.data import DataError, check
    from hpcvit.objectives import get_objective

    rng = np.random.default_rng(len(x_shape) * 7 + len(y_shape))
    x = rng.random(x_shape) if x_kind not in ("S2", "?") else np.zeros(x_shape, dtype=x_kind)
    y = rng.integers(0, 2, y_shape) if y_kind != "S1" else np.zeros(y_shape, dtype="S1")
    if nan and x.dtype.kind == "f" and x.size:
        x.flat[0] = np.nan
    path = tmp_path / "h.h5"
    with h5py.File(path, "w") as f:
        f["X"] = x.astype(x_kind) if x_kind not in ("S2", "?") else x
        f["y"] = y.astype(y_kind) if y_kind != "S1" else y
    spec = DataSpec(format="hdf5", paths=[str(path)], task=task, val_fraction=0.25)
    try:
        check(spec, get_objective(task).target_rule())
    except DataError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc) or exc.field is not None, str(exc)
