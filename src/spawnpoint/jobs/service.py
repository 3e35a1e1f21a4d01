"""The Jobs API: enqueue service jobs inside the plan's job quotas, read and cancel them.

An enqueue validates the payload against its job type's model, takes the tenant lock a
spawn takes (so concurrent enqueues of one tenant are counted one at a time and can never
exceed a quota), then writes the job and its `service_job_enqueued` event in the request's
transaction. A refusal by quota writes nothing but its audit entry and its
`service_job_quota_exceeded` event, in a transaction of their own.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any, NoReturn

from pydantic import ValidationError

from spawnpoint.jobs.events import JOB_ENQUEUED, job_event, log_url, quota_exceeded
from spawnpoint.jobs.queue import enqueue_with, queued_job, request_cancel
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.jobs.repository import JobRepository
from spawnpoint.jobs.schemas import JobCreate, JobRead
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.errors import Conflict, Forbidden, Unprocessable, field_error
from spawnpoint.kit.pagination import PageParams
from spawnpoint.models import Job, JobState, Plan, Role
from spawnpoint.policy.input import PolicyPlan
from spawnpoint.quotas.service import JobQuotaBreach, JobUsage, day_start, job_quota_breaches
from spawnpoint.security import Principal
from spawnpoint.uow import unit_of
from spawnpoint.workspaces.repository import SpawnRows
from spawnpoint.workspaces.service import QuotaExceeded

log = logging.getLogger("spawnpoint.jobs")
FINISHED = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})


def job_read(job: Job) -> JobRead:
    """The API's view of a job row."""
    return JobRead(
        id=job.id,
        tenant_id=job.tenant_id,
        project_id=job.project_id,
        actor_id=job.actor_id,
        job_type=job.type,
        state=JobState(job.state),
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        max_retries=job.max_attempts - 1,
        retries=max(job.attempts - 1, 0),
        cancel_requested=job.cancel_requested,
        payload=job.payload if isinstance(job.payload, dict) else {},
        result=job.result,
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        log_url=log_url(job.id),
    )


def _payload_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {
            "pointer": "#/payload" + "".join(f"/{part}" for part in error["loc"]),
            "detail": error["msg"],
            "type": error["type"],
        }
        for error in exc.errors()
    ]


