"""Least privilege on the bus: one RabbitMQ user per service, and who may send a command.

`ACCOUNTS` is the one table: what each service publishes and consumes (its handler registrations).
From it come each user's permissions (configure only its own queues, write only the exchanges it
publishes on and its queues, read only what it consumes) and topic permissions (the routing keys it
may publish and bind, per exchange), as a RabbitMQ definitions document that the lab, `make run`,
`deploy/bin/create-bus-users` and docker-compose's `bus-users` step all import.

Users are named `<prefix><service>` (`lazaretto-policy`, ...). A consumer verifies the publisher of
a command (`VERIFIED`): the broker refuses a message whose `user_id` is not the connection's user, so
`user_id` names the publishing service, and the consumer dead-letters a command whose `user_id` is
not the user of a service that the table lets publish it. A service whose login does not follow the
naming (one shared user, as in the service tests) trusts only its own login.

`python -m lazaretto_core.bus_users definitions --vhost /` prints the definitions (passwords from
`LAZARETTO_BUS_PASSWORD_<SERVICE>`); `... post --management-url URL` imports them over the
management HTTP API (compose's `bus-users` step).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .contracts import (
    COMMANDS_EXCHANGE,
    EVENTS_EXCHANGE,
    AbuseObserved,
    AbuseObservedBatch,
    AllowlistChanged,
    BreakerResumed,
    BreakerTripped,
    CaseChanged,
    Contract,
    GardenApplied,
    GardenApply,
    GardenFailed,
    GardenRemove,
    GardenRemoved,
    ModemReset,
    ModemResetCompleted,
    ModemResetFailed,
    ReleaseRequested,
)

DEFAULT_PREFIX = "lazaretto-"
EXCHANGES = (EVENTS_EXCHANGE, COMMANDS_EXCHANGE)
# A consumer copies a delivery to its retry and dead-letter queues through the default exchange.
DEFAULT_EXCHANGE = "amq.default"
NOTHING = "^$"


@dataclass(frozen=True)
class Account:
    """One service's user: the contracts it publishes and the ones it consumes."""

    service: str
    publishes: tuple[type[Contract], ...] = ()
    consumes: tuple[type[Contract], ...] = ()
    # One work queue per sensor (`cases.<sensor>`: every detector-smtp sensor must see every case
    # change, so its replicas of one sensor share a queue and sensors do not) instead of one `main`.
    per_sensor: bool = False
    # Consumed contracts with a queue of their own (`lazaretto.<service>.<purpose>`) instead of
    # `main`, by purpose: what must not wait behind a backlog of the others.
    side_queues: tuple[tuple[str, tuple[type[Contract], ...]], ...] = ()

    def lanes(self) -> tuple[tuple[str, tuple[type[Contract], ...]], ...]:
        """(purpose, contracts) of each queue a service that is not per sensor consumes: `main`
        with every consumed contract no side queue takes, then the side queues."""
        aside = {c for _, contracts in self.side_queues for c in contracts}
        return (("main", tuple(c for c in self.consumes if c not in aside)), *self.side_queues)

    def work_queues(self, sensors: Iterable[str]) -> tuple[str, ...]:
        """The queues this service consumes from (none for a pure publisher)."""
        if not self.consumes:
            return ()
        if self.per_sensor:
            return tuple(work_queue(self.service, sensor) for sensor in sensors)
        return tuple(work_queue(self.service, purpose=purpose) for purpose, _ in self.lanes())

    def permissions(self) -> dict[str, str]:
        """configure/write/read regexes on exchange and queue names (`lazaretto.<service>.*` queues)."""
        own_queues = rf"lazaretto\.{re.escape(self.service)}\..*"
        publish_to = sorted({c.exchange for c in self.publishes})
        bind_from = sorted({c.exchange for c in self.consumes})
        if not self.consumes:
            # A pure publisher declares no queue and reads nothing.
            return {"configure": NOTHING, "write": _any_of(publish_to), "read": NOTHING}
        write = [re.escape(name) for name in publish_to] + [own_queues, re.escape(DEFAULT_EXCHANGE)]
        read = [re.escape(name) for name in bind_from] + [own_queues]
        return {
            "configure": f"^{own_queues}$",
            "write": f"^({'|'.join(write)})$",
            "read": f"^({'|'.join(read)})$",
        }

    def topic_permissions(self) -> dict[str, dict[str, str]]:
        """Per exchange, the routing keys it may publish (write) and bind its queues to (read)."""
        return {
            exchange: {
                "write": _any_of(c.routing_key for c in self.publishes if c.exchange == exchange),
                "read": _any_of(c.routing_key for c in self.consumes if c.exchange == exchange),
            }
            for exchange in EXCHANGES
        }


