"""The portal's read of policy: the visitor's own open case, if any."""

from __future__ import annotations

from dataclasses import dataclass

import httpx


class PolicyUnavailable(Exception):
    """Policy could not be asked; the page says so instead of guessing."""


@dataclass(frozen=True)
class VisitorCase:
    case_id: str
    category: str
    reason: str
    state: str
    opened_at: str
    self_release_allowed: bool


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
        return VisitorCase(**response.json())

    async def ping(self) -> None:
        response = await self._client.get(f"{self._base}/healthz")
        response.raise_for_status()

    async def close(self) -> None:
        await self._client.aclose()
