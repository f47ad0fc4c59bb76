"""`lazaretto allow`, `breaker` and `audit`: policy's guard rails (allowlist, circuit breaker, the
hash-chained audit)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer

from . import output
from .cases import case_columns, case_row
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
    """Resume automatic enforcement (needs the operator role). Held cases stay held: see `breaker held`,
    `breaker enforce` and `breaker drop`."""
    body: dict[str, Any] = {"reason": reason}
    if scope is not None:
        body["scope"] = scope
    with api(ctx, "policy") as policy:
        answer = policy.post("/v1/breaker/resume", body)
    if want_json(ctx, json):
        output.emit_json(answer)
        return
    typer.echo("resumed: " + ", ".join(answer.get("resumed", [])))


@breaker.command("held")
@guarded
def breaker_held(ctx: typer.Context, json: JsonFlag = False) -> None:
    """The cases the breaker holds (opened while enforcement was paused; nothing applied yet)."""
    with api(ctx, "policy") as policy:
        held = policy.get("/v1/cases", state="held", open_only="true", limit=1000)
    if want_json(ctx, json):
        output.emit_json(held)
        return
    output.table([case_row(c) for c in held], case_columns(held), "no held cases")


HeldIds = Annotated[
    list[str] | None,
    typer.Argument(help="The held cases' ids (see `lazaretto breaker held`).", show_default=False),
]
AllHeld = Annotated[bool, typer.Option("--all", help="Every held case (instead of naming them).")]
HeldReason = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded in each case and the audit).")]


@breaker.command("enforce")
@guarded
def breaker_enforce(
    ctx: typer.Context,
    reason: HeldReason,
    case_ids: HeldIds = None,
    all_held: AllHeld = False,
    json: JsonFlag = False,
) -> None:
    """Enforce held cases now, as the rules decided: the garden, then the modem reset (operator role)."""
    _move_held(ctx, "enforce", "enforced", case_ids, all_held, reason, json)


@breaker.command("drop")
@guarded
def breaker_drop(
    ctx: typer.Context,
    reason: HeldReason,
    case_ids: HeldIds = None,
    all_held: AllHeld = False,
    json: JsonFlag = False,
) -> None:
    """Let held cases go: nothing was applied, they close as released (operator role)."""
    _move_held(ctx, "release", "released", case_ids, all_held, reason, json)


def _move_held(
    ctx: typer.Context,
    action: str,
    moved_key: str,
    case_ids: list[str] | None,
    all_held: bool,
    reason: str,
    json: bool,
) -> None:
    if bool(case_ids) == all_held:
        raise CliError("name the held cases, or give --all (not both)", Exit.USAGE)
    body: dict[str, Any] = {
        "reason": reason,
        "case_ids": None if all_held else [_case_id(c) for c in case_ids or []],
    }
    with api(ctx, "policy") as policy:
        answer = policy.post(f"/v1/breaker/held/{action}", body)
    moved, skipped = answer.get(moved_key, []), answer.get("skipped", [])
    if want_json(ctx, json):
        output.emit_json(answer)
    else:
        typer.echo(f"{moved_key}: " + (", ".join(moved) or "none"))
        if skipped:
            typer.echo("not held (skipped): " + ", ".join(skipped))
    if skipped:
        raise typer.Exit(int(Exit.FAILED))


def _case_id(text: str) -> str:
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise CliError(f"not a case id: {text!r}", Exit.USAGE) from None


@audit.command("verify")
@guarded
def audit_verify(ctx: typer.Context, json: JsonFlag = False) -> None:
    """Check every audit chain's hashes; exit code 1 names the first broken link."""
    with api(ctx, "policy", at_least=120.0) as policy:
        result = policy.get("/v1/audit/verify")
    if want_json(ctx, json):
        output.emit_json(result)
    elif result.get("ok"):
        typer.echo(
            f"audit intact: {result.get('chains')} chains, {result.get('rows')} entries"
            f" ({result.get('anchored', 0)} chains cut by the retention)"
        )
    else:
        typer.echo(f"audit BROKEN: {result.get('broken')}")
    if not result.get("ok"):
        raise typer.Exit(int(Exit.FAILED))
