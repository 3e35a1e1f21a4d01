"""The scheduler's workspace sweeps: idle auto-stop and maximum lifetime.

Both move workspaces through the same transitions a user would, with `system` as the
actor and the reason on the event, and enqueue the job that does the work.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.jobs.queue import enqueue
from spawnpoint.jobs.scheduler import PeriodicTask
from spawnpoint.kit.idempotency import purge_expired
from spawnpoint.models import Workspace, WorkspaceState
from spawnpoint.workspaces.lifecycle import SYSTEM, move

S = WorkspaceState
BATCH = 200


async def _enqueue(session: AsyncSession, workspace: Workspace, job_type: str) -> None:
    await enqueue(
        session,
        job_type=job_type,
        payload={"workspace_id": str(workspace.id)},
        tenant_id=workspace.tenant_id,
        project_id=workspace.project_id,
    )


async def stop_idle(session: AsyncSession, now: datetime) -> int:
    """Stop running workspaces whose last activity is older than their idle timeout."""
    candidates = (
        await session.execute(
            select(Workspace)
            .where(
                Workspace.state == S.running,
                Workspace.idle_timeout_minutes.is_not(None),
                # Cheap prefilter on the index: nobody idles for less than a minute.
                Workspace.last_activity_at < now - timedelta(minutes=1),
            )
            .order_by(Workspace.last_activity_at)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
    ).scalars()
    stopped = 0
    for workspace in candidates:
        assert workspace.idle_timeout_minutes is not None
        idle_since = workspace.last_activity_at or workspace.started_at or workspace.created_at
        limit = timedelta(minutes=workspace.idle_timeout_minutes)
        if now - idle_since < limit:
            continue
        move(
            session,
            workspace,
            S.stopping,
            actor=SYSTEM,
            reason=f"idle for more than {workspace.idle_timeout_minutes} minutes",
            now=now,
        )
        await _enqueue(session, workspace, "workspace.stop")
        stopped += 1
    return stopped


async def delete_expired(session: AsyncSession, now: datetime) -> int:
    """Delete workspaces past their template's maximum lifetime."""
    expired = (
        await session.execute(
            select(Workspace)
            .where(
                Workspace.expires_at.is_not(None),
                Workspace.expires_at <= now,
                Workspace.state.not_in([S.deleting, S.deleted]),
            )
            .order_by(Workspace.expires_at)
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        )
    ).scalars()
    deleted = 0
    for workspace in expired:
        move(
            session, workspace, S.deleting, actor=SYSTEM, reason="maximum lifetime reached", now=now
        )
        await _enqueue(session, workspace, "workspace.destroy")
        deleted += 1
    return deleted


async def purge_idempotency_keys(session: AsyncSession, now: datetime) -> int:
    return await purge_expired(session, now=now)


def workspace_tasks(*, interval: timedelta = timedelta(seconds=30)) -> list[PeriodicTask]:
    return [
        PeriodicTask("workspaces.stop_idle", interval, stop_idle),
        PeriodicTask("workspaces.delete_expired", interval, delete_expired),
        PeriodicTask("idempotency.purge_expired", timedelta(hours=1), purge_idempotency_keys),
    ]
