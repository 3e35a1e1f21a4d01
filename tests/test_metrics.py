"""GET /metrics: Prometheus text that parses, counters that move, labels that stay bounded."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from conftest import JWT_SECRET, World, make_settings
from jobs.jobs_support import add_job, eventually, get_job, job_in_state, running
from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.context import JobContext
from spawnpoint.jobs.queue import Backoff
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.jobs.worker import Worker
from spawnpoint.migrations import upgrade
from spawnpoint.models import Role

UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
QUICK_RETRY = Backoff(base_seconds=0.01, cap_seconds=0.05)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, parsed by prometheus_client's own parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


@asynccontextmanager
async def metrics_client(
    backend_settings: Settings, database: Database, registry: HandlerRegistry | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    # No snapshot cache: each scrape reads the database afresh.
    app = create_app(
        backend_settings.model_copy(update={"metrics_cache_seconds": 0}), database=database
    )
    if registry is not None:
        app.state.job_registry = registry
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield app, client


async def scrape(client: httpx.AsyncClient) -> str:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text


async def test_metrics_parse_and_the_job_counters_move(
    backend_settings: Settings, database: Database
) -> None:
    fine, flaky = f"metrics.ok.{uuid.uuid4().hex[:8]}", f"metrics.flaky.{uuid.uuid4().hex[:8]}"
    registry = HandlerRegistry()
    failures: list[int] = []

    @registry.register(fine)
    async def succeed(ctx: JobContext) -> dict[str, Any]:
        return {"ok": True}

    @registry.register(flaky)
    async def fail_once(ctx: JobContext) -> None:
        if not failures:
            failures.append(1)
            raise RuntimeError("first attempt fails")

    async with metrics_client(backend_settings, database, registry) as (_, client):
        before = await scrape(client)
        # Registered types have a series from the start, at 0.
        assert samples(before)[("service_job_queue_depth", frozenset({("job_type", fine)}))] == 0
        fine_ids = [await add_job(database, fine) for _ in range(2)]
        flaky_id = await add_job(database, flaky, max_attempts=3)
        queued = await scrape(client)
        assert value(queued, "service_job_queue_depth", job_type=fine) == 2
        assert value(queued, "service_job_queue_depth", job_type=flaky) == 1

        worker = Worker(
            database,
            backend_settings,
            registry,
            concurrency=2,
            lease_seconds=5,
            poll_interval=0.05,
            backoff=QUICK_RETRY,
        )
        async with running(worker):
            for job_id in [*fine_ids, flaky_id]:
                await eventually(
                    lambda job_id=job_id: job_in_state(database, job_id, "succeeded"),
                    what=f"job {job_id} succeeded",
                )
        after = await scrape(client)

    count = "service_job_duration_ms_count"
    assert value(after, count, job_type=fine, outcome="succeeded") == 2
    assert value(before, count, job_type=fine, outcome="succeeded") == 0
    assert value(after, count, job_type=flaky, outcome="error") == 1
    assert value(after, count, job_type=flaky, outcome="succeeded") == 1
    assert value(after, "service_job_retries_total", job_type=flaky) == 1
    assert value(after, "service_job_retries_total", job_type=fine) == 0
    assert value(after, "service_job_duration_ms_sum", job_type=fine, outcome="succeeded") >= 0
    assert (
        value(
            after, "service_job_duration_ms_bucket", job_type=fine, outcome="succeeded", le="+Inf"
        )
        == 2
    )
    assert value(after, "service_job_queue_depth", job_type=fine) == 0


async def test_request_metrics_are_labelled_by_route_template_never_by_id(
    backend_settings: Settings, database: Database, world: World
) -> None:
    plan_id = str(backend_settings.demo_plan_id)
    async with metrics_client(backend_settings, database) as (_, client):
        before = await scrape(client)
        await client.get("/api/plans", headers=world.dev)
        await client.get(f"/api/plans/{plan_id}", headers=world.dev)
        await client.get(f"/api/plans/{uuid.uuid4()}", headers=world.dev)
        await client.get(f"/no/such/path/{uuid.uuid4()}")
        for method in ("FOO", "BAR"):  # any token is a method: one label for all unknown ones
            await client.request(method, "/api/plans", headers=world.dev)
        after = await scrape(client)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    total = "spawnpoint_http_requests_total"
    assert moved(total, method="GET", route="/api/plans", status="200") == 1
    assert moved(total, method="GET", route="/api/plans/{plan_id}", status="200") == 1
    assert moved(total, method="GET", route="/api/plans/{plan_id}", status="404") == 1
    assert moved(total, method="GET", route="unmatched", status="404") == 1
    assert moved(total, method="other", route="/api/plans", status="405") == 2
    assert not any(dict(labels).get("method") in {"FOO", "BAR"} for _, labels in samples(after))
    latency = "spawnpoint_http_request_duration_seconds_count"
    assert moved(latency, method="GET", route="/api/plans", status="200") == 1
    # No label anywhere carries an id (request ids, tenant ids, object ids).
    for (_, labels), _ in samples(after).items():
        for _, label_value in labels:
            assert not UUID_PATTERN.search(label_value), label_value


class Payload(BaseModel):
    n: int = 0


async def test_quota_usage_workspaces_by_state_and_spawn_refusals(
    backend_settings: Settings, database: Database, world: World
) -> None:
    service_type = f"metrics.service.{uuid.uuid4().hex[:8]}"
    registry = HandlerRegistry()

    @registry.register(service_type, payload=Payload)
    async def handler(ctx: JobContext) -> None:
        return None

    org = await world.org(max_workspaces=1, max_concurrent_jobs=4, max_jobs_per_day=10)
    async with database.transaction(write=False) as session:
        from spawnpoint.models import Tenant

        slug = (await session.get(Tenant, org.tenant_id)).slug  # type: ignore[union-attr]
    member = org.headers[Role.member]
    body = {"template_id": str(org.template_id)}
    async with metrics_client(backend_settings, database, registry) as (_, client):
        before = await scrape(client)
        for _ in range(3):
            await add_job(database, service_type, tenant_id=org.tenant_id)
        await add_job(database, f"not-a-service.{uuid.uuid4().hex[:6]}", tenant_id=org.tenant_id)
        assert (await client.post("/api/spawn", headers=member, json=body)).status_code == 202
        assert (await client.post("/api/spawn", headers=member, json=body)).status_code == 429
        after = await scrape(client)

    usage = "service_job_quota_usage"
    assert value(after, usage, tenant=slug, quota="concurrent_jobs") == 0.75
    assert value(after, usage, tenant=slug, quota="jobs_today") == 0.3
    assert value(after, usage, tenant=slug, quota="workspaces") == 1.0
    assert value(after, "service_job_quota_used", tenant=slug, quota="cpu") == 1.0
    assert value(after, "service_job_quota_limit", tenant=slug, quota="memory_mb") == 16384
    assert value(after, "spawnpoint_workspaces", state="pending") >= 1
    states = {
        dict(labels)["state"]
        for (name, labels) in samples(after)
        if name == "spawnpoint_workspaces"
    }
    assert "running" in states
    assert "deleted" not in states
    refusals = "spawnpoint_spawn_refusals_total"
    assert value(after, refusals, reason="quota") - value(before, refusals, reason="quota") == 1
    assert value(after, "spawnpoint_metrics_database_up") == 1


SCRIPT_OBSERVE = """
from spawnpoint.kit.metrics import JOB_DURATION, JOB_RETRIES
JOB_DURATION.labels("mp.worker", "succeeded").observe(12.5)
JOB_RETRIES.labels("mp.worker").inc()
"""

SCRIPT_SCRAPE = """
import asyncio, sys
from pathlib import Path
import httpx
from spawnpoint.app import create_app
from spawnpoint.config import Settings