def _any_of(names: Any) -> str:
    escaped = sorted(re.escape(name) for name in names)
    return f"^({'|'.join(escaped)})$" if escaped else NOTHING


# What moves policy's cases on, on a queue of its own: never behind a flood of observations (a
# subscriber waiting on the portal for a release, a garden confirmed by the provisioner).
POLICY_CASE_WORK: tuple[type[Contract], ...] = (
    GardenApplied,
    GardenRemoved,
    GardenFailed,
    ModemResetCompleted,
    ModemResetFailed,
    ReleaseRequested,
)

ACCOUNTS: tuple[Account, ...] = (
    Account(
        "policy",
        publishes=(
            GardenApply,
            GardenRemove,
            ModemReset,
            CaseChanged,
            AllowlistChanged,
            BreakerTripped,
            BreakerResumed,
        ),
        consumes=(AbuseObserved, AbuseObservedBatch, *POLICY_CASE_WORK),
        side_queues=(("cases", POLICY_CASE_WORK),),
    ),
    Account(
        "provisioner",
        publishes=(GardenApplied, GardenRemoved, GardenFailed),
        consumes=(GardenApply, GardenRemove, AllowlistChanged),
    ),
    Account(
        "cmts-agent",
        publishes=(ModemResetCompleted, ModemResetFailed),
        consumes=(ModemReset, AllowlistChanged),
    ),
    Account("portal", publishes=(ReleaseRequested,)),
    Account("detector-snort", publishes=(AbuseObserved, AbuseObservedBatch)),
    Account(
        "detector-smtp",
        publishes=(AbuseObserved, AbuseObservedBatch),
        consumes=(CaseChanged,),
        per_sensor=True,
    ),
)
BY_SERVICE: dict[str, Account] = {account.service: account for account in ACCOUNTS}


def work_queue(service: str, sensor: str | None = None, *, purpose: str = "main") -> str:
    """A queue a consuming service reads: `lazaretto.<service>.main` (or another `purpose`: a side
    queue), or its sensor's own."""
    # Imported here: `bus` imports this module for `BusIdentity`.
    from .bus import queue_name

    return queue_name(service, purpose if sensor is None else f"cases.{sensor}")


def dead_letter_queues(sensors: Iterable[str]) -> tuple[str, ...]:
    """Every consuming service's dead-letter queue, one per sensor for a per-sensor service (`sensors`
    names them: the bus cannot list queues), in `ACCOUNTS` order: what an operator must look at."""
    from .bus import dead_letter_queue_name

    names = tuple(sensors)
    return tuple(dead_letter_queue_name(q) for account in ACCOUNTS for q in account.work_queues(names))


# The messages whose publisher the consumer verifies: commands to an executor, the allowlist the
# executors obey, and the subscriber's release request. Only the services the table lets publish them
# may send them.
VERIFIED: tuple[type[Contract], ...] = (
    GardenApply,
    GardenRemove,
    ModemReset,
    AllowlistChanged,
    ReleaseRequested,
)
# Events for operators' tools (alerting, a console), which no service consumes.
ANNOUNCEMENTS: tuple[type[Contract], ...] = (BreakerTripped, BreakerResumed)


def senders(contract: type[Contract]) -> tuple[str, ...]:
    """The services allowed to publish a verified contract (empty: anyone may, it is not verified)."""
    if contract not in VERIFIED:
        return ()
    return tuple(a.service for a in ACCOUNTS if contract in a.publishes)


@dataclass(frozen=True)
class BusIdentity:
    """This process's broker login, and how the other services' logins are named next to it."""

    login: str
    # `<prefix><service>` names every service's user; None: one user shared by every service.
    prefix: str | None

    @classmethod
    def of(cls, login: str, service: str) -> BusIdentity:
        if service in BY_SERVICE and login.endswith(service):
            return cls(login, login.removesuffix(service))
        return cls(login, None)

    @property
    def shared(self) -> bool:
        return self.prefix is None

    def user_of(self, service: str) -> str:
        return self.login if self.prefix is None else self.prefix + service

    def refusal(self, contract: type[Contract], user_id: str | None) -> str | None:
        """Why a message of `contract` published by `user_id` must not be handled (None: it may)."""
        allowed = senders(contract)
        if not allowed or user_id in {self.user_of(service) for service in allowed}:
            return None
        who = f"user {user_id!r}" if user_id else "no user_id"
        only = " or ".join(f"{s} (user {self.user_of(s)!r})" for s in allowed)
        return f"{contract.routing_key} published by {who}: only {only} may publish it"


