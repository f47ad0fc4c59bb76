"""The CMTSes this agent manages: one SNMP client per profile, with its concurrency and rate limits.

A pysnmp engine per CMTS (pysnmp's v3 key cache is per engine and keyed by user name and engine
id: one engine per CMTS keeps two CMTSes with the same v3 user name but different keys apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable

from prometheus_client import Gauge

from .settings import CmtsProfile, V3User
from .snmp import CmtsSnmp, CmtsTarget, SnmpCredentials, V2cCredentials, V3Credentials

IN_FLIGHT = Gauge("lazaretto_cmts_resets_in_flight", "Resets (SET + verification) in flight", ["cmts"])


def v3_credentials(user: V3User) -> V3Credentials:
    return V3Credentials(
        user.user,
        user.auth_key.get_secret_value(),
        user.priv_key.get_secret_value(),
        auth_protocol=user.auth_protocol,
        priv_protocol=user.priv_protocol,
    )


def cmts_target(profile: CmtsProfile) -> CmtsTarget:
    write: SnmpCredentials
    read: SnmpCredentials
    if profile.snmp_version == "3":
        assert profile.v3 is not None  # the profile validator guarantees it
        write = v3_credentials(profile.v3)
        read = v3_credentials(profile.v3_read) if profile.v3_read else write
    else:
        assert profile.write_community is not None
        write = V2cCredentials(profile.write_community.get_secret_value())
        # No read community: the write community can read too.
        community = profile.read_community or profile.write_community
        read = V2cCredentials(community.get_secret_value())
    return CmtsTarget(
        host=profile.host,
        port=profile.port,
        read=read,
        write=write,
        timeout=profile.timeout,
        retries=profile.retries,
    )


def modem_target(profile: CmtsProfile, cm_ip: str) -> CmtsTarget:
    """The modem itself (docsDevResetNow), at its management address from the CMTS."""
    creds: SnmpCredentials
    if profile.cm_v3 is not None:
        creds = v3_credentials(profile.cm_v3)
    else:
        assert profile.cm_community is not None
        creds = V2cCredentials(profile.cm_community.get_secret_value())
    # One try: a modem that takes the reset may reboot before it answers (the CMTS tells the rest).
    return CmtsTarget(
        host=cm_ip, port=profile.cm_port, read=creds, write=creds, timeout=profile.timeout, retries=0
    )


class RateLimiter:
    """At most `rate` acquisitions per second, spaced evenly (no bursts: CMTSes dislike them)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0

    async def acquire(self) -> None:
        now = time.monotonic()
        at = max(now, self._next)
        self._next = at + self.interval
        if at > now:
            await asyncio.sleep(at - now)


class CmtsClient:
    """One CMTS at run time: its profile, SNMP client, reset slots and SET pacing."""

    def __init__(self, profile: CmtsProfile) -> None:
        self.profile = profile
        self.name = profile.name
        self.snmp = CmtsSnmp(cmts_target(profile))
        self.rate = RateLimiter(profile.resets_per_second)
        self._slots = asyncio.Semaphore(profile.max_in_flight)
        self.in_flight = 0
        self.peak_in_flight = 0

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """One reset in flight on this CMTS (waits while max_in_flight are)."""
        async with self._slots:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            IN_FLIGHT.labels(self.name).set(self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1
                IN_FLIGHT.labels(self.name).set(self.in_flight)

    async def close(self) -> None:
        await self.snmp.close()


class Fleet:
    """Every configured CMTS by name."""

    def __init__(self, profiles: Iterable[CmtsProfile]) -> None:
        self.clients = {p.name: CmtsClient(p) for p in profiles}

    def __getitem__(self, name: str) -> CmtsClient:
        return self.clients[name]

    def all(self) -> list[CmtsClient]:
        return list(self.clients.values())

    def names(self) -> list[str]:
        return list(self.clients)

    async def ping(self) -> None:
        """Readiness: at least one CMTS answers a read (one CMTS down must not take the agent out of
        service for all the others); raises the first failure when none does."""
        results = await asyncio.gather(
            *(c.snmp.ping() for c in self.clients.values()), return_exceptions=True
        )
        if all(isinstance(r, BaseException) for r in results):
            failure = results[0]
            assert isinstance(failure, BaseException)
            raise failure

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
