"""One page from an experiment folder: every figure and table, as Markdown or HTML.

Each experiment writes its PNG figures and a JSON table with an ``"experiment"`` key (and a
``"title"``) into a folder. :func:`build_report` walks a folder, makes one section per folder
that holds such a table or figures, shows the figures by relative links, and renders each table
from its JSON: scalars as a two-column table, lists of records as tables (long lists of numbers
are summarised), nested objects as sub-sections. Other JSON files (a training run's
``config.json``, say) are left out.

An experiment's ``"claims"`` (records of claim, paper, reslab, holds) become its first table and
are gathered, all experiments together, into a table at the top of the page; the keys it names in
``"plotted"`` (grids and curves that its figures draw) are left out of its tables.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

REPORT_FORMATS = ("md", "html")
LIST_SHOWN = 8  # a list of more numbers than this is summarised in a table cell
CLAIM_COLUMNS = ("claim", "paper", "reslab", "holds")  # an experiment's "claims": records with these keys
CLAIMS_CAPTION = "claims: the paper against reslab"


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def to_text(self) -> str:
        """Aligned plain-text columns (for a terminal)."""
        columns = range(len(self.header))
        widths = [max(len(row[i]) for row in [self.header, *self.rows]) for i in columns]
        numeric = [all(_is_number(row[i]) for row in self.rows) for i in columns]
        return "\n".join("  ".join(row[i].rjust(widths[i]) if numeric[i] else row[i].ljust(widths[i]) for i in columns).rstrip()
                         for row in [self.header, *self.rows])


def _is_number(cell: str) -> bool:
    try:
        float(cell.replace(",", ""))
    except ValueError:
        return cell == "-"
    return True


@dataclass
class Section:
    """One experiment folder: its title, figures (paths relative to the report) and tables."""

    title: str
    figures: list[str] = field(default_factory=list)
    tables: list[tuple[str, Table]] = field(default_factory=list)  # (caption, table)
    claims: list[dict] = field(default_factory=list)  # the records of its JSON's "claims" table


def format_value(value: Any) -> str:
    """A table cell: numbers to 4 significant digits, big integers with separators, short lists inline."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, list):
        if len(value) > LIST_SHOWN and all(isinstance(v, (int, float)) for v in value):
            return f"{len(value)} values, {format_value(min(value))} to {format_value(max(value))}"
        return ", ".join(format_value(v) for v in value)
    return str(value)


def _is_records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _is_leaf(value: Any) -> bool:
    """Shown in a cell: scalars and lists of scalars (an object gets a table of its own)."""
    if isinstance(value, dict):
        return False
    if isinstance(value, list):
        return all(not isinstance(v, (dict, list)) for v in value)
    return True


def json_tables(data: Any, caption: str = "") -> Iterator[tuple[str, Table]]:
    """Tables rendering ``data``: its leaf fields as key/value rows, each list of records as a
    table of their leaf fields, each nested object (and record with nested parts) recursively."""
    if _is_records(data):
        columns = list(dict.fromkeys(k for row in data for k, v in row.items() if _is_leaf(v)))
        yield caption, Table(columns, [[format_value(row.get(c)) for c in columns] for row in data])
        for i, row in enumerate(data):
            if not all(_is_leaf(v) for v in row.values()):
                label = next((str(v) for v in row.values() if isinstance(v, str)), str(i + 1))
                yield from json_tables({k: v for k, v in row.items() if not _is_leaf(v)}, f"{caption} / {label}".strip(" /"))
        return
    if isinstance(data, list) and data and all(isinstance(row, list) and _is_leaf(row) for row in data):
        width = max(len(row) for row in data)  # a matrix: rows and columns by index
        yield caption, Table(["", *map(str, range(width))], [[str(i), *map(format_value, row)] for i, row in enumerate(data)])
        return
    if not isinstance(data, dict):
        yield caption, Table(["value"], [[format_value(data)]])
        return
    leaves = [[key, format_value(value)] for key, value in data.items() if _is_leaf(value) and key not in ("experiment", "title")]
    if leaves:
        yield caption, Table(["field", "value"], leaves)
    for key, value in data.items():
        if not _is_leaf(value):
            yield from json_tables(value, f"{caption} / {key}".strip(" /"))


def to_text(data: Any) -> str:
    """A JSON table as plain-text tables with captions, as a command prints its result."""
    return "\n\n".join((f"{caption}\n" if caption else "") + table.to_text() for caption, table in json_tables(data))


