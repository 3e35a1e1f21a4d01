from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from spawnpoint.deps import DB
from spawnpoint.kit.errors import problem_document, problem_response
from spawnpoint.kit.routing import StrictRoute

router = APIRouter(route_class=StrictRoute, tags=["health"])
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
async def metrics() -> Response:
    """Expose this process's metrics in the Prometheus text format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
