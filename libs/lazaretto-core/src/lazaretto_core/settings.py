"""Settings every service shares: broker, HTTP listener, logging (a stateful service adds its database).

Each service subclasses `ServiceSettings` with its own fields and defaults; values come from
`LAZARETTO_*` environment variables or, for secrets, from files in `LAZARETTO_SECRETS_DIR`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from .bus_queues import QueueType


def resolve_secret(value: Any) -> Any:
    """A secret nested in a JSON setting (which cannot be a secrets-dir file of its own):
    `env:NAME` -> $NAME, `file:/path` -> the file's text (trailing newline stripped), else as given."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, str):
        return value
    if value.startswith("env:"):
        name = value.removeprefix("env:")
        if name not in os.environ:
            raise ValueError(f"secret refers to environment variable {name}, which is not set")
        return os.environ[name]
    if value.startswith("file:"):
        path = Path(value.removeprefix("file:"))
        try:
            return path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"secret file {path}: {exc.strerror}") from None
    return value


# A nested secret: its value, `env:NAME` or `file:/path`.
NestedSecret = Annotated[SecretStr, BeforeValidator(resolve_secret)]

# The longest span a duration setting may name, 100 years: a date that far back or ahead is still a
# date (Python's stop at year 1 and 9999); beyond it a retention or a window would crash the
# service with an OverflowError instead of being refused by name.
MAX_DAYS = 36_500
MAX_SECONDS = MAX_DAYS * 86_400


class SettingsInvalid(ValueError):
    """Settings that failed validation, told by variable and rule only.

    pydantic's own message quotes every rejected input: a CMTS profile with a write community or an SNMPv3
    key would print the secret to the terminal and the service log. This one never quotes a value.
    """


class ServiceSettings(BaseSettings):
    """Common settings; a subclass sets `service_name` and the default `http_port`."""

    model_config = SettingsConfigDict(env_prefix="LAZARETTO_", extra="ignore", frozen=True)

    service_name: ClassVar[str] = "lazaretto"

    amqp_url: SecretStr = SecretStr("amqp://lazaretto:lazaretto@127.0.0.1:5672/")
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    log_level: str = "INFO"
    # One JSON object per line (`json`), or `text`: a line with the bound fields as key=value.
    log_format: Literal["json", "text"] = "json"
    # Seconds a client has to send a whole HTTP request head (slowloris: cut, not waited for).
    http_head_timeout: float = Field(default=10.0, gt=0)
    # Attempts of a message before it is dead-lettered, and the delays between them (seconds).
    max_attempts: int = 5
    retry_delays: tuple[float, ...] = (0.5, 2.0, 10.0, 30.0)
    # classic, or quorum on a RabbitMQ cluster (bus_queues says why classic is the default).
    bus_queue_type: QueueType = "classic"

    def __init__(self, **values: Any) -> None:
        secrets_dir = os.environ.get("LAZARETTO_SECRETS_DIR")
        if secrets_dir:
            values.setdefault("_secrets_dir", secrets_dir)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems = [
                _describe(e["loc"], e["msg"]) for e in exc.errors(include_input=False, include_url=False)
            ]
            raise SettingsInvalid(f"invalid {self.service_name} settings: " + "; ".join(problems)) from None
        except SourceError as exc:
            # "error parsing value for field X from source Y": names the field, not the value.
            raise SettingsInvalid(f"invalid {self.service_name} settings: {exc}") from None


def _describe(loc: tuple[int | str, ...], msg: str) -> str:
    """`('cmtses', 0, 'v3', 'priv_key')` -> `LAZARETTO_CMTSES (cmtses.0.v3.priv_key): <rule>`."""
    if not loc:
        return msg
    path = ".".join(str(part) for part in loc)
    return f"LAZARETTO_{str(loc[0]).upper()} ({path}): {msg}"
