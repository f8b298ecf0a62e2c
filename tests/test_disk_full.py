"""A full disk mid-training: the task ends FAILED saying so, its checkpoints stay valid, resume continues."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcvit.checkpoint import CheckpointManager
from hpcvit.ledger import find_sweep
from tests.conftest import SPEC, hpcvit, wait_for, write_spec


@pytest.fixture
def small_disk(workdir: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs of the test's own (root only)."""
    mount = workdir / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_disk_full_ends_the_task_failed_with_the_reason_and_resume_continues(workdir: Path, small_disk: Path) -> None:
    spec = write_spec(workdir, SPEC.format(name="full", n=1600, size=16, epochs=8)
                      + f"output_dir: {small_disk / 'runs'}\n")
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, small_disk / "runs")
    task = sweep.task(0)
    wait_for(lambda: any(task.checkpoints.glob("ckpt-*.json")), 240, "a first checkpoint")
    filler = _fill(small_disk)
    wait_for(lambda: task.state().get("state") in ("FAILED", "COMPLETED", "LOST"), 240, "the task to end")
    status = json.loads(hpcvit("status", str(sweep.root), "--format", "json", cwd=workdir, check=True).stdout)[0]
    assert status["state"] == "FAILED", status
    assert "no space left on device" in status["message"].lower(), status
    assert CheckpointManager(task.checkpoints).load_latest() is not None, "the checkpoints before it stay valid"

    filler.unlink()
    resumed = hpcvit("resume", str(sweep.root), "--wait", cwd=workdir)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert task.result() is not None
