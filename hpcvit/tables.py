"""Tables that fit the terminal without cutting a number: numbers never wrap or shrink, labels fold, and when the
width is short the least important columns are left out (and the title says which)."""

from __future__ import annotations

from dataclasses import dataclass

from rich.box import SIMPLE_HEAD
from rich.console import Console
from rich.table import Table
from rich.text import Text


@dataclass(frozen=True)
class Column:
    header: str
    numeric: bool = False
    """Numbers are right-aligned and keep their full width."""
    priority: int = 0
    """Columns of the highest priority number are the first left out when the table is too wide."""
    min_width: int = 6
    """Narrowest a text column may fold to."""


def fit(title: str, columns: list[Column], rows: list[list[str]], width: int) -> Table:
    """A table of ``rows`` for a console ``width`` wide."""
    need = []
    for k, col in enumerate(columns):
        cells = [Text.from_markup(r[k]).cell_len for r in rows] if rows else [0]
        widest = max([len(col.header) if col.numeric else min(len(col.header), col.min_width), *cells])
        need.append(widest if col.numeric else min(widest, col.min_width))
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
