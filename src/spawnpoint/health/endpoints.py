from __future__ import annotations

from typing import Any

from fastapi import Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from spawnpoint.deps import DB
from spawnpoint.health.schemas import HealthRead
from spawnpoint.health.service import HealthService, SnapshotCollector
from spawnpoint.kit.errors import problem_document, problem_response
from spawnpoint.kit.metrics import CONTENT_TYPE_LATEST, exposition
from spawnpoint.kit.routing import StrictRouter

router = StrictRouter(tags=["health"])
PUBLIC: dict[str, Any] = {"security": []}


@router.get("/health", summary="Service health indicator", openapi_extra=PUBLIC)
async def health() -> dict[str, str]:
    """Report that the service is up."""
    return {"status": "ok"}


@router.get("/live", summary="Liveness probe", openapi_extra=PUBLIC)
async def live() -> dict[str, str]:
    """Answer 200 while the process runs."""
    return {"status": "alive"}


@router.get(
    "/ready",
    summary="Readiness probe",
    openapi_extra=PUBLIC,
    responses={503: {"description": "The database is unreachable."}},
)
async def ready(database: DB) -> Any:
    """Answer 200 when the database answers, 503 when it does not."""
    try:
        await database.ping()
    except Exception as exc:  # any driver error means "not ready"
        doc = problem_document(
            503, f"The database is unreachable: {type(exc).__name__}.", slug="not-ready"
        )
        doc["checks"] = {"database": "unreachable"}
        return problem_response(doc)
    return JSONResponse({"status": "ready", "checks": {"database": "ok"}})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    openapi_extra=PUBLIC,
    response_class=PlainTextResponse,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    """Expose the metrics in the Prometheus text format, with gauges read from the database."""
    health: HealthService = request.app.state.health
    registry = getattr(request.app.state, "job_registry", None)
    service_types = registry.service_types() if registry is not None else frozenset()
    job_types = registry.job_types() if registry is not None else frozenset()
    snapshot = await health.snapshot(service_types=service_types)
    collector = SnapshotCollector(snapshot, job_types=job_types)
    return Response(exposition([collector]), media_type=CONTENT_TYPE_LATEST)


HEALTH_EXAMPLE: dict[str, Any] = {
    "status": "ok",
    "checks": {
        "database": {"status": "ok", "latency_ms": 0.8},
        "policy_engine": {"status": "ok", "latency_ms": 0.2},
    },
    "queue_depth": 3,
    "queue_depth_by_job_type": {"plan-build": 2, "workspace.provision": 1},
    "slow_requests": [
        {
            "method": "POST",
            "route": "/api/spawn",
            "status": 202,
            "duration_ms": 742.1,
            "time": "2026-12-01T14:00:00+00:00",
        }
    ],
    "slow_request_policy": {
        "threshold_ms": 500.0,
        "max_in_window": 5,
        "window_seconds": 60.0,
        "in_window": 1,
    },
    "reasons": [],
    "time": "2026-12-01T14:00:05+00:00",
}


@router.get(
    "/healthz",
    summary="Health with dependency checks, queue depth and slow requests",
    openapi_extra=PUBLIC,
    responses={200: {"content": {"application/json": {"example": HEALTH_EXAMPLE}}}},
)
async def healthz(request: Request) -> HealthRead:
    """Report dependency checks, queue depth and recent slow requests (always 200)."""
    health: HealthService = request.app.state.health
    _, report = await health.report()
    return report


@router.get(
    "/readyz",
    summary="Readiness gate: dependencies answer and few requests are slow",
    openapi_extra=PUBLIC,
    response_model=HealthRead,
    responses={
        200: {"content": {"application/json": {"example": HEALTH_EXAMPLE}}},
        503: {
            "model": HealthRead,
            "description": "Not ready: a dependency check failed, or too many requests were "
            "slow (see `reasons`).",
        },
    },
)
async def readyz(request: Request) -> Any:
    """Answer 200 when ready; 503 `not-ready` while a check fails or requests are slow."""
    health: HealthService = request.app.state.health
    ready, report = await health.report()
    report.status = "ready" if ready else "not-ready"
    if ready:
        return report
    return JSONResponse(report.model_dump(mode="json"), status_code=503)
