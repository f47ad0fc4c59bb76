"""The lab's broker users: one per service (`lazaretto_core.bus_users`), made for one run.

Users are global on a broker while permissions are per vhost, and several labs share the broker: so
each run gets its own user names (`lazaretto-<tag>-<service>`) and fresh passwords, permissions in
the run's vhost only, and the users are deleted when the run ends. One `rabbitmqctl
import_definitions` (the definitions on stdin: no password on disk) creates them all.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Callable, Sequence
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from lazaretto_core.bus_users import ACCOUNTS, definitions

RABBITMQCTL = "/usr/sbin/rabbitmqctl"
# Runs `rabbitmqctl <args>` (with `stdin`) against the broker of the admin URL.
Ctl = Callable[[Sequence[str], str | None], None]


class LabBusUsers:
    """`create()` the users for the vhost of `admin_url`; `urls[service]` is each one's AMQP URL."""

    def __init__(self, admin_url: str, ctl: Ctl | None = None) -> None:
        # The shared broker's CLI by default; a private broker (`rabbit_nodes`) brings its own.
        self._ctl = ctl or _shared_ctl
        parts = urlsplit(admin_url)
        self._admin = parts
        self.vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
        self.prefix = f"lazaretto-{secrets.token_hex(4)}-"
        self.passwords = {account.service: secrets.token_urlsafe(18) for account in ACCOUNTS}
        self.urls: dict[str, str] = {}

    def user(self, service: str) -> str:
        return self.prefix + service

    def create(self) -> LabBusUsers:
        document = definitions(self.vhost, self.passwords, self.prefix)
        self._ctl(["import_definitions"], json.dumps(document))
        host = self._admin.hostname or "127.0.0.1"
        netloc_host = f"{host}:{self._admin.port}" if self._admin.port else host
        for service, password in self.passwords.items():
            netloc = f"{quote(self.user(service), safe='')}:{quote(password, safe='')}@{netloc_host}"
            self.urls[service] = urlunsplit(
                (self._admin.scheme, netloc, self._admin.path or "/", self._admin.query, "")
            )
        return self

    def delete(self) -> None:
        """Delete this run's users (one CLI call: each costs an Erlang VM start)."""
        if not self.urls:
            return
        names = ", ".join(f'<<"{self.user(service)}">>' for service in self.passwords)
        erlang = f'[rabbit_auth_backend_internal:delete_user(U, <<"lazaretto-lab">>) || U <- [{names}]], ok.'
        self._ctl(["eval", erlang], None)
        self.urls = {}


def _shared_ctl(args: Sequence[str], stdin: str | None) -> None:
    result = subprocess.run(
        [RABBITMQCTL, "-q", *args], input=stdin, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
