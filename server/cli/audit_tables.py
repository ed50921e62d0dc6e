"""How the auditor's views print: a table when it fits the terminal, else one stacked block per
row (label, value; long values fold, never cut), and a legend saying what each figure means.
Digests are printed whole."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from fedgate.server.audit.legend import LEGEND


def num(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def natural_width(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """The width a table of these cells takes with no cell cut or wrapped (rich's borders and
    one space of padding each side)."""
    widths = [len(c) for c in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], Text.from_markup(cell).cell_len)
    return sum(widths) + 3 * len(widths) + 1


def records(
    console: Console,
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    key: int = 0,
) -> None:
    """``rows`` as a table when it fits, else a block per row headed by its ``key`` column.
    Cells are rich markup (escape what came from the database)."""
    if natural_width(columns, rows) <= console.width:
        table = Table(title=title)
        for col in columns:
            table.add_column(col, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    console.print(f"[bold]{escape(title)}[/bold] ({len(rows)}; stacked to fit "
                  f"{console.width} columns)", highlight=False)  # fmt: skip
    width = max(len(c) for c in columns)
    for row in rows:
        console.print(f"[bold]{columns[key]} {row[key]}[/bold]", highlight=False)
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", no_wrap=True, min_width=width)
        grid.add_column(overflow="fold")
        for col, cell in zip(columns, row, strict=True):
            if col != columns[key] and cell:
                grid.add_row(col, cell)
        console.print(Padding(grid, (0, 0, 0, 2)), highlight=False)


def legend(console: Console, names: Sequence[str]) -> None:
    """What each named figure means, under the table."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(style="dim", overflow="fold")
    for name in names:
        grid.add_row(name, LEGEND[name])
    console.print(grid, highlight=False)


def config_lines(console: Console, config: Mapping[str, Any], digest: str) -> None:
    """A run's configuration as the chain states it, and its digest."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("config digest", digest)
    for k, v in sorted(config.items()):
        grid.add_row(escape(str(k)), escape(str(v)))
    console.print(grid, highlight=False)
