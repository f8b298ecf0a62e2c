#!/usr/bin/env bash
# Regenerate docs/img/mlflow-compare.png: a fresh two-model sweep, a fresh `hpcvit ui` server and a fresh headless
# Chromium profile (no saved browser state), through tests/test_browser.py, which also checks what the page shows.
set -euo pipefail
cd "$(dirname "$0")/../.."
HPCVIT_SCREENSHOT_DIR=docs/img exec .venv/bin/python -m pytest -q -p no:cacheprovider \
    tests/test_browser.py::test_the_url_hpcvit_ui_prints_opens_on_the_comparison_in_a_fresh_profile "$@"
