"""`lazaretto modem`: status, CPEs and a bounce through cmts-agent's admin API."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from . import output
from .common import JsonFlag, api, guarded, want_json
from .exits import Exit

app = typer.Typer(help="Cable modems through their CMTS: status, CPEs, bounce.", no_args_is_help=True)
Mac = Annotated[str, typer.Argument(help="The cable modem's MAC (any common spelling).")]
# cmts-agent verifies a reset until the modem is back or its verification gives up (minutes at most).
BOUNCE_SECONDS = 600.0


@app.command("status")
@guarded
def status(ctx: typer.Context, mac: Mac, json: JsonFlag = False) -> None:
    """Which CMTS serves the modem and its state there now (asked live). Exit code 1 if offline."""
    with api(ctx, "cmts-agent") as agent:
        found = agent.get(f"/v1/modems/{mac}")
    if want_json(ctx, json):
        output.emit_json(found)
    else:
        output.fields(found, ["cm_mac", "cmts", "online", "state", "status_value", "status_table", "ip"])
    if not found.get("online"):
        raise typer.Exit(int(Exit.FAILED))


@app.command("cpes")
@guarded
def cpes(
    ctx: typer.Context,
    mac: Mac,
    refresh: Annotated[bool, typer.Option(help="Walk the modem's CMTS first.")] = False,
    json: JsonFlag = False,
) -> None:
    """The devices the modem's CMTS lists behind it."""
    with api(ctx, "cmts-agent") as agent:
        found = agent.get(f"/v1/modems/{mac}/cpes", refresh="true" if refresh else None)
    if want_json(ctx, json):
        output.emit_json(found)
        return
    typer.echo(f"modem {found['cm_mac']} on {found['cmts']}:")
    output.table(found.get("cpes", []), [("CPE MAC", "cpe_mac"), ("IP", "ip")], "no CPEs listed")


@app.command("bounce")
@guarded
def bounce(
    ctx: typer.Context,
    mac: Mac,
    wait: Annotated[
        bool, typer.Option(help="Wait until it is back online (--no-wait: only start it).")
    ] = True,
    json: JsonFlag = False,
) -> None:
    """Reset the modem through its CMTS and, by default, wait until it is back.
    Exit code 1 if it did not come back."""
    with api(ctx, "cmts-agent", at_least=BOUNCE_SECONDS if wait else 0.0) as agent:
        result: dict[str, Any] = agent.post(f"/v1/modems/{mac}/reset", wait="true" if wait else "false")
    if want_json(ctx, json):
        output.emit_json(result)
    elif not wait:
        typer.echo(f"reset started: {result['cm_mac']} on {result['cmts']}")
    else:
        typer.echo(f"{result['cm_mac']} on {result['cmts']}: {result['outcome']} ({result['elapsed']} s)")
        output.table(
            result.get("attempts", []),
            [("METHOD", "method"), ("OUTCOME", "outcome"), ("DETAIL", "detail")],
            "",
        )
    if wait and not result.get("back_online"):
        raise typer.Exit(int(Exit.FAILED))
