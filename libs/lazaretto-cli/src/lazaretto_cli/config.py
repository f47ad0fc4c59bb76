"""Where the services are and which token to present: options, else environment, else defaults.

The token is never an option value (it would land in shell history and process lists): it comes from
`--token-file`, `LAZARETTO_CLI_TOKEN_FILE`, `LAZARETTO_CLI_TOKEN` or `LAZARETTO_ADMIN_TOKEN`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .exits import CliError, Exit

# The services' default HTTP ports (each settings class's `http_port`).
DEFAULT_URLS = {
    "policy": "http://127.0.0.1:8400",
    "provisioner": "http://127.0.0.1:8300",
    "cmts-agent": "http://127.0.0.1:8500",
    "portal": "http://127.0.0.1:8080",
    "detector-snort": "http://127.0.0.1:8100",
    "detector-smtp": "http://127.0.0.1:8200",
}
SERVICES = tuple(DEFAULT_URLS)


def url_variable(service: str) -> str:
    """`cmts-agent` -> `LAZARETTO_CMTS_AGENT_URL`."""
    return f"LAZARETTO_{service.upper().replace('-', '_')}_URL"


def service_urls(overrides: dict[str, str | None]) -> dict[str, str]:
    urls = {}
    for service, default in DEFAULT_URLS.items():
        given = overrides.get(service) or os.environ.get(url_variable(service)) or default
        urls[service] = given.rstrip("/")
    return urls


def read_token(token_file: Path | None) -> str:
    path = token_file or _env_path("LAZARETTO_CLI_TOKEN_FILE")
    if path is not None:
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise CliError(f"cannot read the token file {path}: {exc.strerror or exc}", Exit.USAGE) from None
        if not token:
            raise CliError(f"the token file {path} is empty", Exit.USAGE)
        return token
    for name in ("LAZARETTO_CLI_TOKEN", "LAZARETTO_ADMIN_TOKEN"):
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    raise CliError(
        "no token: give --token-file, or set LAZARETTO_CLI_TOKEN_FILE, LAZARETTO_CLI_TOKEN"
        " or LAZARETTO_ADMIN_TOKEN",
        Exit.USAGE,
    )


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value) if value else None


@dataclass
class Settings:
    """What the root command gathered; the token is read only when a command needs one."""

    urls: dict[str, str]
    token_file: Path | None
    timeout: float
    json: bool = False
    _token: str | None = field(default=None, repr=False)

    def token(self) -> str:
        if self._token is None:
            self._token = read_token(self.token_file)
        return self._token
