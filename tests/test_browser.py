"""The MLflow UI on a finished sweep, in a real headless Chromium: the values a user reads are MLflow's values.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them) and selenium (``.[dev]``).
Set ``HPCVIT_SCREENSHOT_DIR`` to keep the comparison page's screenshot as ``mlflow-compare.png`` there
(``HPCVIT_SCREENSHOT_DIR=docs/img`` refreshes the README's picture).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from hpcvit.ledger import find_sweep
from hpcvit.results.ui import compare_url, runs_url
from hpcvit.tracking.server import start_server, stop_server
from tests.conftest import SPEC, TWO_MODELS, children, hpcvit, wait_for, write_spec

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
METRIC = "val_roc_auc"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Debian Chromium through its matched chromedriver (never selenium's driver download)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-background-networking",
                "--window-size=1300,1350", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def ui_server() -> Iterator[Callable[..., str]]:
    """Starts ``hpcvit.tracking.server.start_server`` on demand; every server is stopped (process group) at teardown."""
    procs: list[Any] = []

    def start(backend_uri: str, artifacts: Path, log_path: Path) -> str:
        proc, url = start_server(backend_uri, artifacts, port=0, log_path=log_path)
        procs.append(proc)
        return url

    try:
        yield start
    finally:
        for proc in procs:
            stop_server(proc)


def _body_text(driver: Any) -> str:
    return driver.execute_script("return document.body ? document.body.textContent : ''") or ""


def _set_local_storage(driver: Any, base_url: str, items: dict[str, str]) -> None:
    """Local storage belongs to the origin: set it from a page of the server, before the UI reads it."""
    driver.get(f"{base_url}/health")
    for key, value in items.items():
        driver.execute_script("localStorage.setItem(arguments[0], arguments[1])", key, value)


# The compare page lays out a section (Parameters, Metrics) as a plain table (th name, one td per run) or, when
# long, as two virtualised grids: names on the left, one value column per run on the right; a row's cells
# share its `top` offset, a run's column its `left`.
_SECTION_JS = """
const [title] = arguments;
const header = [...document.querySelectorAll('.du-bois-light-collapse-header')]
    .find(h => h.textContent.trim() === title);
