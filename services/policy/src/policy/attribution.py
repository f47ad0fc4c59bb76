"""Who was behind an address at a given time: the provisioner's lease history, then the CMTS CPE tables.

Policy asks synchronously and keeps no copy: the provisioner captures lease history where Kea writes
leases (one transaction), so its answer is the record; cmts-agent answers from the CMTSes' tables.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http.cookiejar import CookieJar
from typing import Any, Literal, TypeVar

import httpx
import pydantic

from lazaretto_core.attribution import (
    CPE_MODEM_PATH,
    DEVICE_LEASES_BATCH_PATH,
    DEVICE_LEASES_PATH,
    HOLDERS_BATCH_PATH,
    HOLDERS_LEASES_BATCH_PATH,
    HOLDERS_PATH,
    IP_MODEM_PATH,
    MAX_BATCH,
    MODEMS_BATCH_PATH,
    CpeModem,
    DeviceLeases,
    DeviceLeasesAnswers,
    DeviceLeasesQuery,
    DeviceLeasesQueryItem,
    HolderLeasesQuery,
    HolderQuery,
    HoldersAnswers,
    HoldersLeasesAnswers,
    HoldersLeasesQuery,
    HoldersQuery,
    LeaseHolders,
    LeaseInterval,
    ModemsAnswers,
    ModemsQuery,
)
from lazaretto_core.contracts import Mac, normalize_mac, utcnow
from lazaretto_core.errors import RetryLater
from lazaretto_core.tracing import TracingTransport

from .peer_stall import PeerStall

log = logging.getLogger(__name__)

Answer = TypeVar("Answer", bound=pydantic.BaseModel)
# How the device was found: a DHCP lease, a CMTS CPE table (static address), nothing (address only),
# or sources that disagree (never guessed away).
Found = Literal["lease", "cmts", "none", "conflict"]


MODEM_CPES_PATH = "/v1/modems/{mac}/cpes"


class ModemCpes(pydantic.BaseModel):
    """cmts-agent's answer: the CPEs behind a modem (`/v1/modems/{mac}/cpes`)."""

    cm_mac: Mac
    cmts: str
    cpes: list[CpeModem]


@dataclass(frozen=True)
class Attribution:
    """The device behind `ip` at `at`; `found == 'conflict'` carries no device, only the evidence."""

    ip: str
    cpe_mac: str | None
    cm_mac: str | None
    at: datetime = field(default_factory=utcnow)
    found: Found = "lease"
    lease: LeaseInterval | None = None
    conflict: str | None = None
    # The CMTS serving the device, when a CMTS table named it (the breaker counts per CMTS).
    cmts: str | None = None

    def audit(self) -> dict[str, Any]:
        """What the observation and the audit trail keep of this attribution."""
        return {
            "ip": self.ip,
            "at": self.at.isoformat(),
            "found": self.found,
            "cpe_mac": self.cpe_mac,
            "cm_mac": self.cm_mac,
            "lease": self.lease.model_dump(mode="json") if self.lease else None,
            "conflict": self.conflict,
            "cmts": self.cmts,
        }


