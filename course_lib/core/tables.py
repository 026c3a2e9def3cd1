"""Uniform number formatting and plain-text tables for notebook output.

Stored outputs are compared exactly by nbval, and trailing float digits differ between CPUs and
thread counts. So every number a notebook prints goes through ``fmt`` (about 4 significant
digits) and every table through ``print_table``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real

SIG_DIGITS = 4


def fmt(value: object, sig: int = SIG_DIGITS) -> str:
    """Format a value for printing: floats to `sig` significant digits, -0 as 0, ints exactly."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return str(int(value))
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # numpy / torch scalars
        return fmt(value.item(), sig)
    if isinstance(value, Real):
        x = float(value)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        text = f"{x:.{sig}g}"
        return "0" if float(text) == 0 else text
    return str(value)


def table_str(
    rows: Sequence[Mapping[str, object]] | Sequence[Sequence[object]],
    headers: Sequence[str] | None = None,
    *,
    title: str | None = None,
    sig: int = SIG_DIGITS,
) -> str:
    """Render rows (dicts, or sequences with `headers`) as an aligned text table."""
    rows = list(rows)
    if rows and isinstance(rows[0], Mapping):
        if headers is None:
            headers = []
            for row in rows:
                headers += [k for k in row if k not in headers]
        body = [[fmt(row.get(h), sig) for h in headers] for row in rows]
    else:
        if headers is None:
            raise ValueError("Rows given as sequences need `headers`.")
        body = []
        for row in rows:
            if len(row) != len(headers):
                raise ValueError(f"Row {list(row)!r} has {len(row)} cells but there are {len(headers)} headers.")
            body.append([fmt(cell, sig) for cell in row])
    headers = [str(h) for h in headers]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(headers)]

    def numeric(text: str) -> bool:
        try:
            float(text)
            return True
        except ValueError:
            return text == "-"

    # Numeric columns are right-aligned, header included, so digits line up.
    right = [bool(body) and all(numeric(r[i]) for r in body) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if right[i] else c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    parts = [title] if title else []
    parts += [line(headers), "  ".join("-" * w for w in widths)]
    parts += [line(r) for r in body]
    return "\n".join(parts)


def print_table(rows, headers=None, *, title: str | None = None, sig: int = SIG_DIGITS) -> None:
    """Print `table_str(...)`; the one way notebooks print tables."""
    print(table_str(rows, headers, title=title, sig=sig))