async def main() -> None:
    data = Path(sys.argv[1])
    settings = Settings(_env_file=None, data_dir=data, jwt_secret="x" * 40)
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        await client.get("/health")
        sys.stdout.write((await client.get("/metrics")).text)

asyncio.run(main())
"""


def test_metrics_add_up_every_process_in_multiprocess_mode(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    for _ in range(2):  # two worker processes, each observing once and exiting
        subprocess.run([sys.executable, "-c", SCRIPT_OBSERVE], env=env, check=True, timeout=60)
    scraped = subprocess.run(
        [sys.executable, "-c", SCRIPT_SCRAPE, str(tmp_path)],
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    ).stdout
    count = "service_job_duration_ms_count"
    assert value(scraped, count, job_type="mp.worker", outcome="succeeded") == 2
    assert (
        value(scraped, "service_job_duration_ms_sum", job_type="mp.worker", outcome="succeeded")
        == 25
    )
    assert value(scraped, "service_job_retries_total", job_type="mp.worker") == 2
    health = value(
        scraped, "spawnpoint_http_requests_total", method="GET", route="/health", status="200"
    )
    assert health == 1
    assert len(list(directory.iterdir())) >= 3  # one file set per process


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def metrics_worker(tmp_path: Path) -> Iterator[tuple[Settings, int]]:
    """`spawnpoint worker --metrics-port` on a SQLite database of its own."""
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}", tmp_path)
    upgrade(settings)
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": settings.sqlalchemy_url,
        "DATA_DIR": str(tmp_path),
        "JWT_SECRET": JWT_SECRET,
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "warning",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [sys.executable, "-m", "spawnpoint", "worker", "--poll-interval", "0.05"]
    with (tmp_path / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [*command, "--metrics-port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=log
        )
        try:
            yield settings, port
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)


async def test_a_worker_serves_its_own_metrics_with_metrics_port(
    metrics_worker: tuple[Settings, int],
) -> None:
    settings, port = metrics_worker
    database = Database(settings.sqlalchemy_url)
    try:
        job_id = await add_job(
            database, "audit-report", payload={}, tenant_id=settings.demo_tenant_id
        )
        await eventually(
            lambda: job_in_state(database, job_id, "succeeded", "failed"), what="the job ran"
        )
        assert (await get_job(database, job_id)).state == "succeeded"
    finally:
        await database.dispose()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

        async def scraped() -> str | None:
            try:
                text = (await client.get("/metrics")).text
            except httpx.TransportError:
                return None
            count = "service_job_duration_ms_count"
            done = value(text, count, job_type="audit-report", outcome="succeeded") == 1
            return text if done else None

        await eventually(scraped, what="the worker's metrics")