class _NoCookies(CookieJar):
    """The peers set no cookies: without a jar to fill, httpx skips parsing each answer for them
    (a few per cent of policy's CPU under load, one look-up per enforcing observation)."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def add_cookie_header(self, request: Any) -> None:
        return None


class Attributor:
    """Typed client of the provisioner's lease history and cmts-agent's CPE tables. A peer down or an
    answer that does not match the versioned schema is transient (`RetryLater`), never a guess; so is
    a peer that timed out, whose look-ups then fail fast for a while (`peer_stall`)."""

    def __init__(self, provisioner_url: str, cmts_agent_url: str, token: str, timeout: float = 5.0) -> None:
        self._client = httpx.AsyncClient(
            timeout=timeout,
            headers={"Authorization": f"Bearer {token}"},
            transport=TracingTransport(),
            cookies=_NoCookies(),
        )
        self._provisioner = provisioner_url.rstrip("/")
        self._cmts_agent = cmts_agent_url.rstrip("/")
        # One stall state per peer; the lab may serve both look-ups from one URL, then one peer.
        self._stalls: dict[str, PeerStall] = {}
        for name, base in (("provisioner", self._provisioner), ("cmts-agent", self._cmts_agent)):
            self._stalls.setdefault(base, PeerStall(name))

    async def close(self) -> None:
        await self._client.aclose()

    async def holders(self, ip: str, at: datetime) -> LeaseHolders:
        if ipaddress.ip_address(ip).version != 4:
            # The lease history is DHCPv4's: an IPv6 address has no holder there (CMTS tables may know it).
            return LeaseHolders(ip=ip, at=at, holders=[])
        url = self._provisioner + HOLDERS_PATH.format(ip=ip)
        return await self._require(url, LeaseHolders, {"at": at.isoformat()})

    async def device_leases(self, mac: str, since: datetime) -> DeviceLeases:
        url = self._provisioner + DEVICE_LEASES_PATH.format(mac=normalize_mac(mac))
        return await self._require(url, DeviceLeases, {"since": since.isoformat()})

    async def modem_of_ip(self, ip: str) -> CpeModem | None:
        return await self._get(self._cmts_agent + IP_MODEM_PATH.format(ip=ip), CpeModem)

    async def modem_of_cpe(self, mac: str) -> CpeModem | None:
        return await self._get(self._cmts_agent + CPE_MODEM_PATH.format(mac=normalize_mac(mac)), CpeModem)

    async def cpes_of_modem(self, cm_mac: str) -> ModemCpes | None:
        """The devices a modem's CMTS lists behind it (a household), None when no CMTS lists it."""
        return await self._get(
            self._cmts_agent + MODEM_CPES_PATH.format(mac=normalize_mac(cm_mac)), ModemCpes
        )

    async def attribute(self, ip: str, at: datetime | None = None) -> Attribution:
        """Who held `ip` at `at` (default now): the lease covering that moment; without one, the CMTS
        CPE table (static addresses); two holders, or a live lease the CMTS table contradicts, is a
        conflict."""
        at = at or utcnow()
        holders = await self.holders(ip, at)
        lease = _sole_lease(holders)
        modem = await self.modem_of_cpe(lease.mac) if lease is not None else None
        listed = await self.modem_of_ip(ip) if _needs_cmts_listing(holders) else None
        return _attribution(ip, at, holders, modem, listed)

    async def attribute_many(self, asked: Sequence[tuple[str, datetime]]) -> list[Attribution]:
        """`attribute` for many (address, time) pairs, in their order, with one request per peer and
        step (the lease history, then the CMTS tables) instead of up to three each. Peers without
        the batch look-ups (older) are asked one by one. IPv6 addresses are asked one by one, as
        before (the lease history is DHCPv4's)."""
        if not asked:
            return []
        if len(asked) > MAX_BATCH:
            head = await self.attribute_many(asked[:MAX_BATCH])
            return head + await self.attribute_many(asked[MAX_BATCH:])
        return await self._attribute_many(asked, None)

    async def attribute_devices_many(
        self, asked: Sequence[tuple[str, datetime, datetime]]
    ) -> tuple[list[Attribution], list[DeviceLeases | None] | RetryLater]:
        """`attribute_many` for (address, time, since) triples, then `device_leases_many` since
        `since` for each device found (None for a conflict or an address nobody is known to hold).
        One round trip when the peers serve it (`_attribute_devices_at_once`), else two
        (`_attribute_devices_in_steps`). The attribution's failure is raised (RetryLater); the device
        look-up's is returned instead of the leases: the attributions stand and the caller holds
        only the devices."""
        if len(asked) > MAX_BATCH:
            head, head_leases = await self.attribute_devices_many(asked[:MAX_BATCH])
            tail, tail_leases = await self.attribute_devices_many(asked[MAX_BATCH:])
            if isinstance(head_leases, RetryLater) or isinstance(tail_leases, RetryLater):
                return head + tail, head_leases if isinstance(head_leases, RetryLater) else tail_leases
            return head + tail, head_leases + tail_leases
        at_once = await self._attribute_devices_at_once(asked)
        if at_once is not None:
            return at_once
        return await self._attribute_devices_in_steps(asked)

    async def _attribute_devices_at_once(
        self, asked: Sequence[tuple[str, datetime, datetime]]
    ) -> tuple[list[Attribution], list[DeviceLeases | None] | RetryLater] | None:
        """`attribute_devices_many` (at most MAX_BATCH, IPv4) in one round trip when the lease is live:
        the provisioner answers the holders with their device's leases, and cmts-agent what its
        tables list at each address, asked at the same time. A live lease whose address the CMTS
        lists for the same device needs nothing more (the table's row is the device's); only an
        ended lease (its device's modem, by MAC) and a static address (its device's leases) take a
        second. None when a peer does not serve these look-ups (older than policy) or the batch
        holds an IPv6 address: then the steps."""
        if not asked or any(ipaddress.ip_address(ip).version != 4 for ip, _, _ in asked):
            return None
        history_query = HoldersLeasesQuery(
            queries=[HolderLeasesQuery(ip=ip, at=at, since=since) for ip, at, since in asked]
        )
        history, listing = await _both(
            self._post(self._provisioner + HOLDERS_LEASES_BATCH_PATH, history_query, HoldersLeasesAnswers),
            self._post(
                self._cmts_agent + MODEMS_BATCH_PATH,
                ModemsQuery(ips=[ip for ip, _, _ in asked]),
                ModemsAnswers,
            ),
        )
        if (
            history is None
            or listing is None
            or len(history.answers) != len(asked)
            or (len(listing.by_cpe_mac), len(listing.by_ip)) != (0, len(asked))
        ):
            return None
        # What the first round leaves open: the modem of an ended lease's device (or of a live one
        # the table lists elsewhere), and the leases of a static address's device.
        modem_wanted: dict[int, str] = {}
        static_devices: list[tuple[int, str, datetime]] = []
        for i, (held, listed) in enumerate(zip(history.answers, listing.by_ip, strict=True)):
            lease = _sole_lease(held.holders)
            if lease is not None and (listed is None or listed.cpe_mac != lease.mac):
                modem_wanted[i] = lease.mac
            elif not held.holders.macs and listed is not None:
                static_devices.append((i, listed.cpe_mac, asked[i][2]))
        leases: list[DeviceLeases | None] = [held.device for held in history.answers]
        modems, failed = await _both(
            self._modems_of_cpes(list(modem_wanted.values())), self._fill_leases(leases, static_devices)
        )
        modem_of = dict(zip(modem_wanted, modems, strict=True))
        attributions: list[Attribution] = []
        for i, ((ip, at, _), held, listed) in enumerate(
            zip(asked, history.answers, listing.by_ip, strict=True)
        ):
            holders = held.holders
            modem = modem_of[i] if i in modem_wanted else (listed if _sole_lease(holders) else None)
            attributions.append(
                _attribution(ip, at, holders, modem, listed if _needs_cmts_listing(holders) else None)
            )
        if failed is not None:
            return attributions, failed
        # A conflict follows no device; a device whose leases did not come with the answers (a
        # provisioner that left them out) is asked now.
        missing: list[tuple[int, str, datetime]] = []
        for i, found in enumerate(attributions):
            held_leases = leases[i]
            if found.found == "conflict" or found.cpe_mac is None:
                leases[i] = None
            elif held_leases is None or held_leases.mac != found.cpe_mac:
                missing.append((i, found.cpe_mac, asked[i][2]))
        return attributions, await self._fill_leases(leases, missing) or leases

    async def _fill_leases(
        self, leases: list[DeviceLeases | None], wanted: Sequence[tuple[int, str, datetime]]
    ) -> RetryLater | None:
        """Put in `leases` each wanted device's leases (position, MAC, since), asked in one request;
        the look-up's failure instead (the attributions stand without them)."""
        try:
            found = await self.device_leases_many([(mac, since) for _, mac, since in wanted])
        except RetryLater as exc:
            return exc
        for (i, _, _), held in zip(wanted, found, strict=True):
            leases[i] = held
        return None

    async def _modems_of_cpes(self, macs: list[str]) -> list[CpeModem | None]:
        """The CMTS tables' modem of each CPE MAC, in their order (one by one from an older agent)."""
        if not macs:
            return []
        found = await self._post(
            self._cmts_agent + MODEMS_BATCH_PATH, ModemsQuery(cpe_macs=macs), ModemsAnswers
        )
        if found is None or len(found.by_cpe_mac) != len(macs):
            return list(await asyncio.gather(*(self.modem_of_cpe(mac) for mac in macs)))
        return found.by_cpe_mac

    async def _attribute_devices_in_steps(
        self, asked: Sequence[tuple[str, datetime, datetime]]
    ) -> tuple[list[Attribution], list[DeviceLeases | None] | RetryLater]:
        """`attribute_devices_many` (at most MAX_BATCH) from the lease history, then the CMTS tables;
        the leases of a device a lease names are asked concurrently with the CMTS tables."""
        # The MAC each sole lease names (by position) and the one look-up of their leases.
        prefetch: dict[int, str] = {}
        tasks: list[asyncio.Task[list[DeviceLeases]]] = []

        def prefetch_leases(macs: dict[int, str]) -> None:
            if macs:
                prefetch.update(macs)
                tasks.append(
                    asyncio.ensure_future(
                        self.device_leases_many([(mac, asked[i][2]) for i, mac in macs.items()])
                    )
                )

        try:
            attributions = await self._attribute_many([(ip, at) for ip, at, _ in asked], prefetch_leases)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        # Its answer (or failure) is taken even when no device is left to use it.
        fetched = await asyncio.gather(*tasks, return_exceptions=True)
        devices = [i for i, a in enumerate(attributions) if a.found != "conflict" and a.cpe_mac is not None]
        leases: list[DeviceLeases | None] = [None] * len(asked)
        prefetched = {i for i in devices if i in prefetch and prefetch[i] == attributions[i].cpe_mac}
        if prefetched:
            answer = fetched[0]
            if isinstance(answer, RetryLater):
                return attributions, answer
            if isinstance(answer, BaseException):
                raise answer
            for i, held in zip(prefetch, answer, strict=True):
                if i in prefetched:
                    leases[i] = held
        rest = [(i, attributions[i].cpe_mac or "", asked[i][2]) for i in devices if i not in prefetched]
        return attributions, await self._fill_leases(leases, rest) or leases

    async def _attribute_many(
        self,
        asked: Sequence[tuple[str, datetime]],
        on_leases: Callable[[dict[int, str]], None] | None,
    ) -> list[Attribution]:
        """`attribute_many` for at most MAX_BATCH; `on_leases` learns the MAC each sole lease names
        (by position in `asked`) as soon as the lease history answers."""
        if not asked:
            return []
        v4 = [i for i, (ip, _) in enumerate(asked) if ipaddress.ip_address(ip).version == 4]
        answers: list[Attribution | None] = [None] * len(asked)
        query = HoldersQuery(queries=[HolderQuery(ip=asked[i][0], at=asked[i][1]) for i in v4])
        found = await self._post(self._provisioner + HOLDERS_BATCH_PATH, query, HoldersAnswers)
        if found is None or len(found.answers) != len(v4):
            return list(await asyncio.gather(*(self.attribute(ip, at) for ip, at in asked)))
        holders = dict(zip(v4, found.answers, strict=True))
        lease_macs = {i: lease.mac for i, h in holders.items() if (lease := _sole_lease(h)) is not None}
        if on_leases is not None:
            on_leases(lease_macs)
        by_lease = list(lease_macs)
        by_ip = [i for i, h in holders.items() if _needs_cmts_listing(h)]
        modems = await self._post(
            self._cmts_agent + MODEMS_BATCH_PATH,
            ModemsQuery(
                cpe_macs=list(lease_macs.values()),
                ips=[asked[i][0] for i in by_ip],
            ),
            ModemsAnswers,
        )
        if modems is None or (len(modems.by_cpe_mac), len(modems.by_ip)) != (len(by_lease), len(by_ip)):
            return list(await asyncio.gather(*(self.attribute(ip, at) for ip, at in asked)))
        modem_of = dict(zip(by_lease, modems.by_cpe_mac, strict=True))
        listed_at = dict(zip(by_ip, modems.by_ip, strict=True))
        for i, h in holders.items():
            ip, at = asked[i]
            answers[i] = _attribution(ip, at, h, modem_of.get(i), listed_at.get(i))
        for i, (ip, at) in enumerate(asked):
            if answers[i] is None:
                answers[i] = await self.attribute(ip, at)
        return [a for a in answers if a is not None]

    async def device_leases_many(self, asked: Sequence[tuple[str, datetime]]) -> list[DeviceLeases]:
        """`device_leases` for many (MAC, since) pairs in one request, in their order."""
        if not asked:
            return []
        if len(asked) > MAX_BATCH:
            head = await self.device_leases_many(asked[:MAX_BATCH])
            return head + await self.device_leases_many(asked[MAX_BATCH:])
        query = DeviceLeasesQuery(queries=[DeviceLeasesQueryItem(mac=m, since=t) for m, t in asked])
        found = await self._post(self._provisioner + DEVICE_LEASES_BATCH_PATH, query, DeviceLeasesAnswers)
        if found is None or len(found.answers) != len(asked):
            return list(await asyncio.gather(*(self.device_leases(m, t) for m, t in asked)))
        return found.answers

    async def _post(self, url: str, query: pydantic.BaseModel, answer: type[Answer]) -> Answer | None:
        """A batch look-up; None when the peer does not serve it (404 or 405: older than policy)."""
        try:
            with self._stall_of(url).look_up(httpx.TimeoutException):
                response = await self._client.post(
                    url, content=query.model_dump_json(), headers={"Content-Type": "application/json"}
                )
        except httpx.HTTPError as exc:
            raise RetryLater(f"attribution peer unreachable: {url}: {type(exc).__name__}") from exc
        if response.status_code in (404, 405):
            return None
        return self._answer(url, response, answer)

    async def _require(self, url: str, answer: type[Answer], params: dict[str, str]) -> Answer:
        # The lease history answers 200 even when nobody held the address: a 404 is a provisioner
        # without the look-up, and treating it as "nobody" would misattribute, so it is an error.
        found = await self._get(url, answer, params)
        if found is None:
            raise RetryLater(f"{url} is not served: is the provisioner older than policy?")
        return found

    async def _get(
        self, url: str, answer: type[Answer], params: dict[str, str] | None = None
    ) -> Answer | None:
        try:
            with self._stall_of(url).look_up(httpx.TimeoutException):
                response = await self._client.get(url, params=params)
        except httpx.HTTPError as exc:
            raise RetryLater(f"attribution peer unreachable: {url}: {type(exc).__name__}") from exc
        if response.status_code == 404:
            return None
        return self._answer(url, response, answer)

    def _stall_of(self, url: str) -> PeerStall:
        base = max((b for b in self._stalls if url.startswith(b + "/")), key=len)
        return self._stalls[base]

    @staticmethod
    def _answer(url: str, response: httpx.Response, answer: type[Answer]) -> Answer:
        if response.status_code != 200:
            raise RetryLater(f"attribution peer answered {response.status_code} for {url}")
        try:
            # A newer peer may add fields (same schema_version): what policy knows is still checked.
            return answer.model_validate_json(response.content, extra="ignore")
        except pydantic.ValidationError as exc:
            # A peer speaking another version: an operator must upgrade one side; retrying shows it.
            raise RetryLater(
                f"{url} answered no valid {answer.__name__}: {exc.error_count()} error(s)"
            ) from exc


