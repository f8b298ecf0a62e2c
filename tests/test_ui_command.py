"""``hpcvit ui``: a real server on the sweep store, and the URL of the sweep's run comparison printed."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from hpcvit.tracking import names
from hpcvit.training.loop import Trainer
from hpcvit.results.ui import compare_url
from tests.conftest import children
from tests.test_train_features import make_sweep, tiny


def test_ui_prints_the_comparison_of_the_finished_runs(workdir: Path) -> None:
    sweep = make_sweep(workdir, tiny("ui", "", n=200, epochs=1, sweep="""
sweep:
  grid:
    optim.seed: [1, 2]
"""))
    for task in sweep.tasks():
        assert Trainer(task).run() == 0
    from hpcvit.tracking import mlflow_client

    m = sweep.manifest
    exp = mlflow_client(m["tracking_uri"]).get_experiment(m["experiment_id"])
    assert exp.tags[names.EXPERIMENT_KIND_TAG] == "custom_model_development"
    ids = [r.info.run_id for r in sorted(children(sweep), key=lambda r: int(r.data.tags["hpcvit.task_index"]))]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hpcvit.cli", "ui", sweep.sweep_id, "--port", "0"], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any("comparison of its" in line for line in lines):
            if select.select([proc.stdout], [], [], 1.0)[0]:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line.strip())
        found = next(line for line in lines if "comparison of its" in line)
        url = found.split(": ", 1)[1]
        base = url.split("/#/")[0]
        assert url == compare_url(base, m["experiment_id"], ids), (url, ids)
        assert "comparison of its 2 finished run(s)" in found
        view = next(line for line in lines if "side by side" in line).rsplit(": ", 1)[1]
        assert view == f"{base}/#/experiments/{m['experiment_id']}/runs?viewStateShareKey={sweep.sweep_id}", view
        shared = mlflow_client(m["tracking_uri"]).get_experiment(m["experiment_id"]).tags
        state = json.loads(shared[f"mlflow.sharedViewState.{sweep.sweep_id}"])
        assert state["orderByKey"] == "metrics.`best_val_roc_auc`" and "params.`optim.seed`" in state["selectedColumns"]
        with urllib.request.urlopen(f"{base}/health", timeout=10) as resp:
            assert resp.read().decode().strip() == "OK"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
