"""`lazaretto cases`: list, show, quarantine, release and extend cases (policy's admin API)."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer

from . import output
from .common import JsonFlag, api, guarded, operator_name, parse_duration, short_time, want_json
from .exits import CliError, Exit

app = typer.Typer(help="Cases: list, show, quarantine by hand, release, extend.", no_args_is_help=True)

CASE_COLUMNS = [
    ("CASE", "case_id"),
    ("REF", "reference"),
    ("STATE", "state"),
    ("CATEGORY", "category"),
    ("SCOPE", "scope"),
    ("IP", "ip"),
    ("DEVICE", "device"),
    ("OPENED", "opened"),
    ("BY", "opened_by"),
]
Reason = Annotated[str, typer.Option("--reason", "-r", help="Why (recorded in the case and the audit).")]
Operator = Annotated[
    str | None,
    typer.Option(help="Your name for the record (default: your login); the token is recorded too."),
]


def case_row(case: dict[str, Any]) -> dict[str, Any]:
    return {
        **case,
        "device": f"{case.get('key_kind', '?')} {case.get('device_key', '?')}",
        "opened": short_time(case.get("opened_at")),
    }


def case_columns(cases: list[dict[str, Any]]) -> list[tuple[str, str]]:
    # The human reference (LZ-XXXX-XX) is shown once policy gives one.
    return [c for c in CASE_COLUMNS if c[1] != "reference" or any("reference" in k for k in cases)]


@app.command("list")
@guarded
def list_cases(
    ctx: typer.Context,
    state: Annotated[
        str | None, typer.Option(help="Only cases in this state (quarantined, held, ...).")
    ] = None,
    ip: Annotated[str | None, typer.Option(help="Cases of the device that held this address.")] = None,
    mac: Annotated[str | None, typer.Option(help="Cases of this CPE or cable-modem MAC.")] = None,
    open_only: Annotated[bool, typer.Option("--open", help="Only open cases.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 100,
    json: JsonFlag = False,
) -> None:
    """Cases, newest first."""
    with api(ctx, "policy") as policy:
        cases = policy.get(
            "/v1/cases", state=state, ip=ip, mac=mac, open_only="true" if open_only else None, limit=limit
        )
    if want_json(ctx, json):
        output.emit_json(cases)
        return
    output.table([case_row(c) for c in cases], case_columns(cases), "no cases")


@app.command("show")
@guarded
def show(
    ctx: typer.Context, case_id: Annotated[str, typer.Argument(help="The case's id.")], json: JsonFlag = False
) -> None:
    """One case with its history, observations and addresses."""
    with api(ctx, "policy") as policy:
        case = policy.get(f"/v1/cases/{_case_path(case_id)}")
    if want_json(ctx, json):
        output.emit_json(case)
        return
    print_case(case)
    typer.echo("\nhistory:")
    output.table(
        [
            {**h, "at": short_time(h.get("at")), "detail": _brief(h.get("detail"))}
            for h in case.get("history", [])
        ],
        [("AT", "at"), ("ACTOR", "actor"), ("FROM", "from_state"), ("TO", "to_state"), ("DETAIL", "detail")],
        "  (none)",
    )
    typer.echo("\naddresses:")
    output.table(
        [
            {
                **a,
                "valid_from": short_time(a.get("valid_from")),
                "valid_until": short_time(a.get("valid_until")),
            }
            for a in case.get("addresses", [])
        ],
        [("IP", "ip"), ("FROM", "valid_from"), ("UNTIL", "valid_until"), ("SOURCE", "source")],
        "  (none)",
    )
    typer.echo("\nobservations:")
    output.table(
        [{**o, "last_seen": short_time(o.get("last_seen"))} for o in case.get("observations", [])],
        [
            ("DETECTOR", "detector"),
            ("SENSOR", "sensor"),
            ("CATEGORY", "category"),
            ("SEVERITY", "severity"),
            ("COUNT", "count"),
            ("LAST SEEN", "last_seen"),
            ("SIGNATURES", "signatures"),
        ],
        "  (none)",
    )


def print_case(case: dict[str, Any]) -> None:
    keys = [
        "case_id",
        "reference",
        "state",
        "category",
        "scope",
        "reason",
        "ip",
        "cpe_mac",
        "cm_mac",
        "key_kind",
        "device_key",
        "opened_by",
        "opened_at",
        "updated_at",
        "closed_at",
        "step",
        "self_releases",
    ]
    times = {k: short_time(case.get(k)) for k in ("opened_at", "updated_at", "closed_at")}
    output.fields({**case, **times}, [k for k in keys if k in case])


@app.command("quarantine")
@guarded
def quarantine(
    ctx: typer.Context,
    reason: Reason,
    ip: Annotated[str | None, typer.Option(help="The device holding this address (now, or --at).")] = None,
    at: Annotated[
        str | None, typer.Option(help="With --ip: the device that held it then (ISO 8601, with offset).")
    ] = None,
    mac: Annotated[str | None, typer.Option(help="A device by its CPE MAC.")] = None,
    cm_mac: Annotated[
        str | None, typer.Option("--cm-mac", help="A household by its cable modem (scope modem).")
    ] = None,
    category: Annotated[str, typer.Option(help="botnet, scanning, spam, ... or other.")] = "other",
    scope: Annotated[str, typer.Option(help="cpe (the device) or modem (the household).")] = "cpe",
    operator: Operator = None,
    json: JsonFlag = False,
) -> None:
    """Open a case by hand (needs the operator role). Refused for allow-listed addresses."""
    if not (ip or mac or cm_mac):
        raise CliError("name the subject: --ip (optionally --at), --mac or --cm-mac", Exit.USAGE)
    body: dict[str, Any] = {
        "reason": reason,
        "category": category,
        "scope": scope,
        "operator": operator or operator_name(),
    }
    # Only the keys given: older policies know just {ip, reason, category, scope, operator}.
    body |= {k: v for k, v in {"ip": ip, "at": at, "mac": mac, "cm_mac": cm_mac}.items() if v is not None}
    with api(ctx, "policy") as policy:
        case = policy.post("/v1/quarantine", body)
    if want_json(ctx, json):
        output.emit_json(case)
        return
    typer.echo(f"quarantined: case {case['case_id']} ({case.get('state')})")
    print_case(case)


@app.command("release")
@guarded
def release(
    ctx: typer.Context,
    case_id: Annotated[str, typer.Argument(help="The case's id.")],
    reason: Reason,
    operator: Operator = None,
    json: JsonFlag = False,
) -> None:
    """Release a case by hand (needs the operator role): garden removed, modem bounced."""
    with api(ctx, "policy") as policy:
        case = policy.post(
            f"/v1/cases/{_case_path(case_id)}/release",
            {"reason": reason, "operator": operator or operator_name()},
        )
    if want_json(ctx, json):
        output.emit_json(case)
        return
    typer.echo(f"released: case {case['case_id']} ({case.get('state')})")


@app.command("extend")
@guarded
def extend(
    ctx: typer.Context,
    case_id: Annotated[str, typer.Argument(help="The case's id.")],
    by: Annotated[str, typer.Option("--by", help="How much longer: 3600, 30m, 12h, 3d, 1w.")],
    reason: Reason,
    operator: Operator = None,
    json: JsonFlag = False,
) -> None:
    """Keep a case longer (needs the operator role): its automatic expiry and the subscriber's earliest
    self-release move later by --by."""
    seconds = parse_duration(by).total_seconds()
    with api(ctx, "policy") as policy:
        answer = policy.post(
            f"/v1/cases/{_case_path(case_id)}/extend",
            {"by_seconds": seconds, "reason": reason, "operator": operator or operator_name()},
        )
    if want_json(ctx, json):
        output.emit_json(answer)
        return
    terms = answer.get("terms") or {}
    typer.echo(f"extended: case {answer['case_id']} ({answer.get('state')})")
    output.fields(
        {
            "expires_at": short_time(terms.get("expires_at")) or "never (until released)",
            "self_release": terms.get("self_release"),
            "not_before": short_time(terms.get("self_release_not_before")),
        }
    )


def _brief(detail: object, width: int = 100) -> str:
    """A history entry's detail on one table line (`cases show --json` has all of it)."""
    text = output.cell(detail)
    return text if len(text) <= width else text[: width - 3] + "..."


def _case_path(case_id: str) -> str:
    try:
        return str(uuid.UUID(case_id))
    except ValueError:
        raise CliError(f"not a case id: {case_id!r}", Exit.USAGE) from None
