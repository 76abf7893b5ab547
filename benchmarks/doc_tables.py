"""Markdown tables of the docs as data: the plot scripts draw exactly what the docs say."""

from __future__ import annotations

import re


def tables_after(text: str, heading: str) -> list[list[dict[str, str]]]:
    """The markdown tables of the section whose heading starts with `heading`, as row dicts."""
    m = re.search(rf"^## {re.escape(heading)}.*$", text, re.M)
    if not m:
        raise SystemExit(f"no section '## {heading}...' in the doc")
    end = text.find("\n## ", m.end())
    section = text[m.end(): end if end >= 0 else len(text)]
    tables, rows = [], []
    for line in [*section.splitlines(), ""]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            header, body = rows[0], [r for r in rows[2:] if len(r) == len(rows[0])]
            tables.append([dict(zip(header, r, strict=True)) for r in body])
            rows = []
    return tables


def number(cell: str) -> float:
    m = re.search(r"[\d.]+", cell.replace(",", ""))
    if not m:
        raise SystemExit(f"no number in table cell {cell!r}")
    return float(m.group())