def gather(folder: Union[str, Path]) -> list[Section]:
    """One section per folder under ``folder`` (itself included) that holds experiment tables
    (JSON with an ``"experiment"`` key) or PNG figures, in path order."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; pass the folder an experiment wrote its results to")
    sections = []
    for directory in [root, *sorted(p for p in root.rglob("*") if p.is_dir())]:
        relative = directory.relative_to(root)
        section = Section(title=str(relative) if str(relative) != "." else root.name)
        for path in sorted(directory.glob("*.json")):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and "experiment" in data:
                section.title = str(data.get("title") or section.title)
                claims, shown = data.get("claims"), without_keys(data, {"claims", "plotted", *data.get("plotted", ())})
                if _is_records(claims):
                    section.claims += claims
                    section.tables.append((CLAIMS_CAPTION, claim_table(claims)))
                section.tables += [(caption or path.name, table) for caption, table in json_tables(shown)]
        section.figures = [str(p.relative_to(root)) for p in sorted(directory.glob("*.png"))]
        if section.tables or section.figures:
            sections.append(section)
    claimed = [s for s in sections if s.claims]
    if claimed:  # every claim of the page in one table at the top
        summary = Table(["experiment", *CLAIM_COLUMNS],
                        [[s.title, *row] for s in claimed for row in claim_table(s.claims).rows])
        sections.insert(0, Section(title="Claims: each paper against reslab", tables=[("every claim on this page", summary)]))
    return sections


def claim_table(claims: list[dict]) -> Table:
    """An experiment's claim table: the claim, the paper's figure or number, reslab's, and
    whether the claim holds here (yes / no / - where one run cannot tell)."""
    return Table(list(CLAIM_COLUMNS), [[format_value(c.get(k)) for k in CLAIM_COLUMNS] for c in claims])


def without_keys(data: Any, keys: set) -> Any:
    """``data`` without the entries named ``keys`` at any depth (the arrays an experiment lists
    under ``"plotted"``: drawn in its figures, too long for a table)."""
    if isinstance(data, dict):
        return {k: without_keys(v, keys) for k, v in data.items() if k not in keys}
    if isinstance(data, list):
        return [without_keys(v, keys) for v in data]
    return data


def to_markdown(title: str, sections: list[Section]) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for figure in section.figures:
            lines += [f"![{Path(figure).stem}]({Path(figure).as_posix()})", ""]
        for caption, table in section.tables:
            lines += [f"**{caption}**", "", row(table.header), row(["---"] * len(table.header))]
            lines += [row(cells) for cells in table.rows] + [""]
    return "\n".join(lines)


def to_html(title: str, sections: list[Section]) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{esc(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
             "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 8px;"
             "text-align:right}</style>", "</head><body>", f"<h1>{esc(title)}</h1>"]
    for section in sections:
        parts.append(f"<h2>{esc(section.title)}</h2>")
        parts += [f"<p><img src='{esc(Path(f).as_posix(), quote=True)}' alt='{esc(Path(f).stem, quote=True)}'></p>"
                  for f in section.figures]
        for caption, table in section.tables:
            parts.append(f"<p><b>{esc(caption)}</b></p><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in table.header) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>" for cells in table.rows]
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(folder: Union[str, Path], fmt: str = "md", title: str = "reslab experiments",
                 path: Union[str, Path, None] = None) -> Path:
    """Write ``report.md`` or ``report.html`` (or ``path``) with every experiment under
    ``folder``; figures are linked relative to the report's folder."""
    if fmt not in REPORT_FORMATS:
        raise ValueError(f"report format must be one of {REPORT_FORMATS}, got {fmt!r}")
    sections = gather(folder)
    if not sections:
        raise FileNotFoundError(f"{folder} holds no experiment tables (JSON with an 'experiment' key) or PNG figures; "
                                "run an experiment with --out pointing there first")
    path = Path(path) if path is not None else report_path(folder, fmt)
    for section in sections:  # gather links figures relative to folder; the report may be elsewhere
        section.figures = [os.path.relpath(Path(folder) / figure, path.parent) for figure in section.figures]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_markdown(title, sections) if fmt == "md" else to_html(title, sections))
    return path


def report_path(folder: Union[str, Path], fmt: str = "md") -> Path:
    """Where :func:`build_report` writes by default: ``folder/report.<fmt>``."""
    return Path(folder) / f"report.{fmt}"