if (!header) return null;
return header.parentElement.querySelector('.du-bois-light-collapse-content-box');
"""

_ROW_JS = """
const [box, key] = arguments;
const tr = [...box.querySelectorAll('tr')].find(r => r.querySelector('th')?.textContent.trim() === key);
if (tr) return {top: null, values: [...tr.querySelectorAll('td')].map(c => c.textContent.trim())};
const inner = [...box.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer')];
if (inner.length < 2) return null;
const nameCell = [...inner[0].children].find(c => c.textContent.trim() === key);
if (!nameCell) return null;
const top = nameCell.style.top;
const cells = [...inner[1].children].filter(c => c.style.top === top);
cells.sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left));
return {top: parseFloat(top), values: cells.map(c => c.textContent.trim())};
"""

_GRIDS_JS = """
const [box] = arguments;
const grids = [...box.querySelectorAll('.ReactVirtualized__Grid')];
const values = grids.filter(g => getComputedStyle(g).overflowY === 'auto');
return [values, grids.filter(g => !values.includes(g))];
"""


def _scroll_grids(driver: Any, box: Any, y: float) -> int:
    """Scroll a section's values grid to ``y``, then its names grid; the total height (0: no grid).

    The compare page syncs the names grid to the values grid one scroll event late (so after a scripted
    scroll the names would show the previous position): set it explicitly once the values grid has settled.
    """
    values, names = driver.execute_script(_GRIDS_JS, box)
    # Not past the end of any of them (a horizontal scroll bar makes the values grid's range longer).
    limits = [driver.execute_script("return arguments[0].scrollHeight - arguments[0].clientHeight", g)
              for g in values + names]
    y = max(0, min([y, *limits]))
    for group in (values, names):
        for grid in group:
            driver.execute_script("arguments[0].scrollTop = arguments[1]", grid, y)
        time.sleep(0.3)
    return max((driver.execute_script("return arguments[0].scrollHeight", g) for g in values + names), default=0)


def _section(driver: Any, title: str) -> Any:
    box = driver.execute_script(_SECTION_JS, title)
    assert box is not None, f"no section {title!r} on the compare page"
    return box


def _compare_row(driver: Any, section: str, key: str) -> list[str]:
    """The cells of row ``key`` in a compare-page section, one per run column (scrolls the grids as needed)."""
    box = _section(driver, section)
    deadline = time.monotonic() + 15
    scroll = 0
    while True:
        row = driver.execute_script(_ROW_JS, box, key)
        if row is not None and row["top"] is not None:
            # Bring the row into view (the grid is 300 px high): for the screenshot, and because the values
            # grid may not have rendered a row whose name cell is already there.
            _scroll_grids(driver, box, max(0.0, row["top"] - 100))
        if row is not None and row["values"]:
            return row["values"]
        if time.monotonic() > deadline:
            raise AssertionError(f"row {key!r} not found in the {section!r} section of the compare page")
        if row is None:  # virtualised: rows outside the view are not in the DOM
            height = _scroll_grids(driver, box, scroll)
            scroll = 0 if scroll >= height else scroll + 150
        time.sleep(0.3)


def _column_run_ids(driver: Any) -> list[str]:
    """The runs of the compare page's value columns, left to right, from the Run details section's links."""
    box = _section(driver, "Run details")
    hrefs = driver.execute_script("return [...arguments[0].querySelectorAll('a')].map(a => a.href)", box)
    ids = [m.group(1) for h in hrefs if (m := re.search(r"/runs/([0-9a-f]{32})", h))]
    return list(dict.fromkeys(ids))


def _shown(text: str, value: float) -> bool:
    """A value as the compare page shows it (at most 3 decimals) matches the stored one."""
    return re.fullmatch(r"-?\d+(\.\d{1,3})?", text) is not None and abs(float(text) - value) <= 5e-4 + 1e-12


def test_mlflow_ui_shows_the_sweeps_roc_auc(workdir: Path, browser: Any, ui_server: Callable[..., str],
                                            pytestconfig: pytest.Config) -> None:
    from selenium.webdriver.common.by import By

    spec = write_spec(workdir, SPEC.format(name="browse", n=320, size=16, epochs=2) + TWO_MODELS)
    proc = hpcvit("submit", str(spec), "--wait", cwd=workdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    sweep = find_sweep(None, workdir / "runs")
    m = sweep.manifest
    experiment_id, parent_id = m["experiment_id"], m["parent_run_id"]
    runs = sorted(children(sweep), key=lambda r: int(r.data.tags["hpcvit.task_index"]))
    assert [r.data.tags["hpcvit.model"] for r in runs] == ["cnn_small", "vit_seed"]
    client = MlflowClient(m["tracking_uri"])
    expected = {r.info.run_id: client.get_run(r.info.run_id).data.metrics[METRIC] for r in runs}
    model = {r.info.run_id: r.data.tags["hpcvit.model"] for r in runs}

    url = ui_server(m["tracking_uri"], workdir / "runs" / "mlartifacts", workdir / "mlflow-server.log")
    _set_local_storage(browser, url, {
        # The runs table: the model and ROC-AUC columns, the sweep's parent run expanded to show its children.
        f'MLflowLocalStorage-1.1-ExperimentPage-["{experiment_id}"]-ReactComponentState': json.dumps({
            "selectedColumns": ["params.`model.name`", f"metrics.`{METRIC}`", f"metrics.`best_{METRIC}`"],
            "runsExpanded": {parent_id: True}}),
        # Keep the assistant side panel closed: it would cover a third of the page.
        "mlflow.assistant.panelOpen_v1": "false",
        "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    })

    # 1. The comparison page of the sweep's child runs (values rounded to 3 decimals).
    browser.get(compare_url(url, experiment_id, list(expected)))
    wait_for(lambda: f"Comparing {len(expected)} Runs from 1 Experiment" in _body_text(browser)
             and METRIC in _body_text(browser), 60, "the compare page with its metrics")
    for header in browser.find_elements(By.CSS_SELECTOR, ".du-bois-light-collapse-header"):
        if header.get_attribute("textContent").strip() in ("Visualizations", "Artifacts", "Tags"):
            header.click()  # collapse what the screenshot does not need
    browser.find_element(By.CSS_SELECTOR, 'button[aria-label="Parameters - Show diff only"]').click()
    columns = _column_run_ids(browser)
    assert sorted(columns) == sorted(expected), columns
    assert _compare_row(browser, "Parameters", "model.name") == [model[rid] for rid in columns]
    shown = _compare_row(browser, "Metrics", METRIC)
    assert len(shown) == len(columns), shown
    for rid, text in zip(columns, shown):
        assert _shown(text, expected[rid]), f"{model[rid]}: page shows {text!r}, MLflow has {expected[rid]!r}"

    title = browser.find_element(By.XPATH, "//*[starts-with(normalize-space(text()), 'Comparing ')]")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", title)
    time.sleep(0.5)  # let the grids repaint after the scroll
    values, names = browser.execute_script(_GRIDS_JS, _section(browser, "Metrics"))
    tops = {browser.execute_script("return arguments[0].scrollTop", g) for g in values + names}
    assert len(tops) == 1, f"metric names and values scrolled apart in the screenshot: {tops}"
    shot = workdir / "mlflow-compare-page.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n"), f"bad screenshot {shot} ({len(data)} bytes)"

    # 2. The runs table of the experiment: one row per child run, found by its run id, at full precision.
    browser.get(runs_url(url, experiment_id))

    def cell(run_id: str, col: str) -> str | None:
        found = browser.find_elements(By.CSS_SELECTOR, f'div[role="row"][row-id="{run_id}"] div[col-id="{col}"]')
        return found[0].get_attribute("textContent").strip() if found else None

    wait_for(lambda: all(cell(rid, f"metrics.`{METRIC}`") for rid in expected), 60,
             "the runs table to show each child run's val_roc_auc")
    for rid, value in expected.items():
        assert cell(rid, "params.`model.name`") == model[rid]
        text = cell(rid, f"metrics.`{METRIC}`")
        assert text is not None and float(text) == pytest.approx(value, rel=1e-9, abs=1e-12), (model[rid], text)


_VISIBLE_JS = """
const [runIds, cols] = arguments;
const out = {};
for (const id of runIds) {
  out[id] = {};
  for (const col of cols) {
    const cell = document.querySelector(`div[role="row"][row-id="${id}"] div[col-id="${col}"]`);
    if (!cell) { out[id][col] = null; continue; }
    const r = cell.getBoundingClientRect();
    out[id][col] = {text: cell.textContent.trim(), top: r.top,
                    inView: r.left >= 0 && r.top >= 0 && r.right <= innerWidth && r.bottom <= innerHeight};
  }
}
return out;
"""


def test_the_url_hpcvit_ui_prints_opens_on_the_comparison_in_a_fresh_profile(
        workdir: Path, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    """No browser state prepared: the printed URL alone opens the sweep's runs sorted by the test metric, its
    test and best validation values and the swept model in the first viewport."""
    import select
    import signal
    import subprocess
    import sys

    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    text = SPEC.format(name="glance", n=320, size=16, epochs=2).replace(
        "  val_fraction: 0.25\n", "  val_fraction: 0.25\n  test_fraction: 0.25\n")
    spec = write_spec(workdir, text + TWO_MODELS)
    assert hpcvit("submit", str(spec), "--wait", cwd=workdir).returncode == 0
    sweep = find_sweep(None, workdir / "runs")
    client = MlflowClient(sweep.manifest["tracking_uri"])
    runs = {r.info.run_id: client.get_run(r.info.run_id) for r in children(sweep)}
    test = {rid: r.data.metrics["test_roc_auc"] for rid, r in runs.items()}
    proc = subprocess.Popen([sys.executable, "-m", "hpcvit.cli", "ui", sweep.sweep_id, "--port", "0"], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    lines: list[str] = []
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1000",
                f"--user-data-dir={tmp_path / 'fresh-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any("side by side" in line for line in lines):
            if select.select([proc.stdout], [], [], 1.0)[0]:
                line = proc.stdout.readline()
                if not line:
                    break
                lines.append(line.strip())
        url = next(line for line in lines if "side by side" in line).rsplit(": ", 1)[1]
        assert "viewStateShareKey=" in url, url
        driver.get(url)
        cols = ["metrics.`test_roc_auc`", "metrics.`best_val_roc_auc`", "params.`model.name`"]
        wait_for(lambda: all(c and c["text"] for cells in driver.execute_script(_VISIBLE_JS, list(test), cols).values()
                             for c in cells.values()), 90, "the runs table in the shared view")
        time.sleep(1.0)
        seen = driver.execute_script(_VISIBLE_JS, list(test), cols)
        for rid, cells in seen.items():
            run = runs[rid]
            for col, cell in cells.items():
                assert cell["inView"], f"{col} of {run.info.run_name} is outside the first viewport"
            assert float(cells[cols[0]]["text"].rstrip("…")[:6]) == pytest.approx(test[rid], abs=1e-4)
            assert float(cells[cols[1]]["text"].rstrip("…")[:6]) == pytest.approx(
                run.data.metrics["best_val_roc_auc"], abs=1e-4)
            assert cells[cols[2]]["text"] == run.data.params["model.name"]
        order = sorted(seen, key=lambda rid: seen[rid][cols[0]]["top"])
        assert order == sorted(test, key=lambda rid: -test[rid]), "sorted by the test metric, best first"
        target = os.environ.get("HPCVIT_SCREENSHOT_DIR")
        shot_dir = (pytestconfig.invocation_params.dir / target) if target else workdir
        shot_dir.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(shot_dir / "mlflow-compare.png"))
    finally:
        driver.quit()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)
