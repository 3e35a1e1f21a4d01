"""Structured logs and request ids: JSON lines with request, caller and job context."""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
import structlog
from fastapi import FastAPI

from conftest import World
from jobs.jobs_support import add_job, eventually, job_in_state, running
from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.context import JobContext
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.jobs.worker import Worker
from spawnpoint.logs import REQUEST_ID_PATTERN, accepted_request_id, configure_logging
from spawnpoint.models import Role


@pytest.fixture
def log_stream(backend_settings: Settings) -> Iterator[io.StringIO]:
    """JSON logging into a buffer, as `spawnpoint serve` configures it; restored after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    configure_logging(backend_settings.model_copy(update={"log_format": "json"}), stream=stream)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


@asynccontextmanager
async def app_client(
    backend_settings: Settings, database: Database
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(backend_settings, database=database)
    # A 500's exception is re-raised after its response, as a server would log it.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield app, client


def test_request_ids_are_accepted_only_when_short_and_plain() -> None:
    assert accepted_request_id("ci-run-42.step:3") == "ci-run-42.step:3"
    for bad in ("", "a" * 129, "has space", "line\r\nbreak", "<script>", "é"):
        replaced = accepted_request_id(bad)
        assert replaced != bad
        assert REQUEST_ID_PATTERN.fullmatch(replaced)
        uuid.UUID(replaced)


async def test_access_log_line_carries_request_id_route_caller_and_reason(
    backend_settings: Settings, database: Database, world: World, log_stream: io.StringIO
) -> None:
    org = await world.org(roles=(Role.admin,))
    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    headers = {**org.headers[Role.admin], "X-Request-ID": request_id, "X-Reason": "nightly check"}
    async with app_client(backend_settings, database) as (_, client):
        response = await client.get(f"/api/plans/{org.plan_id}", headers=headers)
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == request_id
    # The access line; a request slower than SLOW_REQUEST_MS (a busy machine) also logs a
    # `spawnpoint.slow` warning with the same request id.
    [line] = [
        line
        for line in lines(log_stream)
        if line.get("request_id") == request_id and line["logger"] == "spawnpoint.access"
    ]
    assert line["level"] == "info"
    assert line["route"] == "/api/plans/{plan_id}"
    assert line["method"] == "GET"
    assert line["status"] == 200
    assert line["duration_ms"] >= 0
    assert line["tenant_id"] == str(org.tenant_id)
    assert line["actor_id"] == str(org.users[Role.admin])
    assert line["reason"] == "nightly check"
    assert "timestamp" in line


async def test_every_response_carries_a_request_id_errors_included(
    backend_settings: Settings, database: Database, log_stream: io.StringIO
) -> None:
    async with app_client(backend_settings, database) as (app, client):

        async def explode() -> None:
            raise RuntimeError("boom")

        app.add_api_route("/test-explode", explode)
        client_id = "client-supplied-1"
        unauthorised = await client.get("/api/plans", headers={"X-Request-ID": client_id})
        missing = await client.get("/nowhere")
        refused = await client.get("/api/plans", headers={"X-Request-ID": "not ok\tid"})
        crashed = await client.get("/test-explode", headers={"X-Request-ID": "crash-1"})
    assert unauthorised.status_code == 401
    assert unauthorised.headers["X-Request-ID"] == client_id
    assert missing.status_code == 404
    uuid.UUID(missing.headers["X-Request-ID"])
    assert refused.headers["X-Request-ID"] != "not ok\tid"
    uuid.UUID(refused.headers["X-Request-ID"])
    assert crashed.status_code == 500
    assert crashed.headers["X-Request-ID"] == "crash-1"
    assert crashed.headers["content-type"] == "application/problem+json"
    logged = [line for line in lines(log_stream) if line.get("request_id") == "crash-1"]
    assert any(line.get("status") == 500 for line in logged)
    [unknown] = [  # the access line (a slow request also logs a warning with its id)
        line
        for line in lines(log_stream)
        if line.get("request_id") == missing.headers["X-Request-ID"]
        and line.get("logger") == "spawnpoint.access"
    ]
    assert (unknown["route"], unknown["path"], unknown["status"]) == ("unmatched", "/nowhere", 404)


async def test_the_audit_entry_records_the_request_id(
    backend_settings: Settings, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.admin,))
    admin = org.headers[Role.admin]
    request_id = f"audit-{uuid.uuid4().hex[:12]}"
    async with app_client(backend_settings, database) as (_, client):
        created = await client.post(
            "/api/projects",
            headers={**admin, "X-Request-ID": request_id},
            json={"name": f"p-{uuid.uuid4().hex[:8]}"},
        )
        assert created.status_code == 201
        assert created.headers["X-Request-ID"] == request_id
        generated = await client.post(
            "/api/projects", headers=admin, json={"name": f"p-{uuid.uuid4().hex[:8]}"}
        )
        entries = (await client.get("/api/audit?limit=50", headers=admin)).json()["items"]
    by_resource = {entry["resource_id"]: entry for entry in entries}
    assert by_resource[created.json()["id"]]["request_id"] == request_id
    assert by_resource[generated.json()["id"]]["request_id"] == generated.headers["X-Request-ID"]


async def test_lines_logged_by_a_job_name_the_job_its_tenant_and_project(
    backend_settings: Settings, database: Database, world: World, log_stream: io.StringIO
) -> None:
    org = await world.org(roles=(Role.member,))
    job_type = f"logs.{uuid.uuid4().hex[:8]}"
    project_id = uuid.uuid4()
    registry = HandlerRegistry()

    @registry.register(job_type)
    async def handler(ctx: JobContext) -> None:
        logging.getLogger("acme.handler").info("working on %s", ctx.payload["what"])

    job_id = await add_job(
        database,
        job_type,
        payload={"what": "the report"},
        tenant_id=org.tenant_id,
        project_id=project_id,
        actor_id=org.users[Role.member],
    )
    worker = Worker(
        database, backend_settings, registry, concurrency=1, lease_seconds=5, poll_interval=0.05
    )
    async with running(worker):
        await eventually(lambda: job_in_state(database, job_id, "succeeded"), what="job done")
    [line] = [line for line in lines(log_stream) if line.get("logger") == "acme.handler"]
    assert line["event"] == "working on the report"
    assert line["job_id"] == str(job_id)
    assert line["job_type"] == job_type
    assert line["tenant_id"] == str(org.tenant_id)
    assert line["project_id"] == str(project_id)
    assert line["actor_id"] == str(org.users[Role.member])
    assert line["attempt"] == 1


def test_console_format_renders_the_same_fields(backend_settings: Settings) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure_logging(
            backend_settings.model_copy(update={"log_format": "console"}), stream=stream
        )
        structlog.get_logger("spawnpoint.test").info("hello", tenant_id="t-1")
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
        structlog.reset_defaults()
    text = stream.getvalue()
    assert "hello" in text
    assert "tenant_id=t-1" in text
