"""`lazaretto doctor`: is everything an installation needs there? Each service's /readyz names its
dependencies (broker, databases, Kea, BIND, the CMTSes, the packet filter, ...), and the admin APIs
tell the rest (each CMTS's last inventory walk and whether it takes a SET, the token, the circuit
breaker). One line per problem."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Any

import typer

from . import output
from .client import Api, refusal
from .common import JsonFlag, guarded, settings, want_json
from .config import SERVICES, url_variable
from .exits import CliError, Exit

# What each readiness check of a service stands for, in an operator's words.
CHECKS = {
    "broker": "RabbitMQ",
    "database": "its PostgreSQL database",
    "kea_database": "Kea's lease database (PostgreSQL)",
    "dns": "BIND's response-policy zone (over TSIG)",
    "packet_filter": "the packet filter (nftables table)",
    "lease_listener": "the lease notifications from Kea's database",
    "cmts": "the CMTSes (no CMTS answers SNMP)",
    "policy": "policy's portal API",
    "policy_server": "the Postfix policy listener",
    "alert_files": "the IDS alert files",
}


@dataclass(frozen=True)
class Problem:
    service: str
    check: str
    problem: str

    def line(self) -> str:
        return f"{self.service}: {self.problem}"


def readiness(agent: Api) -> tuple[dict[str, Any] | None, list[Problem]]:
    """The service's /readyz (asked without the token) and what it says is wrong; None when what
    answers is not that service (its admin checks, with the token, are then skipped)."""
    try:
        response = agent.raw("GET", "/readyz", authenticated=False)
    except CliError as exc:
        return None, [Problem(agent.service, "reachable", str(exc))]
    try:
        body = response.json()
    except ValueError:
        body = {}
    named = body.get("service") if isinstance(body, dict) else None
    if named != agent.service:
        # A URL pointing at another service's port (or at something else) would pass for it.
        what = repr(named) if isinstance(named, str) else "something that is not a Lazaretto service"
        return None, [
            Problem(
                agent.service,
                "identity",
                f"{agent.base_url} answers as {what}, not as {agent.service}"
                f" (check {url_variable(agent.service)})",
            )
        ]
    if response.status_code == 200:
        return body, []
    checks = body.get("checks") if isinstance(body, dict) else None
    if not isinstance(checks, dict):
        return body, [Problem(agent.service, "readyz", f"/readyz answered {response.status_code}")]
    return body, [
        Problem(agent.service, name, f"{CHECKS.get(name, name)}: {result}")
        for name, result in checks.items()
        if result != "ok"
    ]


def admin_checks(service: str, agent: Api) -> list[Problem]:
    """What only the admin API tells (the token is checked on the way)."""
    try:
        if service == "policy":
            agent.get("/v1/cases", limit=1)  # the token
            answer = agent.raw("GET", "/v1/breaker")
            if answer.status_code == 404:  # a policy from before the circuit breaker
                return []
            if answer.status_code >= 400:
                raise refusal(service, answer)
            breaker = answer.json()
            if breaker.get("paused"):
                scopes = ", ".join(t.get("scope", "?") for t in breaker.get("open_trips", []))
                return [
                    Problem(
                        service,
                        "breaker",
                        f"circuit breaker tripped ({scopes}): automatic enforcement paused,"
                        f" {breaker.get('held_cases')} case(s) held (lazaretto breaker resume)",
                    )
                ]
        elif service == "cmts-agent":
            cmtses = agent.get("/v1/cmtses")
            if not cmtses:
                return [Problem(service, "cmts", "no CMTS is configured")]
            return [
                Problem(
                    service, f"cmts:{c['name']}", f"CMTS {c['name']} ({c['address']}): {c['last_walk_error']}"
                )
                for c in cmtses
                if c.get("last_walk_error")
            ] + write_view_problems(agent)
        elif service == "provisioner":
            # Any admin route checks the token; an address nobody leases answers 404.
            response = agent.raw("GET", "/v1/leases/192.0.2.1")
            if response.status_code in (401, 403):
                raise refusal(service, response)
    except CliError as exc:
        if exc.code == Exit.UNREACHABLE:
            return []  # already said by the readiness check
        return [Problem(service, "admin", str(exc))]
    return []


def write_view_problems(agent: Api) -> list[Problem]:
    """Each CMTS must take a SET with the write credentials (cmts-agent writes a harmless object back
    unchanged): a read-only community passes every read check and fails only at the first reset."""
    answer = agent.raw("POST", "/v1/cmtses/write-check", timeout=60.0)  # a silent agent takes a while
    if answer.status_code == 404:  # a cmts-agent from before the check
        return []
    if answer.status_code >= 400:
        raise refusal(agent.service, answer)
    return [
        Problem(
            agent.service, f"cmts-write:{c['cmts']}", f"CMTS {c['cmts']} ({c['address']}): {c['problem']}"
        )
        for c in answer.json()
        if not c.get("ok")
    ]


def diagnose(ctx: typer.Context, skip: list[str]) -> tuple[dict[str, Any], list[Problem]]:
    s = settings(ctx)
    try:
        token: str | None = s.token()
    except CliError as exc:
        token = None
        problems = [Problem("lazaretto", "token", f"{exc} (admin checks skipped)")]
    else:
        problems = []
    answers: dict[str, Any] = {}
    for service in SERVICES:
        if service in skip:
            continue
        with Api(service, s.urls[service], token, s.timeout) as agent:
            answers[service], found = readiness(agent)
            problems += found
            if token is not None and answers[service] is not None:
                problems += admin_checks(service, agent)
    return answers, problems


@guarded
def doctor(
    ctx: typer.Context,
    skip: Annotated[
        list[str] | None, typer.Option(help="A service this installation does not run (repeatable).")
    ] = None,
    json: JsonFlag = False,
) -> None:
    """Check every service and what it depends on; one line per problem, exit code 1 if there is any."""
    unknown = set(skip or []) - set(SERVICES)
    if unknown:
        raise CliError(
            f"unknown service(s): {', '.join(sorted(unknown))}; known: {', '.join(SERVICES)}", Exit.USAGE
        )
    answers, problems = diagnose(ctx, skip or [])
    if want_json(ctx, json):
        output.emit_json({"ok": not problems, "problems": [asdict(p) for p in problems], "services": answers})
    elif problems:
        for p in problems:
            typer.echo(p.line())
    else:
        typer.echo(f"all well: {', '.join(answers)} ready")
    if problems:
        raise typer.Exit(int(Exit.FAILED))
