"""Model facts for a given input: parameters, FLOPs per image, and whether the model builds and runs at all.

``hpcvit models [PATTERN] [--in-chans C --img-size S] [--format table|json|csv]`` lists the registry with these facts.
FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass of a single image in eval
mode: matrix multiplications, convolutions and attention, 2 FLOPs per multiply-add; element-wise work (norms,
activations, softmax) is not counted, as in the FLOP figures papers quote.
"""

from __future__ import annotations

import argparse
import gc
import sys
from typing import Any

from hpcvit.models._registry import build_model, list_models, model_entry
from hpcvit.tables import RECORD_FORMATS, records_text

STANDARD_INPUTS: tuple[tuple[int, int], ...] = ((2, 32), (3, 125))
"""(channels, side) of the electron/photon crops and of the quark/gluon and top jet images."""


def _shape(in_chans: int, img_size: int) -> str:
    return f"{in_chans}x{img_size}x{img_size}"


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _flop_counter():
    """A ``FlopCounterMode`` that also counts the CPU fused-attention kernel, which torch's table leaves out."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        custom[cpu_sdpa] = _cpu_sdpa_flop
    return FlopCounterMode(display=False, custom_mapping=custom)


def count_gflops(model: Any, in_chans: int, img_size: int, num_outputs: int = 1) -> float:
    """Forward GFLOPs for one image (2 per multiply-add); leaves the model in eval mode, touches no global RNG."""
    import torch

    model.eval()
    x = torch.randn(1, in_chans, img_size, img_size, generator=torch.Generator().manual_seed(0))
    counter = _flop_counter()
    # nn.MultiheadAttention's eval-mode fast path is one opaque native kernel the counter cannot see into.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), counter:
            out = model(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    if tuple(out.shape) != (1, num_outputs):
        raise RuntimeError(f"output shape {tuple(out.shape)}, expected {(1, num_outputs)}")
    return counter.get_total_flops() / 1e9


def model_info(name: str, in_chans: int, img_size: int, num_outputs: int = 1) -> dict[str, Any]:
    """Parameters (M), GFLOPs per image and whether ``name`` builds and runs on ``in_chans`` x ``img_size``^2.

    Returns ``{"name", "family", "input", "ok", "params", "params_m", "gflops", "error"}``; a model that fails to
    build or run gives ``ok=False`` and the error text (``params`` is set when only the forward pass failed).
    An unknown ``name`` raises ``ValueError``.
    """
    entry = model_entry(name)
    info: dict[str, Any] = {"name": name, "family": entry.family, "input": _shape(in_chans, img_size), "ok": False,
                            "params": None, "params_m": None, "gflops": None, "error": None}

    model = None
    try:
        model = build_model(name, in_chans, img_size, num_outputs)
        params = sum(p.numel() for p in model.parameters())
        info["params"], info["params_m"] = params, params / 1e6
        info["gflops"] = count_gflops(model, in_chans, img_size, num_outputs)
        info["ok"] = True
    except Exception as exc:  # noqa: BLE001 -- any failure means "does not support this input"
        info["error"] = f"{type(exc).__name__}: {exc}".strip()
    finally:
        del model
        gc.collect()
    return info


def supports(name: str, in_chans: int, img_size: int) -> bool:
    """Whether ``name`` builds and runs a forward pass on one ``in_chans`` x ``img_size``^2 image."""
    return bool(model_info(name, in_chans, img_size)["ok"])


def models_report(pattern: str = "*", in_chans: int = 2, img_size: int = 32,
                  check_inputs: tuple[tuple[int, int], ...] = STANDARD_INPUTS, progress=None) -> list[dict[str, Any]]:
    """``model_info`` for every registered name matching ``pattern``, plus ``supports`` for ``check_inputs``."""
    rows = []
    for name in list_models(pattern):
        if progress is not None:
            progress(name)
        info = model_info(name, in_chans, img_size)
        info["description"] = model_entry(name).description
        info["supports"] = {}
        for chans, side in check_inputs:
            same = (chans, side) == (in_chans, img_size)
            info["supports"][_shape(chans, side)] = info["ok"] if same else supports(name, chans, side)
        rows.append(info)
    return rows


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def models_table(rows: list[dict[str, Any]], in_chans: int, img_size: int, width: int) -> Any:
    """The models' table for a console ``width`` wide (names and words never cut)."""
    from hpcvit.tables import Column, fit

    shape = _shape(in_chans, img_size)
    columns = [Column("name"), Column("family", priority=2), Column("params (M)", numeric=True),
               Column(f"GFLOPs {shape}", numeric=True),
               *(Column(_shape(chans, side), numeric=True, priority=3) for chans, side in STANDARD_INPUTS),
               Column("description", priority=1, min_width=24)]
    cells = []
    for row in rows:
        gflops = _fmt(row["gflops"], 3) if row["ok"] else "[red]fails[/red]"
        marks = ["[green]yes[/green]" if ok else "[red]no[/red]" for ok in row["supports"].values()]
        cells.append([f"[bold]{row['name']}[/bold]", row["family"], _fmt(row["params_m"], 2), gflops, *marks,
                      row["description"]])
    return fit(f"hpcvit models ({len(rows)}); params and GFLOPs per image at {shape}", columns, cells, width)


