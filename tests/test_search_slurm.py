"""Adaptive search on the local Slurm cluster: the rung is decided by a Slurm job that depends on the rung's
array (``--dependency=afterany``), with no hpcvit process waiting; the winner equals its straight twin."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hpcvit.ledger import find_sweep
from tests.conftest import hpcvit, wait_for, write_spec
from tests.test_search import search_spec
from tests.test_search_local import check_outcome

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]


def job_field(job: str, field: str) -> str:
    """One field of `scontrol show job`."""
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    for word in out.split():
        if word.startswith(f"{field}="):
            return word.split("=", 1)[1]
    return ""


def in_queue(job: str) -> bool:
    out = subprocess.run(["squeue", "--noheader", "--format=%i", f"--jobs={job}"], capture_output=True, text=True)
    return bool(out.stdout.strip())


def test_a_slurm_job_decides_the_rung_and_submits_the_next(workdir: Path) -> None:
    spec = write_spec(workdir, search_spec("halve-slurm", lrs="3e-3, 1e-2, 2e-2", max_epochs=3) + "executor: slurm\n")
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    rung0 = sweep.search()["rungs"][0]
    arrays = sorted({j.split("_")[0] for j in rung0["jobs"].values()})
    decider = rung0["decider"]
    assert decider and len(arrays) == 1
    assert job_field(decider, "Dependency") in (f"afterany:{arrays[0]}_*(unfulfilled)", f"afterany:{arrays[0]}(unfulfilled)"), \
        "the decision job waits for the whole rung, whatever its tasks' outcome"

    # Only files are read while the search runs: nothing here may decide the rung.
    def searched() -> bool:
        record = sweep.search()
        done = len(record["rungs"]) == 2 and record["rungs"][1]["decision"] is not None
        return done and not in_queue(record["rungs"][1]["decider"])  # the job also tags the MLflow runs

    wait_for(searched, 900, "both rungs to be decided by their Slurm jobs")
    record = sweep.search()
    first, last = record["rungs"]
    assert first["decision"]["by"] == f"slurm job {decider}"
    assert last["decision"]["by"] == f"slurm job {last['decider']}"
    assert last["jobs"] and {j.split("_")[0] for j in last["jobs"].values()}.isdisjoint(arrays), \
        "the promoted configuration runs in a new array"
    winner = check_outcome(workdir, sweep)
    status = hpcvit("status", cwd=workdir, check=True).stdout
    assert status.count("STOPPED_EARLY") == 2 and "COMPLETED" in status
    assert sweep.task(winner).state()["state"] == "COMPLETED"


def test_status_decides_a_rung_whose_decision_job_was_cancelled_and_shows_the_outcome(workdir: Path) -> None:
    spec = write_spec(workdir, search_spec("orphan", lrs="3e-3, 1e-2, 2e-2", max_epochs=3) + "executor: slurm\n")
    assert hpcvit("submit", str(spec), cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    subprocess.run(["scancel", sweep.search()["rungs"][0]["decider"]], check=True)
    wait_for(lambda: all(t.state().get("state") == "RUNG_DONE" for t in sweep.tasks()), 600, "rung 0 to end")
    jobs = ",".join(sweep.search()["rungs"][0]["jobs"].values())  # their launchers end a moment after the record
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-j", jobs], capture_output=True, text=True).stdout.strip(),
             120, "the rung's jobs to leave the queue")
    rows = json.loads(hpcvit("status", "--format", "json", cwd=workdir, check=True).stdout)
    first = sweep.search()["rungs"][0]["decision"]
    assert first is not None and first["by"] == "hpcvit", "whoever looks decides an orphaned rung"
    shown = {r["index"]: r["state"] for r in rows}
    assert [shown[i] for i in first["stopped"]] == ["STOPPED_EARLY"] * 2, "status prints the states it decided"
    assert shown[first["promoted"][0]] in ("SUBMITTED", "PENDING", "QUEUED", "RUNNING")
    assert all(sweep.task(i).state()["state"] == "STOPPED_EARLY" for i in first["stopped"])
    hpcvit("cancel", cwd=workdir)
