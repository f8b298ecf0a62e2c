"""Tables that fit the terminal without cutting a number: numbers never wrap or shrink, labels fold, and when the
width is short the least important columns are left out (and the title says which)."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.box import SIMPLE_HEAD
from rich.console import Console
from rich.table import Table
from rich.text import Text


class PipeConsole(Console):
    """A console whose closed pipe (``| head``) is a :class:`BrokenPipeError` for the command line to end on
    quietly with 141, as other tools do (rich would exit 1 on its own)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def stdout_console(**kwargs: Any) -> Console:
    """Standard output: tables fit a terminal's width; in a pipe nothing wraps (a script, a CSV, a file:line
    error must survive ``> file`` and ``| grep``)."""
    if sys.stdout.isatty():
        return PipeConsole(**kwargs)
    return PipeConsole(width=100_000, soft_wrap=True, **kwargs)


@dataclass(frozen=True)
class Column:
    header: str
    numeric: bool = False
    """Numbers are right-aligned and keep their full width."""
    priority: int = 0
    """Columns of the highest priority number are the first left out when the table is too wide."""
    min_width: int = 6
    """Narrowest a text column may fold to."""


LONGEST_WORD = 24
"""Words (paths, names) up to this long keep their whole width; longer ones fold."""


def fit(title: str, columns: list[Column], rows: list[list[str]], width: int) -> Table:
    """A table of ``rows`` for a console ``width`` wide."""
    need = []
    for k, col in enumerate(columns):
        texts = [Text.from_markup(r[k]).plain for r in rows] if rows else [""]
        widest = max([len(col.header) if col.numeric else min(len(col.header), col.min_width),
                      *(Text(t).cell_len for t in texts)])
        # a text column folds between words, never inside one (a path, a name) unless it is longer than that
        word = max((len(w) for t in texts for w in t.split()), default=0)
        need.append(widest if col.numeric else min(widest, max(col.min_width, min(word, LONGEST_WORD))))
    keep = list(range(len(columns)))
    while len(keep) > 1 and sum(need[k] + 3 for k in keep) + 2 > width:
        drop = max((k for k in keep if columns[k].priority > 0), key=lambda k: (columns[k].priority, k), default=None)
        if drop is None:
            break
        keep.remove(drop)
    left_out = [columns[k].header for k in range(len(columns)) if k not in keep]
    if left_out:
        title = f"{title} (narrow terminal: {', '.join(left_out)} left out)"
    table = Table(title=title, box=SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for k in keep:
        col = columns[k]
        if col.numeric:
            table.add_column(col.header, justify="right", no_wrap=True, min_width=need[k])
        else:
            table.add_column(col.header, overflow="fold", min_width=need[k])
    for r in rows:
        table.add_row(*(r[k] for k in keep))
    return table


def console_width(console: Console) -> int:
    return console.width if console.is_terminal else 200


RECORD_FORMATS = ("json", "csv")
"""The machine-readable forms of every table the command line prints (``--format``)."""


def records_text(records: Iterable[Mapping[str, Any]], fmt: str, fieldnames: list[str] | None = None) -> str:
    """``records`` as JSON (a list, one record per line: large outputs print fast and grep well) or as CSV (LF line
    endings; the columns are ``fieldnames``, else every key in the order first seen)."""
    records = list(records)
    if fmt == "json":
        return "[\n" + ",\n".join(json.dumps(dict(r), default=str) for r in records) + "\n]\n" if records else "[]\n"
    if fmt == "csv":
        if fieldnames is None:
            fieldnames = list(dict.fromkeys(k for r in records for k in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in r.items()} for r in records)
        return buf.getvalue()
    raise ValueError(f"unknown record format {fmt!r} (one of {', '.join(RECORD_FORMATS)})")


def _csv_value(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list, tuple)) else value


def duration(seconds: float | None) -> str:
    """``95`` -> ``1m35s``, ``4000`` -> ``1h06m``; empty when unknown."""
    if seconds is None:
        return ""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def index_ranges(indices: list[int]) -> str:
    """``0-3, 7, 9-10``: task indices as runs of consecutive numbers."""
    out: list[str] = []
    for i in sorted(set(indices)):
        if out and out[-1].split("-")[-1] == str(i - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{i}"
        else:
            out.append(str(i))
    return ", ".join(out) or "none"


def parse_ranges(text: str) -> list[int]:
    """``3,7`` or ``0-4,9`` -> task indices; a ``ValueError`` naming the part that is not one."""
    out: list[int] = []
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()) or (sep and int(hi) < int(lo)):
            raise ValueError(f"--tasks {text}: {part.strip()!r} is not a task index or a range like 0-4")
        out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    return sorted(set(out))