def _print_table(rows: list[dict[str, Any]], in_chans: int, img_size: int) -> None:
    from hpcvit.tables import PipeConsole

    console = PipeConsole()
    width = console.width if console.is_terminal else 160  # piped: one line per model, nothing folded
    console.print(models_table(rows, in_chans, img_size, width))
    shape = _shape(in_chans, img_size)
    for row in rows:
        if not row["ok"]:
            console.print(f"[red]{row['name']}[/red] on {shape}: {row['error']}", markup=True, highlight=False)


def _run(args: argparse.Namespace) -> int:
    names = list_models(args.pattern, inputs=None)
    if not names:
        print(f"no registered model matches {args.pattern!r}; `hpcvit models` lists all {len(list_models())}")
        return 1
    build = args.build or args.in_chans is not None or args.img_size is not None or args.pattern != "*"
    args.in_chans, args.img_size = args.in_chans or 2, args.img_size or 32
    if not list_models(args.pattern):  # only models of hit lists match: no image sizes to build them for
        build = False
    if not build or args.no_build:
        rows = [{"name": n, "family": model_entry(n).family, "description": model_entry(n).description}
                for n in names]  # every model: image models and those of per-event hit lists (family hits)
        if args.format in RECORD_FORMATS:
            sys.stdout.write(records_text(rows, args.format))
        else:
            name_width = max([18, *(len(r["name"]) for r in rows)])
            for row in rows:
                print(f"{row['name']:<{name_width}} {row['family']:<9} {row['description']}")
            print("(parameters, FLOPs and input sizes: hpcvit models --build, a PATTERN, or --in-chans/--img-size; "
                  "it builds every model, a minute or two)", file=sys.stderr)
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from rich.console import Console

    err = Console(stderr=True)
    with err.status("building models") as status:
        rows = models_report(args.pattern, args.in_chans, args.img_size,
                             progress=lambda name: status.update(f"building {name} ..."))
    if args.format in RECORD_FORMATS:
        sys.stdout.write(records_text(rows, args.format))
    else:
        _print_table(rows, args.in_chans, args.img_size)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``models`` command to an ``argparse`` sub-parser set; sets ``func(args) -> int``."""
    parser = subparsers.add_parser(
        "models", help="list registered models with parameters, FLOPs and supported input sizes",
        description="List the registered models with their family and description. With a PATTERN (a part of "
                    "the name, or shell wildcards), --build, --in-chans or --img-size, also build each one on the "
                    "CPU (a few seconds per model): parameters, GFLOPs per image for the given input, and whether "
                    "it runs on 2x32x32 and 3x125x125 images.")
    parser.add_argument("pattern", nargs="?", default="*",
                        help="part of a name (vit) or shell wildcards (vit_*, *net*); default: all")
    parser.add_argument("--in-chans", type=int, default=None, help="input channels (default 2; implies --build)")
    parser.add_argument("--img-size", type=int, default=None, help="image side in pixels (default 32; implies --build)")
    parser.add_argument("--build", action="store_true", help="build every model: parameters, FLOPs, input sizes")
    parser.add_argument("--format", choices=("table", *RECORD_FORMATS), default="table")
    parser.add_argument("--no-build", action="store_true", help="names, families and descriptions only (the default)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=_run)
    return parser
