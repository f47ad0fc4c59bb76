"""The portal's read of policy: the open case of the device holding the visitor's address now, if any."""

from __future__ import annotations

import httpx
import pydantic
from pydantic import BaseModel, ConfigDict


class PolicyUnavailable(Exception):
    """Policy could not be asked; the page says so instead of guessing."""


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


class PolicyClient:
    def __init__(self, base_url: str, token: str, timeout: float = 3.0) -> None:
        self._base = base_url.rstrip("/")
        self._client = httpx.AsyncClient(timeout=timeout, headers={"Authorization": f"Bearer {token}"})

    async def case_for(self, ip: str) -> VisitorCase | None:
        try:
            response = await self._client.get(f"{self._base}/v1/portal/cases/by-ip/{ip}")
        except httpx.HTTPError as exc:
            raise PolicyUnavailable(type(exc).__name__) from exc
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise PolicyUnavailable(f"policy answered {response.status_code}")
        try:
            return VisitorCase.model_validate_json(response.content)
        except pydantic.ValidationError as exc:
            raise PolicyUnavailable(f"policy answered no valid case: {exc.error_count()} error(s)") from exc

    async def ping(self) -> None:
        response = await self._client.get(f"{self._base}/healthz")
        response.raise_for_status()

    async def close(self) -> None:
        await self._client.aclose()
