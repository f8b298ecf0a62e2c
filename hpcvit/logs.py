"""Logging, configured once per process: rich lines on stderr for the CLI, plain lines in task logs."""

from __future__ import annotations

import logging
import sys

# Libraries whose INFO lines are noise for hpcvit's users (MLflow's run URLs and migrations, alembic's steps).
_QUIET = ("mlflow", "alembic", "urllib3", "matplotlib", "PIL", "filelock", "fsspec", "torch", "timm")


def _quiet_libraries() -> None:
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def configure_cli(verbose: bool = False) -> None:
    """hpcvit's INFO (DEBUG with ``verbose``) and everyone's warnings to stderr, through rich."""
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(console=Console(stderr=True), show_time=False, show_path=False, markup=False,
                          rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("hpcvit").setLevel(logging.DEBUG if verbose else logging.INFO)
    _quiet_libraries()
    if not verbose:  # an unreachable server is reported once, in hpcvit's own words, not per HTTP retry
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def configure_task(task_key: str) -> None:
    """Plain timestamped lines on stdout (the task's ``train.log``), tagged with the task's key."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"[%(asctime)s] {task_key} %(levelname)s %(name)s: %(message)s",
                                           datefmt="%Y-%m-%dT%H:%M:%S%z"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("hpcvit").setLevel(logging.INFO)
    _quiet_libraries()
