"""`lazaretto rules check FILE`: validate a rule file before deploying it, with policy's own loader (the
same parsing and validation policy applies at start and on reload)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from policy.rulebook import RulesError, load

from . import output
from .common import JsonFlag, guarded, want_json
from .exits import Exit

app = typer.Typer(help="Rule files: check one before deploying it.", no_args_is_help=True)


@app.command("check")
@guarded
def check(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(help="The rule file (YAML), as LAZARETTO_RULES_FILE would name it.")
    ],
    json: JsonFlag = False,
) -> None:
    """Load the file as policy would; exit code 1 with every problem if it would be refused."""
    try:
        loaded = load(file)
    except RulesError as exc:
        if want_json(ctx, json):
            output.emit_json({"ok": False, "file": str(file), "error": str(exc)})
        else:
            typer.echo(f"invalid: {exc}", err=True)
        raise typer.Exit(int(Exit.FAILED)) from None
    rules = loaded.rules.by_priority()
    if want_json(ctx, json):
        output.emit_json(
            {"ok": True, "file": str(file), "version": loaded.version, "rules": [r.name for r in rules]}
        )
        return
    typer.echo(f"ok: {file} is rule set {loaded.version} with {len(rules)} rule(s)")
    output.table(
        [
            {
                "name": r.name,
                "categories": r.categories,
                "action": r.action,
                "scope": r.scope,
                "priority": r.priority,
                "window": r.window,
            }
            for r in rules
        ],
        [
            ("RULE", "name"),
            ("CATEGORIES", "categories"),
            ("ACTION", "action"),
            ("SCOPE", "scope"),
            ("PRIORITY", "priority"),
            ("WINDOW S", "window"),
        ],
        "",
    )
