"""The case state machine of DESIGN.md: which state and which next step follow each event. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from lazaretto_core.contracts import RELEASABLE_STATES, CaseState


class Step(StrEnum):
    """A command in flight for a case; each maps to one executor."""

    GARDEN_APPLY = "garden_apply"
    RESET_IN = "modem_reset_in"
    GARDEN_REMOVE = "garden_remove"
    RESET_OUT = "modem_reset_out"


@dataclass(frozen=True)
class Outcome:
    state: CaseState
    next_step: Step | None
    closed: bool = False


class NotReleasable(Exception):
    """A release was asked for a case that is not (yet, or any more) in quarantine."""


def opened() -> Outcome:
    return Outcome("garden_requested", Step.GARDEN_APPLY)


def held() -> Outcome:
    """The circuit breaker paused enforcement: the case is recorded, nothing is applied."""
    return Outcome("held", None)


def held_released() -> Outcome:
    """An operator let a held case go: nothing was applied, so nothing is removed."""
    return Outcome("released", None, closed=True)


def let_go() -> Outcome:
    """Remove a garden whatever state the case is in (its device turned out to be allow-listed)."""
    return Outcome("release_requested", Step.GARDEN_REMOVE)


def step_succeeded(step: Step, has_modem: bool) -> Outcome:
    if step is Step.GARDEN_APPLY:
        return Outcome("modem_reset_requested", Step.RESET_IN) if has_modem else Outcome("quarantined", None)
    if step is Step.RESET_IN:
        return Outcome("quarantined", None)
    if step is Step.GARDEN_REMOVE:
        if has_modem:
            return Outcome("release_reset_requested", Step.RESET_OUT)
        return Outcome("released", None, closed=True)
    return Outcome("released", None, closed=True)


# Failures no retry can change: the executor refused on purpose (its own copy of the allowlist names
# the device, or the address is outside its subscriber ranges), so the case goes to an operator at once.
FINAL_ERRORS = {
    "allowlisted": "the device is allow-listed",
    "outside_subscriber_ranges": "the address is outside its subscriber ranges",
    # No device and no address: sending the same command again cannot garden anything.
    "nothing_to_garden": "the command named no device and no address to garden",
}


def step_failed(step: Step, attempts: int, max_attempts: int, error_class: str | None = None) -> Outcome:
    """Retry the same step with backoff until `max_attempts`, then hand the case to an operator; a
    final error (`FINAL_ERRORS`) hands it over at once."""
    if error_class in FINAL_ERRORS:
        return Outcome("needs_operator", None)
    if attempts < max_attempts:
        return Outcome("failed_retrying", step)
    return Outcome("needs_operator", None)


def release_requested(state: str) -> Outcome:
    # The releasable states are defined beside the contract, where the portal reads them too.
    if state not in RELEASABLE_STATES:
        raise NotReleasable(f"a case in state {state!r} cannot be released now")
    return Outcome("release_requested", Step.GARDEN_REMOVE)


def retry_delay(attempts: int, base: float = 2.0, cap: float = 300.0) -> float:
    """Seconds before retry number `attempts` (1-based): exponential, capped."""
    return float(min(cap, base * 2 ** max(0, attempts - 1)))
