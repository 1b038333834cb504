"""Plain-text tables and number formatting for command output (no third-party dependency)."""
from __future__ import annotations

from typing import Any, Optional, Sequence


def human(n: float, unit: str = "") -> str:
    """1234567 -> '1.23 M'."""
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:g} {unit}".rstrip()


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str], align: Optional[str] = None) -> str:
    """A text table: numbers right-aligned, everything else left-aligned, unless ``align`` gives each
    column's alignment ('l' or 'r', e.g. "lrr")."""
    cells = [[str(h) for h in headers]] + [["" if v is None else str(v) for v in row] for row in rows]
    if align is not None:
        numeric = [a == "r" for a in align]
    else:
        numeric = [bool(rows) and all(_is_number(r[i]) for r in rows if r[i] is not None)
                   for i in range(len(headers))]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row):
        return "  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in cells[1:]]
    return "\n".join(s.rstrip() for s in out)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
