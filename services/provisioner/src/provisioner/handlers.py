"""What the provisioner does with garden commands: apply or remove, then report the result."""

from __future__ import annotations

import logging
from typing import Literal

import asyncpg

from lazaretto_core import allowlist as matcher
from lazaretto_core.allowlist_copy import AllowlistCopy
from lazaretto_core.bus import Bus, MessageContext
from lazaretto_core.contracts import (
    DETAIL_MAX,
    AllowlistChanged,
    GardenApplied,
    GardenApply,
    GardenFailed,
    GardenMode,
    GardenRemove,
    GardenRemoved,
    outside_text,
)
from lazaretto_core.errors import RetryLater
from lazaretto_core.logs import bind
from lazaretto_core.ranges import SubscriberRanges

from .dhcpd import DhcpdError
from .garden import Garden, GardenPending, NothingToGarden
from .household import Household, HouseholdError
from .kea import KeaError
from .nft import NftError
from .rpz import RpzError

log = logging.getLogger(__name__)


class ProvisionerHandlers:
    def __init__(
        self,
        garden: Garden,
        bus: Bus,
        allowlist: AllowlistCopy,
        household: Household | None = None,
        subscriber_ranges: SubscriberRanges | None = None,
    ) -> None:
        self.garden = garden
        self.bus = bus
        # The executor's own copy of policy's allowlist (allowlist.changed.v1), checked before acting.
        self.allowlist = allowlist
        self.household = household
        # Only subscribers are ever gardened (None or empty: not checked).
        self.subscriber_ranges = subscriber_ranges

    async def on_allowlist_changed(self, snapshot: AllowlistChanged, ctx: MessageContext) -> None:
        await self.allowlist.store(snapshot)

    async def on_garden_apply(self, command: GardenApply, ctx: MessageContext) -> None:
        _bind_case(command)
        outside = self._outside_subscriber_ranges(command)
        if outside:
            detail = f"address {', '.join(outside)} is outside the subscriber ranges"
            await self._refuse(command, "outside_subscriber_ranges", detail)
            return
        # Checked again here, whoever sent the command: an allow-listed device is never gardened.
        version, entry = await self.allowlist.check(
            ips=(command.cpe_ip, *command.case_ips), macs=(command.cpe_mac, command.cm_mac)
        )
        if version is None:
            # Fail closed: without any allowlist the provisioner cannot tell an allow-listed device
            # from another, so it gardens nobody until policy's snapshot (republished every minute)
            # arrives; the command is held (retried), then reported for policy to retry later.
            await self._no_allowlist_yet(command, ctx)
            return
        if entry is not None:
            await self._refuse(command, "allowlisted", matcher.describe(entry))
            return
        try:
            if command.scope == "modem" and self.household is not None:
                changes = await self.household.apply(command)
            else:
                changes = await self.garden.apply(command)
        except (
            GardenPending,
            NothingToGarden,
            RpzError,
            KeaError,
            NftError,
            HouseholdError,
            asyncpg.PostgresError,
            OSError,
        ) as exc:
            await self._failed(command, ctx, "apply", exc)
            return
        log.info("garden applied for case %s (%s scope)", command.case_id, command.scope)
        await self.bus.publish(
            GardenApplied(
                case_id=command.case_id, step_id=command.step_id, changes=changes, mode=self._mode(command)
            ),
            correlation_id=str(command.case_id),
        )

    def _mode(self, command: GardenApply | GardenRemove) -> GardenMode:
        """The garden a command came to (policy resets the modem only for a full one): a spam-only
        case (a household's too: its modem keeps its normal config) is a mail block on the packet
        filter; without a packet-filter layer it was gardened fully."""
        return "smtp_block" if command.mode == "smtp_block" and self.garden.blocks_mail else "full"

    def _outside_subscriber_ranges(self, command: GardenApply) -> list[str]:
        if not self.subscriber_ranges:
            return []
        addresses = dict.fromkeys(str(ip) for ip in (command.cpe_ip, *command.case_ips))
        return [ip for ip in addresses if not self.subscriber_ranges.contains(ip)]

    async def _refuse(self, command: GardenApply, error_class: str, why: str) -> None:
        """A command this executor will not carry out, whoever sent it: policy is told, and why."""
        detail = f"refused to garden case {command.case_id}: {why}"
        log.warning("%s", detail)
        await self.bus.publish(
            GardenFailed(
                case_id=command.case_id,
                step_id=command.step_id,
                operation="apply",
                error_class=error_class,
                detail=outside_text(detail, DETAIL_MAX),
            ),
            correlation_id=str(command.case_id),
        )

    async def on_garden_remove(self, command: GardenRemove, ctx: MessageContext) -> None:
        _bind_case(command)
        mode = self._mode(command)
        try:
            if command.scope == "modem" and self.household is not None:
                changes = await self.household.remove(command)
            else:
                mode = await self.garden.gardened_as(command)
                changes = await self.garden.remove(command, mode)
        except (
            GardenPending,
            RpzError,
            KeaError,
            NftError,
            HouseholdError,
            asyncpg.PostgresError,
            OSError,
        ) as exc:
            await self._failed(command, ctx, "remove", exc)
            return
        log.info("garden removed for case %s (%s scope)", command.case_id, command.scope)
        await self.bus.publish(
            GardenRemoved(case_id=command.case_id, step_id=command.step_id, changes=changes, mode=mode),
            correlation_id=str(command.case_id),
        )

    async def _no_allowlist_yet(self, command: GardenApply, ctx: MessageContext) -> None:
        detail = f"case {command.case_id} not gardened: no allowlist received from policy yet"
        if not ctx.last_attempt:
            raise RetryLater(detail)
        log.error("%s (out of attempts: policy retries later)", detail)
        await self.bus.publish(
            GardenFailed(
                case_id=command.case_id,
                step_id=command.step_id,
                operation="apply",
                error_class="allowlist_unknown",
                detail=outside_text(detail, DETAIL_MAX),
            ),
            correlation_id=str(command.case_id),
        )

    async def _failed(
        self,
        command: GardenApply | GardenRemove,
        ctx: MessageContext,
        operation: Literal["apply", "remove"],
        exc: Exception,
    ) -> None:
        transient = getattr(exc, "transient", True)
        if transient and not ctx.last_attempt:
            raise RetryLater(f"garden {operation} for case {command.case_id}: {exc}") from exc
        # Permanent, or out of attempts: tell policy, which decides (retry later or an operator).
        log.error("garden %s for case %s failed: %s", operation, command.case_id, exc)
        await self.bus.publish(
            GardenFailed(
                case_id=command.case_id,
                step_id=command.step_id,
                operation=operation,
                error_class=_error_class(exc),
                detail=outside_text(str(exc), DETAIL_MAX),
            ),
            correlation_id=str(command.case_id),
        )


def _bind_case(command: GardenApply | GardenRemove) -> None:
    """The case and its device (the modem for a household, else the PC, else its static address) on
    every log line of this command."""
    device = command.cm_mac if command.scope == "modem" else command.cpe_mac
    bind(case_id=command.case_id, device=device or command.cpe_ip)


def _error_class(exc: Exception) -> str:
    if isinstance(exc, GardenPending):
        # One class per layer that did not confirm (the others did), e.g. "dns_refused+dhcp_unavailable".
        return "+".join(_error_class(e) for _, e in sorted(exc.outcome.failed.items()))
    if isinstance(exc, DhcpdError):
        return "dhcp_" + type(exc).__name__.removeprefix("Dhcpd").lower()
    if isinstance(exc, RpzError):
        return "dns_" + type(exc).__name__.removeprefix("Rpz").lower()
    if isinstance(exc, KeaError | asyncpg.PostgresError):
        return "dhcp_" + type(exc).__name__.lower()
    if isinstance(exc, NothingToGarden):
        return "nothing_to_garden"
    if isinstance(exc, HouseholdError):
        return "cmts_lookup_error"
    if isinstance(exc, NftError):
        return "filter_error"
    return "io_error"
