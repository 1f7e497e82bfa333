"""One table type for the results layer: computed once, rendered as Markdown and written as CSV.

The report (``experiments/report.py``), the findings page (``experiments/findings.py``) and ``ressenet analyze``
(``ressenet/analysis/``) compute their numbers, put them in :class:`Table` objects, and render them here:
:meth:`Table.markdown` for the pages, :meth:`Table.write_csv` for the files beside them. A page is a list of
blocks, each a line of prose or a table; :func:`render` turns it into Markdown lines.
"""
from __future__ import annotations

import csv
import html
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from ressenet.files import atomic_write_text

__all__ = ["Table", "Block", "Section", "render", "md_cell", "md_table", "csv_value", "slug"]


def md_cell(value: Any) -> str:
    """A value as one Markdown table cell: pipes and HTML escaped, line breaks flattened (names come from files
    anyone can write, so a model name with a newline or a <script> must not break or inject into a report)."""
    return html.escape(" ".join(str(value).split()), quote=False).replace("|", "\\|")


def csv_value(v: Any) -> Any:
    """A value as a CSV field: floats rounded to 6 decimals, NaN, infinities and None empty, the rest as given."""
    if isinstance(v, float):
        return "" if not math.isfinite(v) else round(v, 6)
    if v is None:
        return ""
    return v


@dataclass
class Table:
    """A header, rows of cells and a column alignment (one letter per column, "l" or "r"; default: the first
    column left, the rest right)."""

    header: Sequence[str]
    rows: list[Sequence[Any]] = field(default_factory=list)
    align: str | None = None

    @classmethod
    def from_records(cls, columns: Sequence[str], records: Iterable[Mapping[str, Any]]) -> Table:
        """The columns of dict rows (a missing key an empty cell; keys not in ``columns`` left out)."""
        return cls(list(columns), [[r.get(k) for k in columns] for r in records])

    def add(self, *cells: Any) -> None:
        self.rows.append(list(cells))

    def markdown(self) -> list[str]:
        """The table as Markdown lines."""
        align = self.align or "l" + "r" * (len(self.header) - 1)
        sep = ["---:" if a == "r" else "---" for a in align]
        out = ["| " + " | ".join(self.header) + " |", "| " + " | ".join(sep) + " |"]
        return out + ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in self.rows]

    def csv(self) -> str:
        """The table as CSV text (header first; cells through :func:`csv_value`)."""
        f = io.StringIO(newline="")
        w = csv.writer(f)
        w.writerow(self.header)
        w.writerows([csv_value(c) for c in row] for row in self.rows)
        return f.getvalue()

    def write_csv(self, path: str | Path) -> Path:
        """Write :meth:`csv` to ``path`` atomically; return the path."""
        atomic_write_text(path, self.csv())
        return Path(path)


Block = Union[str, Table]  # one line of a page, or a table


@dataclass
class Section:
    """Part of a page, computed: its blocks (prose lines and tables) and the CSV rows it contributes, by file name.

    ``a += b`` appends ``b``'s blocks and records to ``a``'s.
    """

    blocks: list[Block] = field(default_factory=list)
    records: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)

    def __iadd__(self, other: Section | Iterable[Block]) -> Section:
        if isinstance(other, Section):
            self.blocks += other.blocks
            for name, rows in other.records.items():
                self.records.setdefault(name, []).extend(rows)
        else:
            self.blocks += list(other)
        return self

    def table(self, name: str, columns: Sequence[str]) -> Table:
        """The records for CSV file ``name`` as a table of ``columns``."""
        return Table.from_records(columns, self.records.get(name, []))


def render(blocks: Iterable[Block]) -> list[str]:
    """Markdown lines of a page: lines of prose as they are, tables as :meth:`Table.markdown`."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Table):
            out += b.markdown()
        else:
            out.append(b)
    return out


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> list[str]:
    """A Markdown table's lines: ``Table(headers, rows, align).markdown()``."""
    return Table(headers, list(rows), align).markdown()


def slug(text: str) -> str:
    """``text`` as a file-name part (a figure's or a table's): lower case, runs of other characters as one underscore."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
