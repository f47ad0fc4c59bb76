"""The root `lazaretto` command: where the services are, which token, `--json`; and its command groups."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from lazaretto_core.tracing import configure_tracing, shutdown_tracing

from . import cases, guard, modem, rules
from .config import Settings, service_urls
from .doctor import doctor
from .exits import EXIT_CODES_HELP

HELP = (
    "Operate Lazaretto through the services' admin APIs (the same tokens and roles).\n\n"
    "The token comes from --token-file, LAZARETTO_CLI_TOKEN_FILE, LAZARETTO_CLI_TOKEN or"
    " LAZARETTO_ADMIN_TOKEN; never give it on the command line. Service URLs: the options below,"
    " or LAZARETTO_<SERVICE>_URL (e.g. LAZARETTO_POLICY_URL), else the default ports on 127.0.0.1.\n\n"
    + EXIT_CODES_HELP
)

app = typer.Typer(
    name="lazaretto",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(cases.app, name="cases")
app.add_typer(guard.allow, name="allow")
app.add_typer(guard.breaker, name="breaker")
app.add_typer(modem.app, name="modem")
app.add_typer(guard.audit, name="audit")
app.add_typer(rules.app, name="rules")
app.command("doctor")(doctor)


def _url(service: str) -> object:
    return typer.Option(f"--{service}-url", help=f"{service}'s HTTP address.", show_default=False)


@app.callback()
def root(
    ctx: typer.Context,
    token_file: Annotated[
        Path | None,
        typer.Option(help="A file holding the bearer token (its first line).", show_default=False),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="JSON output for every command.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a service.", min=0.1)] = 10.0,
    policy_url: Annotated[str | None, _url("policy")] = None,
    provisioner_url: Annotated[str | None, _url("provisioner")] = None,
    cmts_agent_url: Annotated[str | None, _url("cmts-agent")] = None,
    portal_url: Annotated[str | None, _url("portal")] = None,
    detector_snort_url: Annotated[str | None, _url("detector-snort")] = None,
    detector_smtp_url: Annotated[str | None, _url("detector-smtp")] = None,
) -> None:
    urls = service_urls(
        {
            "policy": policy_url,
            "provisioner": provisioner_url,
            "cmts-agent": cmts_agent_url,
            "portal": portal_url,
            "detector-snort": detector_snort_url,
            "detector-smtp": detector_smtp_url,
        }
    )
    ctx.obj = Settings(urls=urls, token_file=token_file, timeout=timeout, json=json)


def main() -> None:
    # With OTEL_EXPORTER_OTLP_ENDPOINT set, each API call is a span the services' spans continue.
    configure_tracing("lazaretto-cli", batch=False)
    try:
        app()
    finally:
        shutdown_tracing()