First = TypeVar("First")
Second = TypeVar("Second")


async def _both(first: Awaitable[First], second: Awaitable[Second]) -> tuple[First, Second]:
    """Both awaited concurrently, each to its end; the first failure is raised once both ended."""
    one, two = await asyncio.gather(first, second, return_exceptions=True)
    if isinstance(one, BaseException):
        raise one
    if isinstance(two, BaseException):
        raise two
    return one, two


def _sole_lease(holders: LeaseHolders) -> LeaseInterval | None:
    """The lease naming the one device that held the address (None: nobody, or a conflict)."""
    return holders.holders[-1] if len(holders.macs) == 1 else None


def _needs_cmts_listing(holders: LeaseHolders) -> bool:
    """Whether the CMTS table's listing of the address matters: nobody held it (a static address), or
    the lease still runs (the table is about now, and may contradict it)."""
    lease = _sole_lease(holders)
    return (not holders.macs) or (lease is not None and lease.ended == "active")


def _attribution(
    ip: str, at: datetime, holders: LeaseHolders, modem: CpeModem | None, listed: CpeModem | None
) -> Attribution:
    """The attribution from the answers: `modem` is the CMTS's modem of the lease's MAC, `listed` the
    CPE the CMTS lists at `ip` (asked only when `_needs_cmts_listing`)."""
    if len(holders.macs) > 1:
        macs = ", ".join(sorted(holders.macs))
        return Attribution(ip, None, None, at, "conflict", conflict=f"lease history: {macs} all held {ip}")
    lease = _sole_lease(holders)
    if lease is not None:
        if lease.ended == "active" and listed is not None and listed.cpe_mac != lease.mac:
            return Attribution(
                ip,
                None,
                None,
                at,
                "conflict",
                lease,
                f"lease says {lease.mac} holds {ip}, CMTS {listed.cmts} lists {listed.cpe_mac}",
            )
        return Attribution(
            ip,
            lease.mac,
            modem.cm_mac if modem else None,
            at,
            "lease",
            lease,
            cmts=modem.cmts if modem else None,
        )
    if listed is None:
        log.info("no lease and no CMTS lists %s at %s: attributing by address only", ip, at)
        return Attribution(ip, None, None, at, "none")
    return Attribution(ip, listed.cpe_mac, listed.cm_mac, at, "cmts", cmts=listed.cmts)
