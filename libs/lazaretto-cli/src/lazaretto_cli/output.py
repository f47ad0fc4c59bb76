"""How answers are printed: aligned plain-text tables and `key: value` blocks for people, the service's
JSON unchanged with `--json` for scripts. Plain text (no colours, no box drawing) so it pipes to grep."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import typer


def emit_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]], empty: str) -> None:
    """`columns`: (header, key) pairs; a row's missing key prints as `-`."""
    if not rows:
        typer.echo(empty)
        return
    cells = [[cell(row.get(key)) for _, key in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, (h, _) in enumerate(columns)]
    lines = [[h for h, _ in columns], *cells]
    for line in lines:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


def fields(data: Mapping[str, Any], keys: Sequence[str] | None = None) -> None:
    chosen = keys if keys is not None else [k for k in data if not isinstance(data[k], list | dict)]
    width = max((len(k) for k in chosen), default=0)
    for key in chosen:
        typer.echo(f"{key.ljust(width)}  {cell(data.get(key))}")
