"""``hpcvit predict``, ``hpcvit evaluate`` and ``hpcvit export``: parse, call :mod:`hpcvit.inference`, print."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from hpcvit.tables import stdout_console

console = stdout_console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

RUN_HELP = ("the trained run: SWEEP/TASK (sweep id under --output-dir, or its folder, and the task index), its "
            "MLflow run id, or an export folder (hpcvit export)")


def _run(args: argparse.Namespace) -> Any:
    """The run of ``args.run``: an export folder, or a task's checkpoint (``--checkpoint best|last``)."""
    from hpcvit.inference.export import CARD, read_export
    from hpcvit.inference.runs import find_task, load_run

    if (Path(args.run) / CARD).exists():
        if getattr(args, "checkpoint", "best") != "best":
            raise ValueError(f"--checkpoint {args.checkpoint}: {args.run} is an export (it holds one set of weights)")
        return read_export(Path(args.run))
    return load_run(find_task(args.run, Path(args.output_dir or "runs")), args.checkpoint)


def _predictions(run: Any, args: argparse.Namespace) -> Any:
    from hpcvit.inference.predict import predict

    seen: dict[tuple[int, int], str] = {}
    for f in args.data:
        try:
            st = Path(f).stat()
        except OSError:
            continue  # the reader names a missing file
        if (st.st_dev, st.st_ino) in seen:
            raise ValueError(f"--data {f}: the same file as {seen[st.st_dev, st.st_ino]}; its rows would be counted "
                             "twice")
        seen[st.st_dev, st.st_ino] = f

    forward = run.forward() if hasattr(run, "forward") else None
    return predict(run, [Path(f) for f in args.data], batch_size=args.batch_size, device=args.device, forward=forward)


def _check_output(path: Path, files: list[str], suffixes: tuple[str, ...]) -> None:
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"-o {path}: name a {' or '.join(suffixes)} file")
    if path.is_dir():
        raise ValueError(f"-o {path}: is a folder; name a file")
    if not path.resolve().parent.is_dir():
        raise ValueError(f"-o {path}: folder {path.parent} does not exist")
    for f in files:
        if Path(f).exists() and path.exists() and path.samefile(f):
            raise ValueError(f"-o {path}: is one of the --data files")


def cmd_predict(args: argparse.Namespace) -> int:
    from hpcvit.inference.predict import PREDICTION_FORMATS, write_table

    out = Path(args.output)
    _check_output(out, args.data, PREDICTION_FORMATS)
    run = _run(args)
    predictions = _predictions(run, args)
    write_table(predictions.columns, out)
    n = len(predictions.raw)
    err.print(f"{n} prediction(s) of {escape(run.ref)} ({', '.join(predictions.outputs)}) beside file, row and the "
              f"files' scalar columns -> {escape(str(out))}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hpcvit.inference.evaluate import evaluate

    run = _run(args)
    predictions = _predictions(run, args)
    figures = Path(args.figures) if args.figures else None
    found, written, notes = evaluate(run, predictions, figures)

    def number(x: float) -> float | None:  # JSON has no NaN: an undefined value is null
        return x if math.isfinite(x) else None

    if args.format == "json":
        print(json.dumps({"run": run.ref, "n": len(predictions.raw), "files": args.data, "notes": notes,
                          "metrics": {k: {"value": number(v), "low": number(lo), "high": number(hi)}
                                      for k, (v, lo, hi) in found.items()}}, indent=1))
    else:
        from hpcvit.tables import Column, console_width, fit

        rows = [[k, f"{v:.4f}" if math.isfinite(v) else "-",
                 f"[{lo:.4f}, {hi:.4f}]" if math.isfinite(lo) and math.isfinite(hi) else "-"]
                for k, (v, lo, hi) in found.items()]
        title = (f"{run.ref} on {len(predictions.raw)} sample(s) of {len(args.data)} file(s) (95 % bootstrap "
                 "intervals)")
        console.print(fit(title, [Column("metric"), Column("value", numeric=True),
                                  Column("interval", numeric=True)], rows, console_width(console)))
    for note in notes:
        err.print(escape(note))
    if written:
        err.print(f"{len(written)} figure file(s) written to {escape(str(figures))}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hpcvit.inference.export import export
    from hpcvit.inference.runs import find_task, load_run

    run = load_run(find_task(args.run, Path(args.output_dir or "runs")), args.checkpoint)
    out = export(run, args.format, Path(args.output))
    err.print(f"{escape(run.ref)} ({run.which} epoch {run.epoch}) exported as {args.format}, checked against the "
              f"trained model -> {escape(str(out))} (model card: {escape(str(out / 'model.json'))})")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``predict``, ``evaluate`` and ``export``."""

    def common(p: argparse.ArgumentParser, data: bool = True) -> None:
        p.add_argument("run", help=RUN_HELP)
        if data:
            p.add_argument("--data", nargs="+", required=True, metavar="FILE",
                           help="HDF5 or Parquet files in the layout the run was trained on (its data.input_key, "
                                "channels and cuts apply)")
            p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
            p.add_argument("--device", default="cpu", help="torch device (default cpu)")
        p.add_argument("--checkpoint", choices=["best", "last"], default="best",
                       help="the best epoch's weights (default; the EMA's when the run kept one) or the newest")
        p.add_argument("--output-dir", metavar="SWEEPS_DIR", help="where the sweeps are, as for the other commands "
                       "(default: runs); not where this command writes")

    p = subparsers.add_parser("predict", help="a trained run's predictions on new files",
                              description="Predict with a trained run on new files: its own channel selection, "
                              "cuts and preprocessing statistics; one row per selected sample with its file, its "
                              "row in the file and the files' scalar columns beside the score (binary) or the value "
                              "in the target's units (regression).")
    common(p)
    p.add_argument("-o", "--output", required=True, help="output table (.parquet or .csv)")
    p.set_defaults(func=cmd_predict)
    p = subparsers.add_parser("evaluate", help="a trained run's metrics on labelled files, with intervals",
                              description="Score a trained run on labelled files: every metric of its task with a "
                              "95 % percentile bootstrap interval; --figures writes its ROC curve or residuals.")
    common(p)
    p.add_argument("--figures", metavar="DIR", help="also write the task's figures (ROC, residuals) into DIR")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=cmd_evaluate)
    p = subparsers.add_parser("export", help="a trained run as TorchScript, ONNX or safetensors with a model card",
                              description="Export a trained run: the weights and model.json (model, input shape and "
                              "channels, preprocessing and its statistics, metrics, data fingerprint, versions, "
                              "commit), enough to predict from the folder alone (hpcvit predict DIR --data ...). "
                              "The export's outputs are checked against the trained model before it is kept.")
    common(p, data=False)
    p.add_argument("--format", choices=["torchscript", "onnx", "safetensors"], required=True)
    p.add_argument("-o", "--output", required=True, help="new (or empty) folder for the export")
    p.set_defaults(func=cmd_export)
