"""The portal's read of policy: the open case of the device holding the visitor's address now, if any;
how a release stands; and the visitor's appeal."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, TypeVar

import httpx
import pydantic
from pydantic import BaseModel, ConfigDict

from lazaretto_core.tracing import TracingTransport

ModelT = TypeVar("ModelT", bound=BaseModel)


class PolicyUnavailable(Exception):
    """Policy could not be asked; the page says so instead of guessing."""


class AppealRefused(Exception):
    """Policy did not take the appeal: `too_many` (the device's allowance today) or `no_case`."""

    def __init__(self, why: Literal["too_many", "no_case"]) -> None:
        super().__init__(why)
        self.why = why


class SelfRelease(BaseModel):
    """Whether the visitor may release now, later (after `not_before`) or only through the helpdesk."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    when: Literal["now", "later", "never"]
    not_before: datetime | None = None
    reason: str = ""


class Seen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    first_seen: datetime
    last_seen: datetime
    count: int


class VisitorCase(BaseModel):
    """Policy's answer. The portal never decides identity or self-release itself: policy says who the
    visitor is (`visitor_mac`), what the case is keyed by, and whether self-release is possible now."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    case_id: str
    category: str
    reason: str
    state: str
    opened_at: str
    self_release_allowed: bool
    key_kind: str = "address"
    device_key: str = ""
    visitor_mac: str | None = None
    self_releases_left: int | None = None
    reference: str = ""
    seen: Seen | None = None
    self_release: SelfRelease | None = None
    # Whether the release restarts the modem (not for a spam-only mail block; from an older policy: yes).
    modem_restarts: bool = True

    @property
    def release(self) -> SelfRelease:
        """Policy's `self_release` answer; from an older policy, derived from `self_release_allowed`."""
        if self.self_release is not None:
            return self.self_release
        return SelfRelease(when="now" if self.self_release_allowed else "never")

    @property
    def household(self) -> bool:
        """The whole household (the modem) is in the garden, not just this device."""
        return self.key_kind == "cm_mac"


class ReleaseProgress(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    case_id: str
    reference: str = ""
    state: str
    closed: bool
    accepted: bool
    refusal: dict[str, str] | None = None
    modem_restarts: bool = True
    # Policy keeps the request until it can check the device (older policies never say so).
    queued: bool = False
    # The step in flight (`garden_remove`, `modem_reset_out`...): where a release being retried is.
    step: str | None = None


class PolicyClient:
    def __init__(self, base_url: str, token: str, timeout: float = 3.0) -> None:
        self._base = base_url.rstrip("/")
        self._client = httpx.AsyncClient(
            timeout=timeout, headers={"Authorization": f"Bearer {token}"}, transport=TracingTransport()
        )

    async def _call(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            return await self._client.request(method, f"{self._base}{path}", **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise PolicyUnavailable(type(exc).__name__) from exc

    async def case_for(self, ip: str) -> VisitorCase | None:
        response = await self._call("GET", f"/v1/portal/cases/by-ip/{ip}")
        if response.status_code == 404:
            return None
        return _parse(VisitorCase, response)

    async def progress(self, ip: str, case_id: str, since: datetime | None) -> ReleaseProgress | None:
        """How the visitor's release stands; None if the case is not the visitor's device's."""
        params = {"since": since.isoformat()} if since is not None else {}
        response = await self._call("GET", f"/v1/portal/cases/by-ip/{ip}/progress/{case_id}", params=params)
        if response.status_code in (404, 422):
            return None
        return _parse(ReleaseProgress, response)

    async def appeal(self, ip: str, case_id: str, message: str, language: str) -> str:
        """File the visitor's appeal; returns the case reference policy recorded it under."""
        body = {"case_id": case_id, "message": message, "language": language}
        response = await self._call("POST", f"/v1/portal/cases/by-ip/{ip}/appeal", json=body)
        if response.status_code == 429:
            raise AppealRefused("too_many")
        if response.status_code in (404, 422):
            raise AppealRefused("no_case")
        if response.status_code != 201:
            raise PolicyUnavailable(f"policy answered {response.status_code}")
        return str(response.json().get("reference", ""))

    async def ping(self) -> None:
        response = await self._client.get(f"{self._base}/healthz")
        response.raise_for_status()

    async def close(self) -> None:
        await self._client.aclose()


def _parse(model: type[ModelT], response: httpx.Response) -> ModelT:
    if response.status_code != 200:
        raise PolicyUnavailable(f"policy answered {response.status_code}")
    try:
        return model.model_validate_json(response.content)
    except pydantic.ValidationError as exc:
        raise PolicyUnavailable(
            f"policy answered no valid {model.__name__}: {exc.error_count()} error(s)"
        ) from exc
