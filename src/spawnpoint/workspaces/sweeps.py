"""The scheduler's workspace sweeps: idle auto-stop, maximum lifetime, lost processes.

They move workspaces through the same transitions a user would, with `system` as the
actor and the reason on the event, and enqueue the job that does the work.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.config import Settings
from spawnpoint.jobs.queue import enqueue
from spawnpoint.jobs.scheduler import PeriodicTask
from spawnpoint.kit.idempotency import purge_expired
from spawnpoint.models import Workspace, WorkspaceState
from spawnpoint.models.workspaces import IDLE_SWEEP_PREDICATE
from spawnpoint.provisioners import (
    AnyProvisioner,
    ProvisionerRegistry,
)
from spawnpoint.workspaces.handlers import provision_context
from spawnpoint.workspaces.lifecycle import SYSTEM, move
from spawnpoint.workspaces.repository import with_spec

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
                # Spelled as the partial index's predicate, so PostgreSQL can use the index
                # (a bound parameter for the state would not match it).
                text(IDLE_SWEEP_PREDICATE),
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


class LostProcessSweep:
    """Mark running workspaces failed when their host process is gone.

    Only drivers that run host processes (`local`) are checked: their status is a local
    lookup, cheap enough to make inside the sweep's transaction. After a worker restart
    this is what finds each process again by pid and start time, or fails the workspace.
    """

    def __init__(self, provisioners: ProvisionerRegistry, settings: Settings) -> None:
        self.settings = settings
        self.drivers: dict[str, AnyProvisioner] = {
            name: provisioners.create(name, settings)
            for name in provisioners.names()
            if provisioners.get(name).runs_host_commands
        }

    async def __call__(self, session: AsyncSession, now: datetime) -> int:
        if not self.drivers:
            return 0
        rows = (
            await session.execute(
                with_spec()
                .where(
                    Workspace.state == S.running,
                    Workspace.provisioner.in_(list(self.drivers)),
                )
                .order_by(Workspace.id)
                .limit(BATCH)
                .with_for_update(of=Workspace, skip_locked=True)
            )
        ).all()
        failed = 0
        for workspace, spec in rows:
            status = await self.drivers[workspace.provisioner].status(
                provision_context(
                    workspace,
                    spec,
                    idempotency_key=f"status-{workspace.id}",
                    log=_discard,
                    settings=self.settings,
                )
            )
            if status.running:
                continue
            workspace.error = f"the workspace process is not running: {status.detail}"
            workspace.connection = None
            move(session, workspace, S.failed, actor=SYSTEM, reason=workspace.error, now=now)
            failed += 1
        return failed


async def _discard(_: str) -> None:
    return None


def workspace_tasks(
    *,
    provisioners: ProvisionerRegistry | None = None,
    settings: Settings | None = None,
    interval: timedelta = timedelta(seconds=30),
) -> list[PeriodicTask]:
    tasks = [
        PeriodicTask("workspaces.stop_idle", interval, stop_idle),
        PeriodicTask("workspaces.delete_expired", interval, delete_expired),
        PeriodicTask("idempotency.purge_expired", timedelta(hours=1), purge_idempotency_keys),
    ]
    if provisioners is not None and settings is not None:
        lost = LostProcessSweep(provisioners, settings)
        tasks.append(PeriodicTask("workspaces.fail_lost_processes", interval, lost))
    return tasks
