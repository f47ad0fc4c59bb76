"""What every command shares: the settings the root command gathered, an API client per service, the
`--json` flag, and turning a `CliError` into its message and exit code."""

from __future__ import annotations

import functools
import getpass
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, ParamSpec, TypeVar

import typer

from .client import Api
from .config import Settings
from .exits import CliError, Exit

P = ParamSpec("P")
R = TypeVar("R")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the service's JSON answer (for scripts).")]


def settings(ctx: typer.Context) -> Settings:
    found = ctx.find_root().obj
    assert isinstance(found, Settings), "the root command sets the settings"
    return found


def api(ctx: typer.Context, service: str, *, token: bool = True, at_least: float = 0.0) -> Api:
    """`at_least`: seconds a slow operation may take whatever `--timeout` says (a modem bounce)."""
    s = settings(ctx)
    return Api(service, s.urls[service], s.token() if token else None, max(s.timeout, at_least))


def want_json(ctx: typer.Context, flag: bool) -> bool:
    return flag or settings(ctx).json


def guarded(command: Callable[P, R]) -> Callable[P, R]:
    """A command's `CliError` becomes one line on stderr and its exit code (not a traceback)."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except CliError as exc:
            typer.echo(f"lazaretto: {exc}", err=True)
            raise typer.Exit(int(exc.code)) from None

    return run


def operator_name() -> str:
    """Who is typing, for the audit's `operator` (the token's own name is recorded by the service)."""
    try:
        return getpass.getuser()[:64] or "operator"
    except (KeyError, OSError):
        return "operator"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """`90`, `90s`, `15m`, `12h`, `3d`, `1w`."""
    found = _DURATION.match(text.lower())
    if not found or float(found.group(1)) <= 0:
        raise CliError(f"not a duration: {text!r} (examples: 3600, 30m, 12h, 3d, 1w)", Exit.USAGE)
    return timedelta(seconds=float(found.group(1)) * _UNIT[found.group(2)])


def short_time(value: Any) -> str | None:
    """An ISO-8601 timestamp from a service, to the second and in UTC, for tables."""
    if not isinstance(value, str):
        return None if value is None else str(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if parsed.tzinfo is None:
        return parsed.strftime("%Y-%m-%d %H:%M:%S")
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
