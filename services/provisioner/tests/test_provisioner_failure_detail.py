"""A garden failure is reported whatever the outside system's error text holds: a NUL or another control
character (which the bus contracts refuse) is escaped, and an endless text is cut to the field's bound."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any, cast

import pytest

from lazaretto_core.allowlist_copy import AllowlistCopy
from lazaretto_core.bus import Bus, MessageContext
from lazaretto_core.contracts import (
    DETAIL_MAX,
    AllowlistEntry,
    Contract,
    GardenApply,
    GardenFailed,
    GardenRemove,
)
from provisioner.garden import Garden
from provisioner.handlers import ProvisionerHandlers
from provisioner.kea import KeaError
from provisioner.nft import NftError


class FailingGarden:
    """A garden whose every layer call fails with `error`."""

    blocks_mail = False

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def apply(self, command: GardenApply) -> list[str]:
        raise self.error

    async def gardened_as(self, command: GardenRemove) -> str:
        return "full"

    async def remove(self, command: GardenRemove, mode: object = None) -> list[str]:
        raise self.error


class KnownAllowlist:
    """A copy of policy's allowlist that holds a snapshot, with nobody on it."""

    async def check(
        self, *, ips: Iterable[str | None], macs: Iterable[str | None]
    ) -> tuple[int | None, AllowlistEntry | None]:
        return 1, None


class RecordingBus:
    def __init__(self) -> None:
        self.published: list[tuple[Contract, dict[str, Any]]] = []

    async def publish(self, message: Contract, **options: Any) -> None:
        self.published.append((message, options))


def handlers(error: Exception) -> tuple[ProvisionerHandlers, RecordingBus]:
    bus = RecordingBus()
    return (
        ProvisionerHandlers(
            cast(Garden, FailingGarden(error)), cast(Bus, bus), cast(AllowlistCopy, KnownAllowlist())
        ),
        bus,
    )


def last_attempt() -> MessageContext:
    return MessageContext(str(uuid.uuid4()), "garden.apply.v1", None, 5, "policy", None, last_attempt=True)


@pytest.mark.parametrize(
    ("operation", "error", "error_class"),
    [
        ("apply", NftError("nft: Error: syntax error\x00, unexpected junk\n  add element"), "filter_error"),
        ("remove", KeaError("kea host row \x00\x1b[2J for 02:00:00:00:00:01"), "dhcp_keaerror"),
        ("apply", OSError(5, "dhcpd omapi: " + "\x00" * 3000), "io_error"),
    ],
)
async def test_an_error_text_holding_a_nul_still_reports_a_readable_garden_failed(
    operation: str, error: Exception, error_class: str
) -> None:
    # Given the garden's outside system fails with a text holding a NUL (and other control characters)
    service, bus = handlers(error)
    assert "\x00" in str(error)
    # When the command's last attempt fails
    if operation == "apply":
        await service.on_garden_apply(GardenApply.model_validate(GardenApply.example), last_attempt())
    else:
        await service.on_garden_remove(GardenRemove.model_validate(GardenRemove.example), last_attempt())
    # Then a GardenFailed is published, valid as a consumer reads it, with the text readable
    [(message, _)] = bus.published
    assert isinstance(message, GardenFailed)
    assert GardenFailed.read(message.model_dump_json()) == message
    assert (message.operation, message.error_class) == (operation, error_class)
    assert message.detail.isprintable()
    assert "\\x00" in message.detail
    assert len(message.detail) <= DETAIL_MAX
