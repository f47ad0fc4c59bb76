"""HTTP `POST /v1/alerts`: one alert or a batch, as JSON, for scripts ("Snort could trigger a script
or HTTP POST"). Each alert is an EVE event or a Snort 3 `alert_json` object; bearer-token protected.

Body: an alert object, a list of them, or `{"alerts": [...]}`. An alert may carry `"sensor"` and an
`"id"` (string or integer): with an id, a retried POST gives the same observation id, so a client
that retries after a timeout does not report twice. Answer 202 with the observation ids published
at once (repeats are folded), and the index and reason of each alert that was not usable.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Final

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from lazaretto_core.http import bearer_token_guard, max_body

from .alerts import Alert
from .engine import SourceEngine
from .parsers import ParseError, alert_from_object, kept

MAX_BODY: Final = 10 * 1024 * 1024
MAX_ALERTS: Final = 10_000
MAX_SEEN: Final = 100_000


def add_ingest_route(app: FastAPI, engine: SourceEngine, token: SecretStr) -> None:
    guard = bearer_token_guard(token)
    source = engine.source
    pipeline = engine.pipeline
    seen: OrderedDict[str, None] = OrderedDict()  # recent alert ids: a retried POST is not counted twice

    @app.post("/v1/alerts", status_code=202, dependencies=[Depends(guard)])
    @max_body(MAX_BODY)  # enforced, after the token, by lazaretto_core.http.RequestGate
    async def post_alerts(request: Request) -> JSONResponse:
        body = await request.body()
        counts: dict[str, int] = {}
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            pipeline.bad(source, ParseError("invalid_json"), counts)
            await engine.feed_alerts([], counts)
            return _error(400, "body is not JSON")
        if isinstance(document, dict) and isinstance(document.get("alerts"), list):
            items: list[Any] = document["alerts"]
        elif isinstance(document, list):
            items = document
        else:
            items = [document]
        if len(items) > MAX_ALERTS:
            return _error(413, f"more than {MAX_ALERTS} alerts")
        alerts: list[tuple[Alert, str | None]] = []
        rejected: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            sensor = item.get("sensor") if isinstance(item, dict) else None
            try:
                alert = alert_from_object(
                    item, sensor=kept(sensor, "sensor") if isinstance(sensor, str) and sensor else "http"
                )
            except ParseError as exc:
                pipeline.bad(source, exc, counts)
                rejected.append({"index": index, "reason": exc.reason})
                continue
            if alert is None:
                counts["not_alert"] = counts.get("not_alert", 0) + 1
                rejected.append({"index": index, "reason": "not_alert"})
                continue
            ident = item.get("id")
            token = f"id:{ident}" if type(ident) in (str, int) and str(ident) else None
            if token is not None:
                if token in seen:
                    counts["duplicate"] = counts.get("duplicate", 0) + 1
                    continue
                seen[token] = None
                if len(seen) > MAX_SEEN:
                    seen.popitem(last=False)
            alerts.append((alert, token))
        observations = await engine.feed_alerts(alerts, counts)
        return JSONResponse(
            {
                "accepted": len(alerts),
                "observations": [str(o.observation_id) for o in observations],
                "rejected": rejected,
            },
            status_code=202,
        )


def _error(status: int, detail: str) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status)
