"""The admin HTTP APIs as the CLI sees them: one bearer token, JSON in and out, and every failure turned
into a one-line message with its exit code (refused, not permitted, unreachable)."""

from __future__ import annotations

from typing import Any

import httpx

from lazaretto_core.tracing import SyncTracingTransport

from .exits import CliError, Exit


class Api:
    def __init__(self, service: str, base_url: str, token: str | None, timeout: float) -> None:
        self.service = service
        self.base_url = base_url
        # Per request, not on the client: a probe of what answers at the URL goes without it.
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=base_url, timeout=timeout, transport=SyncTracingTransport())

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *_: object) -> None:
        self._client.close()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=_present(params))

    def post(self, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        return self.request("POST", path, json=body, params=_present(params))

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.raw(method, path, **kwargs)
        if response.status_code >= 400:
            raise refusal(self.service, response)
        return response.json() if response.content else None

    def raw(self, method: str, path: str, *, authenticated: bool = True, **kwargs: Any) -> httpx.Response:
        """The answer whatever its status; only a transport failure raises (exit code 3). Without
        `authenticated`, the token is not sent."""
        if authenticated and self._auth:
            kwargs["headers"] = {**self._auth, **kwargs.get("headers", {})}
        try:
            return self._client.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise CliError(
                f"{self.service} at {self.base_url} did not answer in time", Exit.UNREACHABLE
            ) from None
        except httpx.TransportError as exc:
            raise CliError(
                f"{self.service} unreachable at {self.base_url}: {exc or type(exc).__name__}",
                Exit.UNREACHABLE,
            ) from None


def refusal(service: str, response: httpx.Response) -> CliError:
    detail = describe_detail(_detail(response))
    status = response.status_code
    if status in (401, 403):
        return CliError(f"{service} refused the token ({status}): {detail}", Exit.NOT_PERMITTED)
    verb = "failed" if status >= 500 else "refused"
    return CliError(f"{service} {verb} ({status}): {detail}", Exit.FAILED)


def describe_detail(detail: Any) -> str:
    """FastAPI's `detail`: a sentence, a list of validation errors, or an object (cmts-agent's 502)."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for error in detail:
            if isinstance(error, dict):
                where = ".".join(str(p) for p in error.get("loc", []) if p != "body")
                parts.append(f"{where}: {error.get('msg', '')}" if where else str(error.get("msg", "")))
            else:
                parts.append(str(error))
        return "; ".join(parts)
    if isinstance(detail, dict):
        text = str(detail.get("detail", ""))
        kind = detail.get("error_class")
        return f"{kind}: {text}" if kind else text or str(detail)
    return str(detail)


def _detail(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason_phrase
    return body.get("detail", body) if isinstance(body, dict) else body


def _present(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}
