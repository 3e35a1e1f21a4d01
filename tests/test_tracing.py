"""OpenTelemetry spans (the otel extra, installed in the dev group), with the SDK's own
in-memory exporter: request spans, `job.enqueue` and `job.execute` with their attributes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import World
from jobs.jobs_support import add_job, eventually, job_in_state, running
from spawnpoint import tracing
from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.context import JobContext
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.jobs.worker import Worker
from spawnpoint.models import Role

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(None)
        provider.shutdown()


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_requests_enqueues_and_job_runs_are_spans_with_tenant_project_and_type(
    backend_settings: Settings, database: Database, world: World, exporter: InMemorySpanExporter
) -> None:
    org = await world.org(roles=(Role.admin,))
    app = create_app(backend_settings, database=database)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(
            f"/api/plans/{org.plan_id}",
            headers={**org.headers[Role.admin], "X-Request-ID": "span-req-1"},
        )
        for probe in ("/healthz", "/readyz", "/metrics", "/live"):
            assert (await client.get(probe, headers={"X-Request-ID": "probe-1"})).is_success
    assert response.status_code == 200
    # Probes and scrapes are not traced.
    assert not [
        span
        for span in exporter.get_finished_spans()
        if attributes(span).get("spawnpoint.request_id") == "probe-1"
        or attributes(span).get("url.path") in {"/healthz", "/readyz", "/metrics", "/live"}
    ]
    [request_span] = [
        span
        for span in exporter.get_finished_spans()
        if attributes(span).get("spawnpoint.request_id") == "span-req-1"
    ]
    request_attributes = attributes(request_span)
    assert request_attributes["http.route"] == "/api/plans/{plan_id}"
    assert request_attributes["http.response.status_code"] == 200
    assert request_attributes["spawnpoint.tenant_id"] == str(org.tenant_id)
    assert request_attributes["spawnpoint.actor_id"] == str(org.users[Role.admin])

    job_type = f"trace.{uuid.uuid4().hex[:8]}"
    project_id = uuid.uuid4()
    registry = HandlerRegistry()

    @registry.register(job_type)
    async def handler(ctx: JobContext) -> None:
        return None

    job_id = await add_job(database, job_type, tenant_id=org.tenant_id, project_id=project_id)
    [enqueue_span] = [
        span
        for span in named(exporter, "job.enqueue")
        if attributes(span).get("spawnpoint.job_type") == job_type
    ]
    assert attributes(enqueue_span)["spawnpoint.tenant_id"] == str(org.tenant_id)
    assert attributes(enqueue_span)["spawnpoint.project_id"] == str(project_id)

    worker = Worker(
        database, backend_settings, registry, concurrency=1, lease_seconds=5, poll_interval=0.05
    )
    async with running(worker):
        await eventually(lambda: job_in_state(database, job_id, "succeeded"), what="job done")
    [execute_span] = [
        span
        for span in named(exporter, "job.execute")
        if attributes(span).get("spawnpoint.job_id") == str(job_id)
    ]
    assert attributes(execute_span) == {
        "spawnpoint.tenant_id": str(org.tenant_id),
        "spawnpoint.project_id": str(project_id),
        "spawnpoint.job_type": job_type,
        "spawnpoint.job_id": str(job_id),
        "spawnpoint.attempt": 1,
    }


async def test_a_failing_handler_marks_its_span_as_an_error(
    backend_settings: Settings, database: Database, exporter: InMemorySpanExporter
) -> None:
    from opentelemetry.trace import StatusCode

    job_type = f"trace.fail.{uuid.uuid4().hex[:8]}"
    registry = HandlerRegistry()

    @registry.register(job_type)
    async def handler(ctx: JobContext) -> None:
        raise RuntimeError("handler broke")

    job_id = await add_job(database, job_type, max_attempts=1)
    worker = Worker(
        database, backend_settings, registry, concurrency=1, lease_seconds=5, poll_interval=0.05
    )
    async with running(worker):
        await eventually(lambda: job_in_state(database, job_id, "failed"), what="job failed")
    [span] = [
        span
        for span in named(exporter, "job.execute")
        if attributes(span).get("spawnpoint.job_id") == str(job_id)
    ]
    assert span.status.status_code is StatusCode.ERROR
    assert any(event.name == "exception" for event in span.events)


def test_without_a_provider_tracing_is_off_and_spans_are_free() -> None:
    assert not tracing.enabled()
    with tracing.span("job.execute", tenant_id=uuid.uuid4()):
        pass
    tracing.annotate(tenant_id="x")  # nothing to annotate: no error


def test_otlp_export_is_configured_from_the_endpoint_setting(backend_settings: Settings) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    settings = backend_settings.model_copy(
        update={"otel_exporter_otlp_endpoint": "http://127.0.0.1:4318"}
    )
    try:
        assert tracing.configure_tracing(settings)
        provider = tracing.tracer_provider()
        assert isinstance(provider, TracerProvider)
        processors = provider._active_span_processor._span_processors
        exporters = [getattr(p, "span_exporter", None) for p in processors]
        exporters += [
            getattr(getattr(p, "_batch_processor", None), "_exporter", None) for p in processors
        ]
        otlp = [e for e in exporters if isinstance(e, OTLPSpanExporter)]
        assert otlp
        assert otlp[0]._endpoint == "http://127.0.0.1:4318/v1/traces"
    finally:
        provider = tracing.tracer_provider()
        tracing.install(None)
        if isinstance(provider, TracerProvider):
            provider.shutdown()
    assert not tracing.configure_tracing(backend_settings)