# -- the definitions document ----------------------------------------------------------------------


def password_variable(service: str) -> str:
    return "LAZARETTO_BUS_PASSWORD_" + service.upper().replace("-", "_")


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's `rabbit_password_hashing_sha256`: base64(salt ++ sha256(salt ++ password))."""
    salt = salt if salt is not None else secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions(vhost: str, passwords: Mapping[str, str], prefix: str = DEFAULT_PREFIX) -> dict[str, Any]:
    """Users (with `passwords` by service), permissions, topic permissions and the two exchanges in
    `vhost`, as `rabbitmqctl import_definitions` and the management API's POST /api/definitions take
    them. Importing again updates the users in place."""
    missing = [account.service for account in ACCOUNTS if not passwords.get(account.service)]
    if missing:
        raise ValueError(f"no password for {', '.join(missing)}")
    users, permissions, topic_permissions = [], [], []
    for account in ACCOUNTS:
        user = prefix + account.service
        users.append(
            {
                "name": user,
                "password_hash": password_hash(passwords[account.service]),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }
        )
        permissions.append({"user": user, "vhost": vhost, **account.permissions()})
        for exchange, keys in account.topic_permissions().items():
            topic_permissions.append({"user": user, "vhost": vhost, "exchange": exchange, **keys})
    exchanges = [
        {
            "name": name,
            "vhost": vhost,
            "type": "topic",
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }
        for name in EXCHANGES
    ]
    return {
        "users": users,
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "exchanges": exchanges,
    }


def passwords_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    found = {a.service: environ.get(password_variable(a.service), "") for a in ACCOUNTS}
    missing = [password_variable(service) for service, password in found.items() if not password]
    if missing:
        raise ValueError(f"set {', '.join(missing)}")
    return found


def post_definitions(management_url: str, admin: str, admin_password: str, document: dict[str, Any]) -> None:
    """POST the document to the management API, retrying while the broker starts (up to ~2 minutes)."""
    if not management_url.startswith(("http://", "https://")):
        raise SystemExit(f"bus-users: the management URL must be http(s): {management_url}")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        management_url.rstrip("/") + "/api/definitions",
        data=json.dumps(document).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"{admin}:{admin_password}".encode()).decode(),
        },
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10):  # noqa: S310 (scheme checked above)
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                raise SystemExit(f"bus-users: the broker refused the definitions: HTTP {exc.code}") from None
            error: Exception = exc
        except OSError as exc:
            error = exc
        if time.monotonic() > deadline:
            raise SystemExit(f"bus-users: management API unreachable: {error}")
        time.sleep(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m lazaretto_core.bus_users", description=__doc__)
    parser.add_argument("command", choices=("definitions", "post", "table"))
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    parser.add_argument("--management-url", default="http://rabbitmq:15672")
    args = parser.parse_args(argv)
    if args.command == "table":
        for account in ACCOUNTS:
            print(json.dumps({"user": args.prefix + account.service, **account.permissions()}))
            for exchange, keys in account.topic_permissions().items():
                print(json.dumps({"user": args.prefix + account.service, "exchange": exchange, **keys}))
        return
    try:
        document = definitions(args.vhost, passwords_from_env(os.environ), args.prefix)
    except ValueError as exc:
        raise SystemExit(f"bus-users: {exc}") from None
    if args.command == "definitions":
        json.dump(document, sys.stdout, indent=2)
        print()
        return
    admin = os.environ.get("RABBITMQ_ADMIN_USER", "lazaretto")
    admin_password = os.environ.get("RABBITMQ_ADMIN_PASSWORD", "")
    if not admin_password:
        raise SystemExit("bus-users: set RABBITMQ_ADMIN_PASSWORD")
    post_definitions(args.management_url, admin, admin_password, document)
    print(f"bus-users: {len(ACCOUNTS)} users and their permissions imported into vhost {args.vhost}")


if __name__ == "__main__":
    main()
