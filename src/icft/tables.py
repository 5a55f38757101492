"""The one table writer: a header and rows of cells, as Markdown (reports, model cards) or as aligned plain text
(the terminal). Cells are formatted by the caller; numbers are right-aligned in plain text, the first column
and other text left-aligned."""

from __future__ import annotations

import math


def cell(value: float | None, digits: int = 3, sign: bool = False) -> str:
    """A number as the tables show it; '-' for a value that is missing or not finite."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:{'+' if sign else ''}.{digits}f}"


def markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    """Markdown lines: the header, the rule (numeric columns right-aligned), then one line per row."""
    rule = ["---" if i == 0 or not _numeric(rows, i) else "---:" for i in range(len(header))]
    return [_pipe(header), _pipe(rule), *(_pipe(r) for r in rows)]


def text(header: list[str], rows: list[list[str]], gap: int = 2) -> list[str]:
    """Fixed-width lines for a terminal: the header, a rule of dashes, the rows."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    right = [i > 0 and _numeric(rows, i) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(cells, widths, right)]
        return (" " * gap).join(parts).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def _pipe(cells: list[str]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _numeric(rows: list[list[str]], i: int) -> bool:
    """A column is numeric when each of its filled cells starts like a number."""
    filled = [str(r[i]).strip("*") for r in rows if str(r[i]) not in ("", "-", "–")]  # **bold** reads as its number
    return bool(filled) and all(c.lstrip("+-").replace(",", "")[:1].isdigit() for c in filled)
