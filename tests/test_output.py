"""Output that works at 80 columns and in a pipe: numbers never cut, nothing wrapped where it is data."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from hpcvit.compare import compare_table
from hpcvit.states import TaskState
from hpcvit.status import TaskStatus
from tests.conftest import hpcvit, write_spec


def _rendered(table, width: int) -> list[str]:
    out = Console(width=width, record=True, force_terminal=True, color_system=None)
    out.print(table)
    return out.export_text().splitlines()


ROWS = [{"task": i, "run": f"000{i}-x", "model": m, "status": "FINISHED", "params_M": p, "epochs": 30,
         "best": b, "best_epoch": 3, "final": b - 0.01, "rej@0.3": 295.0, "rej@0.5": 7.4, "img_s": 461.0,
         "wall_min": 12.5, "metric": "val_roc_auc", "run_id": "r", "rej@0.3_bound": i == 0, "rej@0.5_bound": False}
        for i, (m, p, b) in enumerate([("cnn_small", 0.24, 0.949213), ("maxvit_tiny", 28.52, 0.794512)])]


def test_the_comparison_fits_80_columns_with_every_number_whole() -> None:
    sweep = SimpleNamespace(sweep_id="smoke-20261123-001111-0669")
    for width in (80, 60, 200):
        lines = _rendered(compare_table(sweep, rows=ROWS, width=width), width)
        assert max(len(line) for line in lines) <= width, (width, lines)
        text = "\n".join(lines)
        assert "0.9492" in text and "0.7945" in text and "…" not in text, text
        header = next(line for line in lines if " best " in line)
        for column, value in (("img/s", "461"), ("Mparams", "28.52"), ("1/eB@.5", "7.4"), ("min", "12.5")):
            assert (f" {column}" not in header) or value in text, (column, text)
            assert header.rstrip().split()[-1] in {"#", "model", "status", "Mparams", "ep", "best", "final",
                                                    "1/eB@.3", "1/eB@.5", "img/s", "min"}, header
    narrow = "\n".join(_rendered(compare_table(sweep, rows=ROWS, width=80), 80))
    assert ">=295.0" in narrow, "a rejection that is the background count's lower bound says so"
    wide = "\n".join(_rendered(compare_table(sweep, rows=ROWS, width=200), 200))
    assert "left out" not in wide and "12.5" in wide


def test_the_status_table_fits_80_columns() -> None:
    from hpcvit.cli import _status_table

    statuses = [TaskStatus(index=i, label=f"coatnet_0 lr=0.000{i} seed={i} weight_decay=0.05", state=state,
                           recorded=str(state), job_id=f"123456_{i}", executor="slurm", restarts=2, epoch=7,
                           epochs=30, metric="val_roc_auc", best_metric=0.81462, message="stopped by SIGUSR2 at epoch 7",
                           log=f"/scratch/runs/qg-coatnet-20261202/tasks/0000{i}/train.log")
                for i, state in enumerate([TaskState.RUNNING, TaskState.PREEMPTED, TaskState.COMPLETED])]
    sweep = SimpleNamespace(sweep_id="qg-coatnet-20261202-070000-abcd", root=Path("/scratch/runs/qg-coatnet-20261202"))
    out = Console(width=80, record=True, force_terminal=True, color_system=None)
    out.print(_status_table(sweep, statuses, out))
    lines = out.export_text().splitlines()
    assert max(len(line) for line in lines) <= 80, lines
    text = "\n".join(lines)
    assert "0.8146" in text and "PREEMPTED" in text and "COMPLETED" in text and "roc_auc" in text


def test_errors_stay_on_one_line_in_a_pipe_however_long(tmp_path: Path) -> None:
    deep = tmp_path / ("a-very-long-folder-name-" * 6)
    deep.mkdir()
    bad = write_spec(deep, "name: x\nmodel: {name: cnn_small}\noptim: {lr: -1}\n", "spec-with-a-long-name.yaml")
    proc = hpcvit("validate", str(bad), cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert f"{bad}:3 optim.lr: Input should be greater than 0" in proc.stderr
