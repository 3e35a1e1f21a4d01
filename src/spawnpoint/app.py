"""The application factory."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.telemetry import TelemetryConfig
from fastapi_offline import FastAPIOffline

from spawnpoint import tracing
from spawnpoint.apikeys.endpoints import router as api_keys_router
from spawnpoint.artifacts.blobstore import attach_blob_store, blob_store_for_settings
from spawnpoint.artifacts.endpoints import router as artifacts_router
from spawnpoint.artifacts.upload import MULTIPART_OVERHEAD_BYTES
from spawnpoint.audit.endpoints import router as audit_router
from spawnpoint.auth.endpoints import invites_router
from spawnpoint.auth.endpoints import router as auth_router
from spawnpoint.auth.setup import close_identity, install_identity
from spawnpoint.config import Settings
from spawnpoint.costs.endpoints import router as costs_router
from spawnpoint.db import Database
from spawnpoint.events.endpoints import router as events_router
from spawnpoint.health.endpoints import router as health_router
from spawnpoint.health.service import HealthService
from spawnpoint.health.slow import SlowRequestTracker
from spawnpoint.jobs.endpoints import router as jobs_router
from spawnpoint.jobs.registry import HandlerRegistry, default_registry
from spawnpoint.jobs.worker import run_worker_in_process
from spawnpoint.kit.admission import ReadAdmission
from spawnpoint.kit.body import BodyLimitMiddleware
from spawnpoint.kit.errors import install_problem_handlers
from spawnpoint.kit.methods import install_method_semantics
from spawnpoint.kit.openapi import document_links, document_problems
from spawnpoint.kit.telemetry import UNTRACKED_ROUTES, install_request_telemetry
from spawnpoint.plans.endpoints import router as plans_router
from spawnpoint.policy.engine import PolicyEngine, build_policy_engine
from spawnpoint.projects.endpoints import router as projects_router
from spawnpoint.projects.endpoints import v1_router as projects_v1_router
from spawnpoint.provisioners import ProvisionerRegistry
from spawnpoint.quotas.endpoints import router as quotas_router
from spawnpoint.runtime import periodic_tasks
from spawnpoint.security import AccountCache
from spawnpoint.templates.endpoints import router as templates_router
from spawnpoint.tenants.endpoints import router as tenants_router
from spawnpoint.users.endpoints import router as users_router
from spawnpoint.workspaces.endpoints import router as workspaces_router
from spawnpoint.workspaces.status_cache import detach_status_cache, install_status_cache

# Routes are matched in this order, router by router (FastAPI tries each route's pattern
# until one fits): what clients send most (spawns and the polls, jobs) comes first.
ROUTERS = (
    workspaces_router,
    jobs_router,
    health_router,
    plans_router,
    tenants_router,
    users_router,
    projects_router,
    projects_v1_router,
    auth_router,
    invites_router,
    api_keys_router,
    templates_router,
    events_router,
    quotas_router,
    audit_router,
    artifacts_router,
    costs_router,
)
log = logging.getLogger("spawnpoint")
# The in-process worker's handlers at once. Its writes go first at the write gate
# (sqlite_inline.WriteGate), and with this many a burst of spawns does not queue as jobs
# (bench/vs_jupyterhub.py, 32 clients: 4 -> 87-107 spawns/s at 3.2-3.6 polls per spawn,
# 16 -> 140 at 1.7).
IN_PROCESS_WORKER_CONCURRENCY = 16
UPLOAD_ROUTES = (
    ("POST", re.compile(r"^/api/artifacts$")),
    ("PUT", re.compile(r"^/api/artifacts/[^/]+$")),
)


def create_app(
    settings: Settings | None = None,
    *,
    database: Database | None = None,
    policy: PolicyEngine | None = None,
    provisioners: ProvisionerRegistry | None = None,
    job_registry: HandlerRegistry | None = None,
    run_worker: bool = False,
) -> FastAPI:
    """Build the API. Refuses settings that are unsafe for the configured environment.

    With `run_worker`, the lifespan also runs a job worker and the scheduler in this process
    (the embedded single-process mode of `spawnpoint serve`). `job_registry` (default: the
    built-in handlers and the `spawnpoint.jobs` entry points) names the job types
    `POST /api/jobs` accepts, with their payload models, and is the in-process worker's.
    """
    settings = settings or Settings()
    settings.check_safe()
    database = database or Database(settings.sqlalchemy_url, pool_size=settings.database_pool_size)
    policy = policy or build_policy_engine(settings, timeout=settings.policy_timeout_seconds)
    blobs = blob_store_for_settings(settings)
    jobs = job_registry or default_registry(settings)
    attach_blob_store(database, blobs)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.dev_bypass_active:
            log.warning(settings.dev_bypass_warning)
        await asyncio.to_thread(blobs.sweep_staging)
        # With REDIS_URL, permit status and connection documents are cached (after each
        # commit). Attached here, not at build time: an app that never starts (a test's)
        # leaves a shared database without one.
        install_status_cache(database, settings)
        stop = asyncio.Event()
        worker = None
        if run_worker:
            worker = asyncio.create_task(
                run_worker_in_process(
                    database,
                    settings,
                    jobs,
                    stop,
                    tasks=periodic_tasks(settings),
                    concurrency=IN_PROCESS_WORKER_CONCURRENCY,
                ),
                name="in-process worker",
            )
        try:
            yield
        finally:
            stop.set()
            if worker is not None:
                await worker
            await policy.aclose()
            await close_identity(app)
            await detach_status_cache(database)
            await database.dispose()

    tracing.configure_tracing(settings)
    app = _bare_app(settings, lifespan)
    app.state.settings = settings
    app.state.database = database
    app.state.policy = policy
    app.state.blobs = blobs
    app.state.accounts = AccountCache(settings.auth_cache_seconds)
    app.state.job_registry = jobs
    app.state.slow_requests = slow = SlowRequestTracker(
        threshold_ms=settings.slow_request_ms,
        max_in_window=settings.slow_request_max,
        window_seconds=settings.slow_request_window_seconds,
    )
    app.state.health = HealthService(settings=settings, database=database, policy=policy, slow=slow)
    app.state.provisioners = provisioners or ProvisionerRegistry.from_entry_points()
    install_problem_handlers(app)
    install_method_semantics(app)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_body_bytes,
        # Artifact content streams to the blob store; its route enforces ARTIFACT_MAX_BYTES.
        uploads=UPLOAD_ROUTES,
        upload_limit=settings.artifact_max_bytes + MULTIPART_OVERHEAD_BYTES,
    )
    install_identity(app, settings, database)
    for router in ROUTERS:
        app.include_router(router)
    document_bearer_auth(app)
    if run_worker and settings.read_admission > 0:
        # The worker shares this event loop: polls must not starve it (see kit/admission).
        app.add_middleware(ReadAdmission, limit=settings.read_admission)
    install_request_telemetry(
        app, slow=slow, log_requests=settings.access_log, upload_bytes=settings.max_body_bytes
    )
    return app


def _bare_app(
    settings: Settings, lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]]
) -> FastAPI:
    """The FastAPI app itself, with the docs pages and the OpenAPI route only where enabled."""
    options: dict[str, Any] = {
        "title": "spawnpoint",
        "version": "0.1.0",
        "summary": "Multi-tenant control plane for workspaces spawned from versioned templates.",
        "lifespan": lifespan,
        # Starlette builds a trailing-slash redirect's Location from the Host header.
        "redirect_slashes": False,
        "telemetry": _telemetry(),
    }
    if not settings.docs_available:
        return FastAPI(**options, openapi_url=None, docs_url=None, redoc_url=None)
    # Swagger UI and ReDoc assets come from the installed fastapi-offline package, not a CDN,
    # so the docs work offline; no validator badge, which would load an image from swagger.io.
    return FastAPIOffline(**options, swagger_ui_parameters={"validatorUrl": None})


def _telemetry() -> TelemetryConfig:
    """FastAPI's own request spans, into spawnpoint's tracer provider when tracing is on.

    Off otherwise, so requests skip its per-request provider checks.
    """
    provider = tracing.tracer_provider()
    if provider is None:
        return {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}
    return {
        "tracer_provider": provider,
        "tracing": True,
        # Metrics are prometheus-client's, logs structlog's (see kit/metrics.py, logs.py).
        "metrics": False,
        "logs": False,
        "operation_spans": False,
        # Probes and scrapes every few seconds would bury the traces worth reading.
        "exclude": lambda scope: scope.get("path") in UNTRACKED_ROUTES,
    }


def document_bearer_auth(app: FastAPI) -> None:
    """Declare the bearer scheme in the OpenAPI document.

    `deps.get_principal` reads the Authorization header itself rather than through a
    FastAPI security dependency, which keeps one dependency off every request's path.
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A JWT, an API key (sp_...), or DEV_BYPASS_TOKEN in "
                    "development.",
                },
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                # So the docs' Authorize button logs in with an email and password.
                "password": {
                    "type": "oauth2",
                    "flows": {"password": {"tokenUrl": "/api/v1/auth/login", "scopes": {}}},
                },
            }
            schema["security"] = [{"bearer": []}, {"apiKey": []}, {"password": []}]
            app.openapi_schema = document_links(document_problems(schema))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
