"""`POST /v1/alerts` keeps its own body limit (10 MB, above the 64 KiB every other endpoint has), and
an unauthenticated client cannot make detector-snort read a byte of a body."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from pydantic import SecretStr

from detector_snort.app import build
from detector_snort.ingest import MAX_BODY
from detector_snort.settings import DetectorSnortSettings
from lazaretto_core.http import DEFAULT_MAX_BODY
from lazaretto_lab.testing import http_head_only, serving

TOKEN = "ingest-token-0123456789"


def _alert(n: int) -> dict[str, object]:
    return {
        "id": f"batch-{n}",
        "timestamp": "2025-01-15T10:00:00.219498+0000",
        "event_type": "alert",
        "src_ip": f"100.64.{n // 250}.{n % 250 + 1}",
        "src_port": 55000,
        "dest_ip": "198.51.100.7",
        "dest_port": 39,
        "proto": "TCP",
        "alert": {
            "action": "allowed",
            "gid": 1,
            "signature_id": 9000001,
            "rev": 1,
            "signature": "LAB SCAN x",
        },
    }


async def test_a_batch_over_the_default_limit_is_taken_and_the_ingest_limit_holds(
    amqp_url: str, tmp_path: Path
) -> None:
    settings = DetectorSnortSettings(
        amqp_url=SecretStr(amqp_url), checkpoint_dir=tmp_path / "checkpoints", ingest_token=SecretStr(TOKEN)
    )
    service = await build(settings)
    await service.start()
    try:
        batch = json.dumps({"alerts": [_alert(n) for n in range(600)]}).encode()
        assert DEFAULT_MAX_BODY < len(batch) < MAX_BODY
        auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        transport = httpx.ASGITransport(app=service.http_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://detector") as client:
            taken = await client.post("/v1/alerts", content=batch, headers=auth)
            assert taken.status_code == 202, taken.text
            assert taken.json()["accepted"] == 600
            too_big = await client.post("/v1/alerts", content=b" " * (MAX_BODY + 1), headers=auth)
            assert too_big.status_code == 413
        async with serving(service.http_app) as port:
            unauthenticated = await http_head_only(
                port, f"POST /v1/alerts HTTP/1.1\nHost: d\nContent-Length: {MAX_BODY}\n\n"
            )
        assert unauthenticated.startswith("HTTP/1.1 401")
    finally:
        await service.stop()
