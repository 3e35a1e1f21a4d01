from __future__ import annotations

from pathlib import Path

import httpx

from conftest import make_settings
from spawnpoint.app import create_app
from spawnpoint.db import Database


async def test_health_live_ready(client: httpx.AsyncClient) -> None:
    for path in ("/health", "/live", "/ready"):
        response = await client.get(path)
        assert response.status_code == 200, path


async def test_ready_is_503_when_the_database_is_unreachable(tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"
    database = Database(url)
    app = create_app(make_settings(url, tmp_path), database=database)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ready = await client.get("/ready")
        live = await client.get("/live")
    await database.dispose()
    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    assert ready.json()["checks"] == {"database": "unreachable"}
    assert live.status_code == 200


async def test_metrics_expose_the_sweep_error_counter(client: httpx.AsyncClient) -> None:
    from spawnpoint.kit.metrics import SWEEP_ROW_ERRORS

    SWEEP_ROW_ERRORS.labels(task="test.metrics").inc()
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert 'spawnpoint_sweep_row_errors_total{task="test.metrics"}' in response.text