class JobService:
    def __init__(self, repository: JobRepository, *, registry: HandlerRegistry) -> None:
        self.repository = repository
        self.session = repository.session
        self.registry = registry

    def _payload(self, job_in: JobCreate) -> dict[str, Any]:
        """The payload as its model reads it, or a 422 that names what does not fit."""
        model = self.registry.payload_model(job_in.job_type)
        if model is None:
            known = sorted(self.registry.service_types())
            raise Unprocessable(
                f"Unknown job type {job_in.job_type!r}; known job types: {', '.join(known)}.",
                errors=[
                    {
                        "pointer": "#/job_type",
                        "detail": f"must be one of: {', '.join(known)}",
                        "type": "unknown_job_type",
                    }
                ],
                job_types=known,
            )
        try:
            model.model_validate(job_in.payload)
        except ValidationError as exc:
            raise Unprocessable(
                f"The payload does not fit job type {job_in.job_type!r}; see errors.",
                errors=_payload_errors(exc),
            ) from exc
        # Stored as sent (defaults are the handler's to apply): what was asked reads back.
        return job_in.payload

    async def enqueue(self, *, actor: Principal, job_in: JobCreate, final: bool = False) -> Job:
        """Queue a service job for the caller's tenant, within its plan's job quotas.

        Returns the job (not attached to the session). With `final`, the caller writes
        nothing more in this transaction: on PostgreSQL it commits with the job's insert.

        Raises:
            Unprocessable: unknown job type, a payload that does not fit, a project that
                is not the tenant's.
            QuotaExceeded: the plan allows no more jobs now (429; `Retry-After` when only
                time helps).
        """
        payload = self._payload(job_in)
        rows = SpawnRows(self.session)
        tenant_id = actor.tenant_id
        if job_in.project_id is not None:
            project = await rows.project(tenant_id, job_in.project_id)
            if project is None:
                raise field_error("#/project_id", "No project of your tenant has this id.")
            if project.deletion_requested_at is not None:
                raise Conflict("The project is being deleted; no job can be added to it.")
        # The spawn path's lock: one enqueue (or spawn) of this tenant at a time from here
        # to the commit, so the counts taken under it stay true until the job is written.
        now = utcnow()
        tenant, plan, active, today = await self.repository.lock_tenant_with_counts(
            self.registry.service_types(), day_start(now)
        )
        if tenant.deletion_requested_at is not None:
            raise Conflict("The tenant is being deleted; no job can be added to it.")
        usage = JobUsage(concurrent_jobs=active, jobs_today=today)
        breaches = job_quota_breaches(plan, usage, now=now)
        if breaches:
            self._refuse(actor=actor, job_in=job_in, plan=plan, usage=usage, breaches=breaches)
        uow = unit_of(self.session)
        job = queued_job(
            job_type=job_in.job_type,
            payload=payload,
            tenant_id=tenant_id,
            actor_id=actor.user_id,
            project_id=job_in.project_id,
            max_attempts=job_in.max_retries + 1,
        )
        uow.emit(
            job_event(
                JOB_ENQUEUED,
                job_id=job["id"],
                job_type=job["type"],
                tenant_id=tenant_id,
                project_id=job["project_id"],
                actor_id=job["actor_id"],
                state=job["state"],
                attempts=job["attempts"],
                max_attempts=job["max_attempts"],
                now=job["created_at"],
            )
        )
        uow.describe(resource_id=job["id"], job_type=job["type"], project_id=job["project_id"])
        # With `final` (the caller writes nothing more), PostgreSQL sends the job, its
        # NOTIFY, the event, the audit entry and the COMMIT that releases the tenant lock in
        # as few round trips as a spawn.
        await enqueue_with(self.session, [], job, final=final)
        return Job(**job)

    def _refuse(
        self,
        *,
        actor: Principal,
        job_in: JobCreate,
        plan: Plan,
        usage: JobUsage,
        breaches: list[JobQuotaBreach],
    ) -> NoReturn:
        """Log, keep the refusal's event for its own transaction, answer 429."""
        first = breaches[0]
        log.warning(
            "job quota exceeded: tenant %s, %s allows %d, %d used; %s refused",
            actor.tenant_id,
            first.limit,
            first.allowed,
            first.used,
            job_in.job_type,
        )
        unit_of(self.session).emit_if_refused(
            quota_exceeded(
                tenant_id=actor.tenant_id,
                project_id=job_in.project_id,
                actor_id=actor.user_id,
                job_type=job_in.job_type,
                limit=first.limit,
                allowed=first.allowed,
                usage=usage.as_dict(),
                plan=plan.name,
                retry_after=first.retry_after,
            )
        )
        headers = None if first.retry_after is None else {"Retry-After": str(first.retry_after)}
        raise QuotaExceeded(
            f"Quota exceeded: plan {plan.name!r} allows {first.allowed} for {first.limit}; "
            f"the tenant has {first.used}.",
            headers=headers,
            limit=first.limit,
            limits=[b.limit for b in breaches],
            allowed=first.allowed,
            usage=usage.as_dict(),
            plan=PolicyPlan.model_validate(plan).model_dump(mode="json"),
        )

    async def page(
        self,
        *,
        params: PageParams,
        job_type: str | None,
        state: JobState | None,
        project_id: uuid.UUID | None,
    ) -> tuple[list[Job], str | None]:
        return await self.repository.page_filtered(
            params, job_type=job_type, state=state, project_id=project_id
        )

    async def get(self, *, job_id: uuid.UUID) -> Job:
        return await self.repository.get(job_id)

    async def cancel(self, *, actor: Principal, job_id: uuid.UUID) -> Job:
        """Cancel a queued job at once, or ask a running one to stop.

        Raises:
            NotFound: no such job in the caller's tenant.
            Forbidden: a member cancelling someone else's job.
            Conflict: the job had already finished, or it carries out a workspace action
                (those follow their workspace: stop or delete it instead).
        """
        job = await self.repository.get_locked(job_id)
        if not (actor.has(Role.admin) or job.actor_id == actor.user_id):
            raise Forbidden("Members may cancel only the jobs they enqueued.")
        if JobState(job.state) in FINISHED:
            raise Conflict(f"The job has already finished: it {job.state}.", state=job.state)
        if not self.registry.is_service(job.type):
            raise Conflict(
                f"A {job.type} job follows its workspace: stop or delete the workspace instead."
            )
        await request_cancel(self.session, job_id=job.id, tenant_id=job.tenant_id)
        await self.session.refresh(job)
        unit_of(self.session).describe(resource_id=job.id, job_type=job.type, state=job.state)
        return job
