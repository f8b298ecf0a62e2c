"""The training process started by torchrun: ``torchrun ... -m hpcvit.train TASK_DIR``.

The work is done by :class:`hpcvit.training.loop.Trainer`; this entry point installs the stop-signal
handlers, configures the task log and records a failure (``failed.json``, MLflow FAILED) before re-raising.
"""

from __future__ import annotations

import signal
import sys
import traceback
from pathlib import Path

from hpcvit.fsio import describe_os_error
from hpcvit.scheduler.jobenv import JobEnv
from hpcvit.ledger import SweepDir, TaskDir
from hpcvit.logs import configure_task
from hpcvit.scheduler.procs import die_with_parent
from hpcvit.training import startup, stop


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    startup.mark("python")
    if len(argv) != 1:
        print("usage: torchrun ... -m hpcvit.train TASK_DIR", file=sys.stderr)
        return 2
    task_path = Path(argv[0]).resolve()
    task = TaskDir(SweepDir(task_path.parent.parent), int(task_path.name))
    stop.install_handlers()
    # torchrun starts each rank in a session of its own: without this a killed agent would leave its ranks
    # training on. With it, they get SIGTERM, save at the next step together, and exit.
    die_with_parent(signal.SIGTERM)
    parent = stop.watch_parent()
    env = JobEnv.read()
    configure_task(task.key)

    import torch

    startup.mark("torch")
    from hpcvit.training import distributed
    from hpcvit.training.loop import Trainer

    startup.mark("hpcvit")

    torch.set_num_threads(env.omp_threads)
    trainer = None
    try:
        trainer = Trainer(task, env)
        return trainer.run()
    except Exception as exc:
        error = traceback.format_exc(limit=8)
        summary = describe_os_error(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
        if stop.orphaned(parent):  # its agent is gone, so is this start: a newer one may own the folder now
            raise
        if trainer is not None:
            trainer.report.failed(error, summary.splitlines()[0] if summary else None)
        elif env.is_main:
            task.write_failure(error, summary.splitlines()[0] if summary else None)
        if _input_error(exc):  # what the user gave does not fit: one line (rank 0), no traceback on every rank
            if env.is_main:
                print(f"error: {summary.splitlines()[0]}", file=sys.stderr, flush=True)
            return 1
        raise
    finally:
        distributed.shutdown()


def _input_error(exc: Exception) -> bool:
    """An error in the task's inputs (data, ``model.init_from``, ``model.kwargs``), not in hpcvit."""
    from hpcvit.data.store import DataError
    from hpcvit.models.init import InitError

    return isinstance(exc, (DataError, InitError)) or str(exc).startswith("model.kwargs: ")


def leave(code: int) -> None:
    """Exit once the trainer has returned: what it leaves is on disk, and the interpreter's teardown (freeing
    torch's objects, about a second) would only delay the end of the job, and so a requeue or the next task."""
    import atexit
    import logging
    import os

    atexit._run_exitfuncs()  # the handlers a normal exit runs (a persistent loader's workers, tracking)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main())
