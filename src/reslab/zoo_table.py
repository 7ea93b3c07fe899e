"""The model zoo as a table of rows (name, family, paper, input size, params, MACs, paper's params)."""

from __future__ import annotations

from typing import Optional

import torch

from reslab.complexity import count_macs, count_parameters
from reslab.registry import list_models, model_info


def zoo_rows(pattern: str = "*", family: Optional[str] = None) -> list[dict]:
    """One row per registered model; models are built on the meta device (no memory, no init)."""
    rows = []
    for name in list_models(pattern, family):
        info = model_info(name)
        with torch.device("meta"):
            model = info.builder()
        rows.append({
            "name": name, "family": info.family, "paper": info.paper, "input_size": info.input_size,
            "params": count_parameters(model), "macs": count_macs(model, info.input_size, device="meta"),
            "published_params": info.published_params,
        })
    return rows


def _human(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def format_rows(rows: list[dict], markdown: bool = False) -> str:
    header = ["model", "family", "paper", "input", "params", "MACs", "paper's params"]
    body = [[r["name"], r["family"], r["paper"], f"{r['input_size']}x{r['input_size']}",
             f"{r['params']:,}", _human(r["macs"]), _human(r["published_params"])] for r in rows]
    return format_table(header, body, markdown)


def format_table(header: list[str], body: list[list[str]], markdown: bool = False) -> str:
    """Rows as a markdown table, or as plain text in aligned columns."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [header, *body])
