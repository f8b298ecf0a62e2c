"""``hpcvit data``: generate Monte-Carlo jet images, convert data sets into the training cache, inspect files.

The main CLI calls :func:`add_parser` and then ``args.func(args)``; every sub-command returns an exit code and
reports a failure as one line naming the file (and row group) on stderr. ``python -m hpcvit.data.commands ...``
runs the same commands without the main CLI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _fail(command: str, message: str, code: int = 1) -> int:
    print(f"hpcvit data {command}: error: {message}", file=sys.stderr)
    return code


def _guarded(command: str, fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        from pydantic import ValidationError

        from hpcvit.data.store import DataError

        try:
            return fn(args)
        except KeyboardInterrupt:
            return _fail(command, "interrupted", 130)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            return _fail(command, f"data.{loc}: {err['msg']}" if loc else err["msg"], 2)
        except (DataError, FileNotFoundError, ValueError, RuntimeError, OSError) as exc:
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return _fail(command, text)

    run.__name__ = f"data_{command}"
    return run


# -- generate -----------------------------------------------------------------------------------------------
DETECTOR_ONLY = ("electron-vs-photon", "diphoton-mass", "calo-hits")
"""Processes simulated here without Pythia (a particle gun and a two-body decay into the ECAL model; jets of
particles through a layered ECAL + HCAL, as per-event hit lists)."""
HIT_GENERATORS = {"calo-hits": "hpcvit.hits.generate:run_cli"}
"""Generators of per-event hit lists, by process, as ``module:function`` (imported when asked for)."""


def _generate_detector_only(args: argparse.Namespace) -> int:
    workers = args.workers or os.cpu_count() or 1
    if args.process in HIT_GENERATORS:
        import importlib

        module, _, name = HIT_GENERATORS[args.process].partition(":")
        return getattr(importlib.import_module(module), name)(args)
    if args.process == "electron-vs-photon":
        from hpcvit.data.generate_egamma import generate_egamma

        out = Path(args.output or f"data/egamma_n{args.n}_seed{args.seed}")
        summary = generate_egamma(args.n // 2, out, seed=args.seed, workers=workers,
                                  shard_size=max(1, args.shard_size * 5))
        line = (f"wrote {summary['per_class']} photons and {summary['per_class']} electrons to {out}/ in "
                f"{summary['seconds']:.1f} s; photon conversions {summary['photon_conversion_fraction']:.1%}")
    else:
        from hpcvit.data.generate_diphoton import generate_diphoton

        out = Path(args.output or f"data/diphoton_mass_n{args.n}_seed{args.seed}.parquet")
        summary = generate_diphoton(args.n, out, seed=args.seed, workers=workers, shard_size=args.shard_size,
                                    row_group_size=args.row_group_size)
        line = f"wrote {summary['n']} A -> gamma gamma images to {out} in {summary['seconds']:.1f} s"
    print(json.dumps(summary, indent=1) if args.json else line)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    if args.process in DETECTOR_ONLY:
        return _generate_detector_only(args)
    try:
        import pythia8mc  # noqa: F401
    except ImportError:
        return _fail("generate", "pythia8mc is not installed: pip install 'hpcvit[generate]' "
                                 "(pythia8mc==8.317.2 and fastjet)")
    from hpcvit.data.generate import GenConfig, generate, summary_line, to_json

    cfg = GenConfig(process=args.process, n=args.n, seed=args.seed, pt_min=args.pt_min, pt_max=args.pt_max,
                    eta_max=args.eta_max, jet_r=args.jet_r, shard_size=args.shard_size,
                    clusterer=args.clusterer).resolved()
    out = Path(args.output or f"data/{cfg.process}_n{cfg.n}_seed{cfg.seed}.parquet")
    summary = generate(cfg, out, workers=args.workers, row_group_size=args.row_group_size,
                       progress=not args.no_progress and sys.stderr.isatty())
    print(to_json(summary) if args.json else summary_line(summary))
    return 0


# -- convert ------------------------------------------------------------------------------------------------
def _parse_cut(text: str) -> tuple[str, list[float | None]]:
    """``pt=20:100``, ``abs(ieta)=:1.4`` -> (key, [min, max])."""
    if "=" not in text or ":" not in text.split("=", 1)[1]:
        raise ValueError(f"--cut {text!r}: write COLUMN=MIN:MAX (either side may be empty), e.g. pt=20:100")
    key, rng = text.split("=", 1)
    lo, hi = rng.split(":", 1)
    try:
        return key.strip(), [float(lo) if lo.strip() else None, float(hi) if hi.strip() else None]
    except ValueError:
        raise ValueError(f"--cut {text!r}: bounds must be numbers") from None


def _spec_from_args(args: argparse.Namespace):
    from hpcvit.data.formats import detect_format
    from hpcvit.config import DataSpec

    base: dict[str, Any] = {}
    if getattr(args, "spec", None):
        from hpcvit.yamlio import load_yaml

        doc, _ = load_yaml(args.spec)
        base = dict(doc.get("data", doc)) if isinstance(doc.get("data", doc), dict) else {}
        base.pop("sweep", None)
    if args.paths:
        base["paths"] = [str(p) for p in args.paths]
    fmt = getattr(args, "format", "auto")
    if fmt != "auto":
        base["format"] = fmt
    elif "format" not in base and base.get("paths"):
        base["format"] = detect_format(Path(base["paths"][0]))
    for field, value in (("input_key", args.input_key), ("target_key", args.target_key),
                         ("cache_dir", getattr(args, "cache_dir", None)), ("max_samples", getattr(args, "max_samples", None)),
                         ("task", getattr(args, "task", None)), ("split_seed", getattr(args, "split_seed", None)),
                         ("positive_value", getattr(args, "positive_value", None))):
        if value is not None:
            base[field] = value
    if getattr(args, "channels", None):
        base["channels"] = [int(c) for c in args.channels.split(",")]
    if getattr(args, "cut", None):
        base["cuts"] = dict(_parse_cut(c) for c in args.cut)
    return DataSpec.model_validate(base)


def cmd_convert(args: argparse.Namespace) -> int:
    from hpcvit.data import build_datasets

    if not args.spec and not args.paths:
        return _fail("convert", "give input files or --spec", 2)
    spec = _spec_from_args(args)
    if spec.cache_dir is None:
        return _fail("convert", "give --cache-dir (or data.cache_dir in the spec)", 2)
    if args.raw_only:
        spec = spec.model_copy(update={"cache_preprocessed": False})
    t0 = time.monotonic()
    from hpcvit.data import resolve_paths
    from hpcvit.data.cache import ensure_raw

    if args.verify:
        from hpcvit.data.cache import verify_raw

        for line in verify_raw(spec, resolve_paths(spec, Path.cwd())):
            print(f"stale cache removed: {line}")
    ensure_raw(spec, resolve_paths(spec, Path.cwd()), progress=sys.stderr.isatty(), workers=args.workers)
    from hpcvit.data.targets import Values

    # the cache holds the target column as it is; the objective that trains on it checks its values
    bundle = build_datasets(spec, Path.cwd(), targets=Values(require_finite=False), progress=sys.stderr.isatty(),
                            check_targets=False)
    dt = time.monotonic() - t0
    info = bundle.info
    print(f"cache: {info['cache']['raw']}" + (f"\npreprocessed: {info['cache']['preprocessed']}"
                                             if info["cache"]["preprocessed"] else ""))
    print(f"{info['n_selected']} of {info['n_source']} samples ({' x '.join(map(str, info['shape']))}) in {dt:.1f} s; "
          f"train/val/test {info['n_train']}/{info['n_val']}/{info['n_test']}")
    if info.get("target_stats"):
        print(f"target {spec.target_key!r} in the training split: " + json.dumps(info["target_stats"]["train"]))
    return 0


# -- inspect ------------------------------------------------------------------------------------------------
def _balance(values: np.ndarray) -> dict[str, Any]:
    finite = values[np.isfinite(values)]
    uniq, counts = np.unique(finite, return_counts=True)
    out: dict[str, Any] = {"n": int(len(values))}
    if len(values) != len(finite):
        out["non_finite"] = int(len(values) - len(finite))
    if 0 < len(uniq) <= 10:
        out["counts"] = {f"{u:g}": int(c) for u, c in zip(uniq, counts)}
    elif len(finite):
        out.update(min=float(finite.min()), mean=float(finite.mean()), max=float(finite.max()))
    return out


def cmd_inspect(args: argparse.Namespace) -> int:
    from hpcvit.data.formats import detect_format, open_store
    from hpcvit.config import DataSpec

    report = []
    for path in args.paths:
        path = Path(path)
        fmt = args.format if args.format != "auto" else detect_format(path)
        spec = DataSpec(format=fmt, paths=[str(path)], input_key=args.input_key or "X", target_key=args.target_key)
        store = open_store(spec, [path])
        (d,) = store.describe()
        d["format"] = fmt
        d["images"] = {"n": store.n, "shape": list(store.shape)}
        cols = store.scalar_columns()
        if args.target_key in cols:
            d["target"] = {args.target_key: _balance(store.column(args.target_key))}
        if args.check:
            t0 = time.monotonic()
            nan = inf = 0
            lo = np.full(store.shape[0], np.inf)
            hi = np.full(store.shape[0], -np.inf)
            for _, x in store.iter_read(np.arange(store.n), block=256):
                nan += int(np.isnan(x).sum())
                inf += int(np.isinf(x).sum())
                with np.errstate(invalid="ignore"):
                    lo = np.fmin(lo, np.nanmin(np.where(np.isinf(x), np.nan, x), axis=(0, 2, 3)))
                    hi = np.fmax(hi, np.nanmax(np.where(np.isinf(x), np.nan, x), axis=(0, 2, 3)))
            d["check"] = {"decoded": store.n, "nan_pixels": nan, "inf_pixels": inf, "channel_min": lo.tolist(),
                          "channel_max": hi.tolist(), "seconds": round(time.monotonic() - t0, 2)}
        store.close()
        report.append(d)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
        return 0
    for d in report:
        print(f"{d['path']}: {d['format']}, {d['images']['n']} images of {' x '.join(map(str, d['images']['shape']))}")
        if "row_groups" in d:
            rg = d["rows_per_group"] or {}
            print(f"  row groups: {d['row_groups']} (rows per group min {rg.get('min')}, mean {rg.get('mean')}, "
                  f"max {rg.get('max')}), compression {d['compression']}, image column {d['image_column']}")
            print("  columns: " + ", ".join(f"{k} {v}" for k, v in d["columns"].items()))
            if "generator" in d:
                g = d["generator"] if isinstance(d["generator"], dict) else {}
                made_by = g.get("generator")
                what = (f"pythia8mc {made_by.get('pythia8mc')}, cuts {json.dumps(g.get('cuts'))}"
                        if isinstance(made_by, dict) else str(made_by or ""))  # Pythia jets, or the ECAL model
                print(f"  generator: {g.get('process')} seed {g.get('seed')}, {what}")
        else:
            print(f"  {d.get('dtype')} {d.get('shape')} ({d.get('layout')}), chunks {d.get('chunks')}, "
                  f"compression {d.get('compression')}")
            if d.get("note"):
                print(f"  note: {d['note']}")
        for name, b in d.get("target", {}).items():
            if "counts" in b:
                total = sum(b["counts"].values())
                print(f"  class balance ({name}): " + ", ".join(
                    f"{k}: {v} ({v / total:.1%})" for k, v in b["counts"].items()))
            else:
                print(f"  target {name}: min {b.get('min')}, mean {b.get('mean')}, max {b.get('max')}")
        if "check" in d:
            c = d["check"]
            print(f"  check: decoded {c['decoded']} images in {c['seconds']} s; NaN pixels {c['nan_pixels']}, "
                  f"inf pixels {c['inf_pixels']}")
    return 0


# -- the parser ---------------------------------------------------------------------------------------------
def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``data`` command (sub-commands ``generate``, ``convert``, ``inspect``) to ``subparsers``."""
    from hpcvit.data.generate import PROCESSES

    p = subparsers.add_parser("data", help="generate, convert and inspect data sets",
                              description="Generate Monte-Carlo jet images, build the training cache, inspect files.")
    sub = p.add_subparsers(dest="data_command", metavar="{generate,convert,inspect}")
    sub.required = True

    g = sub.add_parser("generate", help="simulated data sets in the published layouts (jets, showers, hits)",
                       description="Generate a data set in a published layout: top-vs-qcd and quark-vs-gluon jets "
                                   "from Pythia 8 as 3 x 125 x 125 Parquet images (tracks, ECAL, HCAL; half of "
                                   "each class); electron-vs-photon showers as 32 x 32 x 2 HDF5 (one file per "
                                   "class); diphoton-mass A -> gamma gamma as 8 x 125 x 125 Parquet with target m; "
                                   "calo-hits events as per-event hit lists in HDF5 or Parquet.")
    g.add_argument("--process", required=True, choices=sorted([*PROCESSES, *DETECTOR_ONLY]),
                   help="jets from Pythia 8 (top-vs-qcd, quark-vs-gluon) or particles into the ECAL model "
                        "(electron-vs-photon: two HDF5 files in -o DIR; diphoton-mass: X_jet Parquet)")
    g.add_argument("-n", "--n-jets", dest="n", type=int, required=True, help="jets in total, half of each class")
    g.add_argument("-o", "--output", help="Parquet file (default data/<process>_n<N>_seed<S>.parquet)")
    g.add_argument("--seed", type=int, default=1, help="seed of the run; the same seed gives the same jets")
    g.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    g.add_argument("--pt-min", type=float, help="jet pT window, GeV (default 500-650 top, 100-150 quark/gluon)")
    g.add_argument("--pt-max", type=float)
    g.add_argument("--eta-max", type=float, help="|eta| of the jet axis below this (default 2.0)")
    g.add_argument("--jet-r", type=float, help="anti-kT radius (default 0.8 top, 0.4 quark/gluon)")
    g.add_argument("--shard-size", type=int, default=50, help="jets per work unit (with the seed, fixes the output)")
    g.add_argument("--row-group-size", type=int, default=1, help="rows per row group (1 as in the published files)")
    g.add_argument("--clusterer", choices=["fjcore", "fastjet"], default="fjcore",
                   help="anti-kT inside Pythia (fjcore, fast) or the fastjet package")
    h = g.add_argument_group("calo-hits (per-event hit lists; -n counts events, -o an .h5 or .parquet file)")
    h.add_argument("--jet-energy", nargs=2, type=float, metavar=("MIN", "MAX"), default=(20.0, 60.0),
                   help="jet energy range, GeV (default 20 60)")
    h.add_argument("--particles", nargs=2, type=int, metavar=("MIN", "MAX"), default=(3, 10),
                   help="particles per event (default 3 10)")
    h.add_argument("--cone", type=float, default=0.12, help="angular spread around the jet axis, rad (default 0.12; "
                                                            "smaller overlaps more)")
    h.add_argument("--ecal-cell-mm", type=float, default=5.0, help="ECAL cell size, mm (default 5)")
    h.add_argument("--noise", type=float, default=15.0, help="mean noise cells per event (default 15)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")
    g.set_defaults(func=_guarded("generate", cmd_generate))

    c = sub.add_parser("convert", help="build the float32 memory-mapped training cache of a data set",
                       description="Decode Parquet/HDF5 once into the cache training reads (data.cache_dir). "
                                   "Options override the spec's data section.")
    c.add_argument("paths", nargs="*", type=Path, help="input files (or data.paths of --spec)")
    c.add_argument("--spec", type=Path, help="job spec YAML (its data: section) or a data-section YAML")
    c.add_argument("--cache-dir", help="cache directory (data.cache_dir)")
    c.add_argument("--format", choices=["auto", "parquet", "hdf5"], default="auto")
    c.add_argument("--input-key", help="image column / data set (default X; X_jets or X_jet in Parquet)")
    c.add_argument("--target-key", help="target column / data set (default y)")
    c.add_argument("--task", choices=["binary", "regression"])
    c.add_argument("--positive-value", type=float, help="binary: the target value of the positive class")
    c.add_argument("--channels", help="comma-separated channel indices to keep, e.g. 0,1,2,3")
    c.add_argument("--cut", action="append", help="COLUMN=MIN:MAX or abs(COLUMN)=:MAX (repeatable)")
    c.add_argument("--max-samples", type=int, help="keep only the first N samples passing the cuts")
    c.add_argument("--split-seed", type=int, help="seed of the train/val/test split (for the statistics)")
    c.add_argument("--raw-only", action="store_true", help="only the decoded cache, not the preprocessed copy")
    c.add_argument("--workers", type=int, help="decoding processes (default: the usable cores, at most 16)")
    c.add_argument("--verify", action="store_true", help="compare full hashes of the sources with the existing "
                                                          "cache's and rebuild it if any byte changed")
    c.set_defaults(func=_guarded("convert", cmd_convert))

    i = sub.add_parser("inspect", help="print shape, class balance and row groups of data files")
    i.add_argument("paths", nargs="+", type=Path)
    i.add_argument("--format", choices=["auto", "parquet", "hdf5"], default="auto")
    i.add_argument("--input-key", help="image column / data set (default X; X_jets or X_jet in Parquet)")
    i.add_argument("--target-key", default="y", help="column whose class balance is printed (default y)")
    i.add_argument("--check", action="store_true", help="decode every image (finds bad row groups, counts NaN/inf)")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(func=_guarded("inspect", cmd_inspect))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hpcvit")
    add_parser(parser.add_subparsers(dest="command"))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(["data", *argv])
    return args.func(args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
