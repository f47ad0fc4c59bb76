"""The console's HTML: Jinja2 templates packaged with policy (autoescaped), times in UTC, and the
headers every page carries (no script, no frame, nothing cached, nothing fetched from elsewhere)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from fastapi.responses import HTMLResponse

STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none';"
        " base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def when(moment: datetime | str | None) -> str:
    """A time as operators compare them across systems: UTC, to the second."""
    if moment is None:
        return ""
    if isinstance(moment, str):
        try:
            moment = datetime.fromisoformat(moment)
        except ValueError:
            return str(moment)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment.utcoffset() is not None else str(moment)


def facts(detail: dict[str, Any]) -> str:
    """A step's or an audit entry's detail as `key: value` pairs on one line."""
    shown = []
    for key, value in detail.items():
        if value is None or value == "" or value == [] or value == {}:
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(", ", ": "))
        shown.append(f"{key}: {text}")
    return "; ".join(shown)


class Renderer:
    def __init__(self) -> None:
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("policy", "console/templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self._env.filters["when"] = when
        self._env.filters["facts"] = facts

    def page(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self._env.get_template(template).render(**context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
