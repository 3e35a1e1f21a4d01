from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from conftest import make_settings
from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.queue import enqueue
from spawnpoint.kit.metrics import SLOW_REQUESTS


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


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.step = 0.0  # added on every read: each read is that much later

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@asynccontextmanager
async def probe_client(
    backend_settings: Settings, database: Database, **overrides: object
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    settings = backend_settings.model_copy(update=overrides)
    app = create_app(settings, database=database)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield app, client


async def test_healthz_reports_checks_with_latency_and_the_queue_depth(
    backend_settings: Settings, database: Database
) -> None:
    job_type = f"health.{uuid.uuid4().hex[:8]}"
    async with database.transaction(write=True) as session:
        for _ in range(3):
            await enqueue(session, job_type=job_type, payload={}, tenant_id=None)
    # An app of its own: the suite's shared one counts every earlier test's slow requests,
    # and on a busy machine more than SLOW_REQUEST_MAX of them make it `degraded`.
    async with probe_client(backend_settings, database) as (_, client):
        response = await client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "policy_engine"}
    for check in body["checks"].values():
        assert check["status"] == "ok"
        assert check["latency_ms"] >= 0
    assert body["queue_depth_by_job_type"][job_type] == 3
    assert body["queue_depth"] >= 3
    assert isinstance(body["slow_requests"], list)
    assert body["slow_request_policy"]["threshold_ms"] == 500


async def test_readyz_flips_to_503_on_slow_requests_and_back_when_they_age_out(
    backend_settings: Settings, database: Database, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    async with probe_client(
        backend_settings, database, slow_request_max=2, slow_request_window_seconds=30
    ) as (app, client):
        # The tracker's clock times requests too: this route "takes" 600 ms, no sleeping.
        app.state.slow_requests.clock = clock

        async def slow_item(item: str) -> dict[str, str]:
            clock.now += 0.6
            return {"item": item}

        async def quick() -> dict[str, str]:
            clock.now += 0.2
            return {}

        app.add_api_route("/test-slow/{item}", slow_item)
        app.add_api_route("/test-quick", quick)
        item = str(uuid.uuid4())
        slow_before = SLOW_REQUESTS.labels("GET", "/test-slow/{item}")._value.get()
        assert (await client.get("/readyz")).status_code == 200
        await client.get(f"/test-slow/{item}")
        await client.get("/test-quick")  # under SLOW_REQUEST_MS: not counted
        await client.get(f"/test-slow/{item}")
        clock.now += 10
        assert (await client.get("/readyz")).status_code == 200  # two: not more than two
        await client.get(f"/test-slow/{item}")

        refused = await client.get("/readyz")
        assert refused.status_code == 503
        body = refused.json()
        assert body["status"] == "not-ready"
        assert body["slow_request_policy"]["in_window"] == 3
        assert len(body["slow_requests"]) == 3
        newest = body["slow_requests"][0]
        assert (newest["method"], newest["route"], newest["status"]) == (
            "GET",
            "/test-slow/{item}",
            200,
        )
        assert newest["duration_ms"] == pytest.approx(600)
        assert all(item not in entry["route"] for entry in body["slow_requests"])
        assert body["reasons"] == ["3 requests slower than 500 ms in the last 30 s (more than 2)"]
        assert SLOW_REQUESTS.labels("GET", "/test-slow/{item}")._value.get() - slow_before == 3
        # /healthz reports the same, but stays 200: it is no liveness failure.
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "degraded"

        clock.now += 25  # the first two are now older than the window: one is left
        back = await client.get("/readyz")
        assert back.status_code == 200, back.json()
        assert back.json()["status"] == "ready"
        assert back.json()["slow_request_policy"]["in_window"] == 1
        assert len(back.json()["slow_requests"]) == 3  # still listed, no longer counted
    warnings = [r for r in caplog.records if r.name == "spawnpoint.slow"]
    assert len(warnings) == 3
    assert warnings[0].levelname == "WARNING"
    assert "GET /test-slow/{item} 200 answered after 600.0ms" in warnings[0].getMessage()


async def test_streams_and_uploads_are_not_slow_requests(
    backend_settings: Settings, database: Database
) -> None:
    clock = FakeClock()
    async with probe_client(backend_settings, database, max_body_bytes=10) as (app, client):
        app.state.slow_requests.clock = clock

        async def chunks() -> AsyncIterator[bytes]:
            yield b"first line\n"
            clock.now += 5  # streaming for a long time after the response started
            yield b"last line\n"

        async def stream() -> StreamingResponse:
            return StreamingResponse(chunks(), media_type="text/plain")

        async def upload(request: Request) -> dict[str, int]:
            clock.now += 5
            return {"size": len(await request.body())}

        app.add_api_route("/test-stream", stream)
        app.add_api_route("/test-upload", upload, methods=["POST"])
        streamed = await client.get("/test-stream")
        assert streamed.text == "first line\nlast line\n"
        # Over MAX_BODY_BYTES (413 here, a second between any two clock reads): its time is
        # the client's bandwidth, not the server's latency.
        clock.step = 1.0
        assert (await client.post("/test-upload", content=b"x" * 11)).status_code == 413
        clock.step = 0.0
        assert app.state.slow_requests.recent() == []
        small = await client.post("/test-upload", content=b"x" * 5)
        assert small.json() == {"size": 5}
        [entry] = app.state.slow_requests.recent()
        assert (entry.route, entry.duration_ms) == ("/test-upload", pytest.approx(5000))


async def test_readyz_checks_redis_and_rabbitmq_when_configured(
    backend_settings: Settings, database: Database
) -> None:
    async with probe_client(
        backend_settings,
        database,
        redis_url="redis://127.0.0.1:6379/0",
        rabbitmq_url="amqp://guest:guest@127.0.0.1:5672/",
    ) as (_, client):
        response = await client.get("/readyz")
    assert response.status_code == 200, response.json()
    checks = response.json()["checks"]
    assert checks["redis"]["status"] == "ok"
    assert checks["rabbitmq"]["status"] == "ok"
    assert checks["rabbitmq"]["latency_ms"] > 0


async def test_readyz_is_503_when_a_configured_dependency_is_down(
    backend_settings: Settings, database: Database
) -> None:
    async with probe_client(
        backend_settings,
        database,
        redis_url="redis://127.0.0.1:1/0",
        rabbitmq_url="amqp://guest:guest@127.0.0.1:1/",
        health_check_timeout_seconds=2,
    ) as (_, client):
        ready = await client.get("/readyz")
        health = await client.get("/healthz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "not-ready"
    assert body["checks"]["redis"]["status"] == "failed"
    assert body["checks"]["rabbitmq"]["status"] == "failed"
    assert body["checks"]["database"]["status"] == "ok"
    assert "the redis check failed" in body["reasons"]
    assert health.status_code == 200
    assert health.json()["status"] == "degraded"


async def test_healthz_and_readyz_when_the_database_is_unreachable(tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none?connect_timeout=2"
    database = Database(url)
    app = create_app(make_settings(url, tmp_path), database=database)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ready = await client.get("/readyz")
        health = await client.get("/healthz")
        metrics = await client.get("/metrics")
    await database.dispose()
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"]["status"] == "failed"
    assert ready.json()["queue_depth"] is None
    assert health.status_code == 200
    assert metrics.status_code == 200
    assert "spawnpoint_metrics_database_up 0.0" in metrics.text
