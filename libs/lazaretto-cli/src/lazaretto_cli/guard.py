"""`lazaretto allow`, `breaker` and `audit`: policy's guard rails (allowlist, circuit breaker, the
hash-chained audit)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer

from . import output
from .common import JsonFlag, api, guarded, short_time, want_json
from .exits import CliError, Exit

allow = typer.Typer(help="The allowlist: addresses, prefixes and MACs never gardened.", no_args_is_help=True)
breaker = typer.Typer(help="The circuit breaker that pauses automatic enforcement.", no_args_is_help=True)
audit = typer.Typer(help="The audit log's hash chains.", no_args_is_help=True)


@allow.command("list")
@guarded
def allow_list(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Every allowlist entry (expired ones say so)."""
    with api(ctx, "policy") as policy:
        entries = policy.get("/v1/allowlist")
    if want_json(ctx, json):
        output.emit_json(entries)
        return
    output.table(
        [{**e, "expires_at": short_time(e.get("expires_at"))} for e in entries],
        [
            ("ID", "entry_id"),
            ("KIND", "kind"),
            ("VALUE", "value"),
            ("EFFECT", "effect"),
            ("OWNER", "owner"),
            ("EXPIRES", "expires_at"),
            ("EXPIRED", "expired"),
            ("SOURCE", "source"),
            ("REASON", "reason"),
        ],
        "the allowlist is empty",
    )


@allow.command("add")
@guarded
def allow_add(
    ctx: typer.Context,
    kind: Annotated[str, typer.Argument(help="address, prefix or mac.")],
    value: Annotated[str, typer.Argument(help="192.0.2.7, 192.0.2.0/24 or a CPE/CM MAC.")],
    owner: Annotated[str, typer.Option(help="Who the entry is for (customer, team).")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why it is never gardened.")],
    effect: Annotated[str, typer.Option(help="exempt (never enforced) or notify_only.")] = "exempt",
    subscriber_class: Annotated[
        str | None, typer.Option("--class", help="Subscriber class, e.g. business.")
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="Until when (ISO 8601 with offset); default: forever.")
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Add an entry (needs the admin role)."""
    body: dict[str, Any] = {"kind": kind, "value": value, "effect": effect, "owner": owner, "reason": reason}
    if subscriber_class is not None:
        body["subscriber_class"] = subscriber_class
    if expires is not None:
        body["expires_at"] = expires
    with api(ctx, "policy") as policy:
        entry = policy.post("/v1/allowlist", body)
    if want_json(ctx, json):
        output.emit_json(entry)
        return
    typer.echo(f"added: {entry['entry_id']} {entry['kind']} {entry['value']} ({entry['effect']})")


@allow.command("remove")
@guarded
def allow_remove(
    ctx: typer.Context,
    entry_id: Annotated[str, typer.Argument(help="The entry's id (see `lazaretto allow list`).")],
    json: JsonFlag = False,
) -> None:
    """Remove an entry (needs the admin role)."""
    try:
        entry_path = str(uuid.UUID(entry_id))
    except ValueError:
        raise CliError(f"not an allowlist entry id: {entry_id!r}", Exit.USAGE) from None
    with api(ctx, "policy") as policy:
        entry = policy.delete(f"/v1/allowlist/{entry_path}")
    if want_json(ctx, json):
        output.emit_json(entry)
        return
    typer.echo(f"removed: {entry['entry_id']} {entry['kind']} {entry['value']}")


@breaker.command("status")
@guarded
def breaker_status(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Whether automatic enforcement is paused, which scopes tripped, how many cases are held.
    Exit code 1 while it is paused, so a script can tell."""
    with api(ctx, "policy") as policy:
        status = policy.get("/v1/breaker")
    if want_json(ctx, json):
        output.emit_json(status)
    else:
        limits = status.get("limits", {})
        output.fields(
            {
                "enforcement": "PAUSED" if status.get("paused") else "running",
                "held_cases": status.get("held_cases"),
                "in_window": status.get("enforcements_in_window"),
                "limits": f"{limits.get('global')} global, {limits.get('per_cmts')} per CMTS,"
                f" {limits.get('per_net')} per network, within {limits.get('window_s')} s",
            }
        )
        if status.get("open_trips"):
            typer.echo("")
            output.table(
                [{**t, "tripped_at": short_time(t.get("tripped_at"))} for t in status["open_trips"]],
                [("SCOPE", "scope"), ("TRIPPED", "tripped_at"), ("COUNT", "count"), ("LIMIT", "limit")],
                "",
            )
    if status.get("paused"):
        raise typer.Exit(int(Exit.FAILED))


@breaker.command("resume")
@guarded
def breaker_resume(
    ctx: typer.Context,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why enforcement may go on.")],
    scope: Annotated[str | None, typer.Option(help="Only this tripped scope (default: every one).")] = None,
    json: JsonFlag = False,
) -> None:
    """Resume automatic enforcement (needs the operator role). Held cases stay held."""
    body: dict[str, Any] = {"reason": reason}
    if scope is not None:
        body["scope"] = scope
    with api(ctx, "policy") as policy:
        answer = policy.post("/v1/breaker/resume", body)
    if want_json(ctx, json):
        output.emit_json(answer)
        return
    typer.echo("resumed: " + ", ".join(answer.get("resumed", [])))


@audit.command("verify")
@guarded
def audit_verify(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Check every audit chain's hashes; exit code 1 names the first broken link."""
    with api(ctx, "policy", at_least=120.0) as policy:
        result = policy.get("/v1/audit/verify")
    if want_json(ctx, json):
        output.emit_json(result)
    elif result.get("ok"):
        typer.echo(f"audit intact: {result.get('chains')} chains, {result.get('rows')} entries")
    else:
        typer.echo(f"audit BROKEN: {result.get('broken')}")
    if not result.get("ok"):
        raise typer.Exit(int(Exit.FAILED))
