from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, status
from fastapi.responses import StreamingResponse

from spawnpoint.db import Database
from spawnpoint.deps import DB, AppSettings, RequireMember, RequireViewer, Scope, Session
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.jobs.repository import JobRepository
from spawnpoint.jobs.schemas import JobCreate, JobRead, JobType
from spawnpoint.jobs.service import FINISHED, JobService, job_read
from spawnpoint.kit.idempotency import accepted_once
from spawnpoint.kit.pagination import Page, Pagination
from spawnpoint.kit.routing import StrictRoute
from spawnpoint.models import JobState
from spawnpoint.scope import TenantScope

router = APIRouter(route_class=StrictRoute, prefix="/api/jobs", tags=["jobs"])
TEXT_PLAIN = "text/plain; charset=utf-8"
LOG_BATCH = 1000


async def get_job_registry(request: Request) -> HandlerRegistry:
    registry: HandlerRegistry = request.app.state.job_registry
    return registry


JobRegistry = Annotated[HandlerRegistry, Depends(get_job_registry)]


async def get_job_service(session: Session, scope: Scope, registry: JobRegistry) -> JobService:
    return JobService(JobRepository(session, scope), registry=registry)


Jobs = Annotated[JobService, Depends(get_job_service)]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Enqueue job",
    response_model=JobRead,
    responses={
        404: {"description": "The caller's tenant no longer exists."},
        422: {"description": "Unknown job type (the known ones are named), or a bad payload."},
        429: {"description": "A job quota is used up; names the limit, usage and plan."},
    },
)
async def enqueue_job(
    actor: RequireMember,
    jobs: Jobs,
    job_in: JobCreate,
    request: Request,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> Any:
    """Queue a service job for the caller's tenant; 202 with the job."""

    async def accept(final: bool) -> dict[str, Any]:
        # Without a key nothing more is written: the unit of work may commit with the job.
        job = await jobs.enqueue(actor=actor, job_in=job_in, final=final)
        return job_read(job).model_dump(mode="json")

    return await accepted_once(
        jobs.session,
        tenant_id=actor.tenant_id,
        key=idempotency_key,
        request=request,
        document=job_in.model_dump(mode="json"),
        accept=accept,
    )


@router.get("", summary="List jobs")
async def list_jobs(
    _: RequireViewer,
    jobs: Jobs,
    page: Pagination,
    job_type: Annotated[JobType | None, Query(description="Only jobs of this type.")] = None,
    state: Annotated[JobState | None, Query(description="Only jobs in this state.")] = None,
    project_id: Annotated[uuid.UUID | None, Query(description="Only this project's.")] = None,
) -> Page[JobRead]:
    """List the tenant's jobs, newest first (workspace jobs included)."""
    items, cursor = await jobs.page(
        params=page, job_type=job_type, state=state, project_id=project_id
    )
    return Page(items=[job_read(job) for job in items], next_cursor=cursor)


@router.get("/{job_id}", summary="Retrieve job")
async def read_job(_: RequireViewer, jobs: Jobs, job_id: uuid.UUID) -> JobRead:
    """Retrieve one job: its state, attempts, result or error."""
    return job_read(await jobs.get(job_id=job_id))


def _entry(line: str) -> str:
    # One line per entry: an entry's own line breaks (a traceback) are written as `\n`.
    return line.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n") + "\n"


async def _log_lines(
    database: Database,
    scope: TenantScope,
    job_id: uuid.UUID,
    *,
    follow: bool,
    idle_seconds: float,
    poll_seconds: float,
) -> AsyncIterator[str]:
    """The job's log, batch by batch, each read in a short transaction of its own.

    Without `follow`, what is logged now. With it, new lines as they are written, until
    the job has finished and its last lines are out, or nothing new came for
    `idle_seconds` (the job may run for hours; a client can reconnect).
    """
    after = 0
    quiet_since = time.monotonic()
    while True:
        async with database.transaction(write=False) as session:
            jobs = JobRepository(session, scope)
            # The state is read before the lines: lines written before a job finished are
            # committed with (or before) its outcome, so none is missed after the last read.
            state = await jobs.state_of(job_id) if follow else None
            lines = await jobs.log_lines(job_id, after=after, limit=LOG_BATCH)
        if lines:
            after = lines[-1][0]
            quiet_since = time.monotonic()
            yield "".join(_entry(line) for _, line in lines)
            if len(lines) == LOG_BATCH:
                continue
        if not follow or state is None or JobState(state) in FINISHED:
            return
        if time.monotonic() - quiet_since >= idle_seconds:
            return
        await asyncio.sleep(poll_seconds)


@router.get(
    "/{job_id}/logs",
    summary="Read job logs",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def read_job_logs(
    _: RequireViewer,
    jobs: Jobs,
    job_id: uuid.UUID,
    database: DB,
    settings: AppSettings,
    scope: Scope,
    follow: Annotated[
        bool, Query(description="Keep streaming new lines until the job ends.")
    ] = False,
) -> StreamingResponse:
    """Stream the job's log as plain text, one line per entry."""
    await jobs.get(job_id=job_id)  # 404 before the stream starts
    return StreamingResponse(
        _log_lines(
            database,
            scope,
            job_id,
            follow=follow,
            idle_seconds=settings.job_log_follow_idle_seconds,
            poll_seconds=settings.job_log_poll_seconds,
        ),
        media_type=TEXT_PLAIN,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Cancel job",
    responses={409: {"description": "The job has finished, or is a workspace's job."}},
)
async def cancel_job(actor: RequireMember, jobs: Jobs, job_id: uuid.UUID) -> JobRead:
    """Cancel a queued job at once; ask a running one to stop (it stops cooperatively)."""
    return job_read(await jobs.cancel(actor=actor, job_id=job_id))
