"""The governance events of service jobs, built as outbox rows (see `events.outbox`).

The seed's names, exactly: `service_job_enqueued` (written with the job),
`service_job_completed` and `service_job_failed` (written by the worker in the transaction
that records the outcome), `service_job_quota_exceeded` (written, in a transaction of its
own, when an enqueue is refused). Each carries the job type, tenant, project, retries and a
pointer to the job's log, keyed by the job (or, for a refusal, which has no job, by the
tenant), so a relay keeps one job's events in order.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from spawnpoint.events.outbox import outbox_event

JOB_ENQUEUED = "service_job_enqueued"
JOB_COMPLETED = "service_job_completed"
JOB_FAILED = "service_job_failed"
JOB_QUOTA_EXCEEDED = "service_job_quota_exceeded"
JOB_EVENT_TYPES = (JOB_ENQUEUED, JOB_COMPLETED, JOB_FAILED, JOB_QUOTA_EXCEEDED)


def log_url(job_id: uuid.UUID | str) -> str:
    """Where a job's log is read (`GET /api/jobs/{id}/logs`)."""
    return f"/api/jobs/{job_id}/logs"


def job_event(
    event_type: str,
    *,
    job_id: uuid.UUID,
    job_type: str,
    tenant_id: uuid.UUID | None,
    project_id: uuid.UUID | None,
    actor_id: uuid.UUID | None,
    state: str,
    attempts: int,
    max_attempts: int,
    error: str | None = None,
    artifact_id: object = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The outbox row of one step of a service job (enqueued, completed, failed)."""
    payload: dict[str, Any] = {
        "job_id": job_id,
        "job_type": job_type,
        "tenant_id": tenant_id,
        "project_id": project_id,
        "actor_id": actor_id,
        "state": state,
        "attempts": attempts,
        "max_retries": max_attempts - 1,
        "retries": max(attempts - 1, 0),
        "log_url": log_url(job_id),
    }
    if error is not None:
        # A traceback can be long; the job row keeps all of it.
        payload["error"] = error[:2000]
    if artifact_id is not None:
        payload["artifact_id"] = str(artifact_id)
    return outbox_event(tenant_id=tenant_id, type=event_type, key=job_id, payload=payload, now=now)


def quota_exceeded(
    *,
    tenant_id: uuid.UUID,
    project_id: uuid.UUID | None,
    actor_id: uuid.UUID | None,
    job_type: str,
    limit: str,
    allowed: int,
    usage: Mapping[str, Any],
    plan: str,
    retry_after: int | None,
) -> dict[str, Any]:
    """The outbox row of an enqueue refused by a plan's job quota, keyed by the tenant."""
    return outbox_event(
        tenant_id=tenant_id,
        type=JOB_QUOTA_EXCEEDED,
        key=tenant_id,
        payload={
            "tenant_id": tenant_id,
            "project_id": project_id,
            "actor_id": actor_id,
            "job_type": job_type,
            "limit": limit,
            "allowed": allowed,
            "usage": dict(usage),
            "plan": plan,
            "retry_after": retry_after,
            "retries": 0,
            "log_url": None,
        },
    )
