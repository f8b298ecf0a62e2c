"""benchmarks/gpu_check.py on the CPU: ``--smoke`` runs every part (2 gloo ranks through torchrun, the twin's
three processes) and reports each with its figures; a spent time budget records every part as skipped."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
MODELS = ["vit_tiny", "swin_tiny", "coatnet_0"]


def _module() -> Any:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_check(out: Path, *args: str, timeout: float = 1100) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *args], check=False,
                          capture_output=True, text=True, timeout=timeout, cwd=out.parent)


def expected_parts(models: list[str] = MODELS) -> list[str]:
    return [f"{m}/{loop}" for m in models for loop in ("hpcvit", "plain")] + ["resume_twin"]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # launches of 2 torchrun ranks on a shared 2-core machine
def test_smoke_reports_every_part_with_figures(tmp_path: Path) -> None:
    # one model: on the CPU (no compile) every model runs the same code paths; the GPU check runs all three
    models = MODELS[:1]
    out = tmp_path / "tmp"
    proc = run_check(out, "--models", ",".join(models))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    parts = result["parts"]
    assert sorted(parts) == sorted(expected_parts(models))
    keys = _module().THROUGHPUT_KEYS
    for name in expected_parts(models)[:-1]:
        r = parts[name]
        assert r["status"] == "ok", f"{name}: {r}"
        for key in keys:
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] >= 0, f"{name}.{key} = {r.get(key)}"
        assert r["img_s"] > 0 and r["step_s"] > 0 and r["ckpt_stall_s"] > 0, f"{name}: {r}"
        assert r["data_wait_frac"] < 1, f"{name}: {r}"
        if name.endswith("/hpcvit"):
            assert r["ckpt_write_s"] > 0 and r["amp"] == "torch.bfloat16", f"{name}: {r}"
    twin = parts["resume_twin"]
    assert twin["status"] == "ok" and twin["equal"] is True, twin
    assert twin["stopped_at"] == twin["resumed_at"] == twin["steps"] // 2 > 0, twin
    assert twin["tensors"] > 0 and twin["differing"] == []
    assert result["settings"]["world"] == 2 and result["settings"]["backend"] == "gloo"

    table = (out / "results.md").read_text()
    for m in models:
        for loop in ("hpcvit", "plain"):
            assert re.search(rf"^\| {m} \| {loop} \| \d+ \| [\d.]+x \| [\d.]+ % \| [\d.]+ s \| \d+ % \|.*\| ok",
                             table, re.MULTILINE), f"no row for {m}/{loop}:\n{table}"
    assert "final weights bitwise equal" in table
    logs = sorted(p.name for p in (out / "logs").iterdir())
    assert logs == sorted([*(f"{m}.log" for m in models), "twin-straight.log", "twin-half.log", "twin-resume.log"])


def test_spent_budget_records_every_part_as_skipped(tmp_path: Path) -> None:
    out = tmp_path / "tmp"
    proc = run_check(out, "--budget-s", "1", timeout=300)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    parts = json.loads((out / "results.json").read_text())["parts"]
    assert sorted(parts) == sorted(expected_parts())
    for name, r in parts.items():
        assert r == {"status": "failed", "error": "skipped: the time budget was spent"}, f"{name}: {r}"
    table = (out / "results.md").read_text()
    for m in MODELS:
        assert f"| {m} | hpcvit | - |" in table and f"| {m} | plain | - |" in table
    assert "Exact resume: FAILED: skipped: the time budget was spent" in table


def test_a_record_without_its_figures_counts_as_failed() -> None:
    m = _module()
    keys = m.THROUGHPUT_KEYS
    full = {"status": "ok", **{k: 0.5 for k in keys}}
    assert m.checked(full, keys, None) == full
    assert m.checked({**full, "img_s": None}, keys, None)["error"] == "no figure for img_s"
    assert m.checked({**full, "step_s": float("nan")}, keys, None)["status"] == "failed"
    assert m.checked(None, keys, "exit status 1: RuntimeError: boom") == \
        {"status": "failed", "error": "exit status 1: RuntimeError: boom"}
    assert m.checked(None, keys, None)["error"] == "the process wrote no result"
    assert m.checked({"status": "failed", "error": ""}, keys, None)["error"] == "failed without an error message"
