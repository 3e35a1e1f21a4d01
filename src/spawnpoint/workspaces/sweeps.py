"""The scheduler's workspace sweeps: idle auto-stop, maximum lifetime, lost processes.

They move workspaces through the same transitions a user would, with `system` as the
actor and the reason on the event, and enqueue the job that does the work.

A sweep runs in one transaction for every tenant, so no row may stop it: each row is
processed in a savepoint, and one that raises (a value no timedelta holds, a document that
cannot be decoded, a driver whose status call fails, a write the database refuses) is
rolled back alone, logged with the task and workspace, counted in
`spawnpoint_sweep_row_errors_total` and tried again next tick. Rows are read in key order
batch after batch, so rows that keep failing, or that are not due yet, never hide the rows
behind them; a tick reads at most `max_batches` batches and the next tick goes on from there.
Documents (`parameters`, `connection`, `driver_state`) are not read unless a sweep needs
them, so one that cannot be decoded does not even count as an error.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from datetime import datetime, timedelta
from typing import Any, ClassVar

from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.orm.attributes import set_committed_value

from spawnpoint.config import Settings
from spawnpoint.jobs.queue import announce_on_commit, enqueue
from spawnpoint.jobs.scheduler import PeriodicTask, isolated
from spawnpoint.kit.auditing import system_action
from spawnpoint.kit.idempotency import purge_expired
from spawnpoint.models import Workspace, WorkspaceState
from spawnpoint.provisioners import (
    AnyProvisioner,
    ProvisionerRegistry,
)
from spawnpoint.teardown.service import PendingDeletions
from spawnpoint.uow import unit_of
from spawnpoint.workspaces.handlers import provision_context
from spawnpoint.workspaces.lifecycle import SYSTEM, move
from spawnpoint.workspaces.repository import (
    SweepRows,
    expired_candidates,
    idle_candidates,
    running_on,
)

log = logging.getLogger("spawnpoint.workspaces.sweeps")

S = WorkspaceState
BATCH = 200
MAX_BATCHES = 10


async def enqueue_for(session: AsyncSession, workspace: Workspace, job_type: str) -> None:
    """Enqueue the system's job of `job_type` for `workspace`."""
    await enqueue(
        session,
        job_type=job_type,
        payload={"workspace_id": str(workspace.id)},
        tenant_id=workspace.tenant_id,
        project_id=workspace.project_id,
    )


class WorkspaceSweep(ABC):
    """A `PeriodicTask` function over workspaces, read in `key` order, each row isolated.

    Subclasses say which rows (`candidates`, without ORDER BY or LIMIT), whether a row is
    due (`due`, pure Python, no writes) and what to do with a due row (`process`, which
    runs in a savepoint and returns whether it acted).
    """

    name: ClassVar[str]
    key: ClassVar[tuple[InstrumentedAttribute[Any], ...]]

    def __init__(self, *, batch_size: int = BATCH, max_batches: int = MAX_BATCHES) -> None:
        self.batch_size = batch_size
        self.max_batches = max_batches
        # Where the last tick stopped when it ran out of batches; None: from the start.
        self._resume: tuple[Any, ...] | None = None

    @abstractmethod
    def candidates(self, now: datetime) -> Select[Workspace]: ...

    def due(self, workspace: Workspace, now: datetime) -> bool:
        return True

    @abstractmethod
    async def process(self, session: AsyncSession, workspace: Workspace, now: datetime) -> bool:
        """Act on one due row; runs in a savepoint that is rolled back if this raises."""

    async def __call__(self, session: AsyncSession, now: datetime) -> int:
        acted = 0
        after = self._resume
        rows_of = SweepRows(session)
        for _ in range(self.max_batches):
            rows = await rows_of.batch(
                self.candidates(now), key=self.key, after=after, limit=self.batch_size
            )
            for workspace in rows:
                # Read before processing: a row whose savepoint rolled back is expired.
                after = tuple(getattr(workspace, column.key) for column in self.key)
                if await self._isolated(session, workspace, now):
                    acted += 1
            if len(rows) < self.batch_size:
                after = None
                break
        self._resume = after
        if acted:
            # Jobs enqueued in savepoints arranged no wake-up for the commit.
            await announce_on_commit(session)
        return acted

    async def _isolated(self, session: AsyncSession, workspace: Workspace, now: datetime) -> bool:
        async def work() -> bool:
            return self.due(workspace, now) and await self.process(session, workspace, now)

        # The label is read now: after a rollback the row's attributes are expired.
        return await isolated(
            session, work, task=self.name, row=f"workspace {workspace.id}", logger=log
        )


class IdleStop(WorkspaceSweep):
    """Stop running workspaces whose last activity is older than their idle timeout."""

    name = "workspaces.stop_idle"
    key = (Workspace.last_activity_at, Workspace.id)

    def candidates(self, now: datetime) -> Select[Workspace]:
        return idle_candidates(now)

    def due(self, workspace: Workspace, now: datetime) -> bool:
        assert workspace.idle_timeout_minutes is not None
        idle_since = workspace.last_activity_at or workspace.started_at or workspace.created_at
        # Compared in minutes: a timeout too long for a timedelta is simply never reached.
        return (now - idle_since) / timedelta(minutes=1) >= workspace.idle_timeout_minutes

    async def process(self, session: AsyncSession, workspace: Workspace, now: datetime) -> bool:
        reason = f"idle for more than {workspace.idle_timeout_minutes} minutes"
        move(session, workspace, S.stopping, actor=SYSTEM, reason=reason, now=now)
        await enqueue_for(session, workspace, "workspace.stop")
        record_system_action(session, workspace, "workspace.stop", reason, now)
        return True


class ExpiredDelete(WorkspaceSweep):
    """Delete workspaces past their template's maximum lifetime."""

    name = "workspaces.delete_expired"
    key = (Workspace.expires_at, Workspace.id)

    def candidates(self, now: datetime) -> Select[Workspace]:
        return expired_candidates(now)

    async def process(self, session: AsyncSession, workspace: Workspace, now: datetime) -> bool:
        reason = "maximum lifetime reached"
        move(session, workspace, S.deleting, actor=SYSTEM, reason=reason, now=now)
        await enqueue_for(session, workspace, "workspace.destroy")
        record_system_action(session, workspace, "workspace.delete", reason, now)
        return True


async def purge_idempotency_keys(session: AsyncSession, now: datetime) -> int:
    return await purge_expired(session, now=now)


class LostProcessSweep(WorkspaceSweep):
    """Mark running workspaces failed when their host process is gone.

    Only drivers that run host processes (`local`) are checked: their status is a local
    lookup, cheap enough to make inside the sweep's transaction. After a worker restart
    this is what finds each process again by pid and start time, or fails the workspace.
    """

    name = "workspaces.fail_lost_processes"
    key = (Workspace.id,)

    def __init__(
        self,
        provisioners: ProvisionerRegistry,
        settings: Settings,
        *,
        batch_size: int = BATCH,
        max_batches: int = MAX_BATCHES,
    ) -> None:
        super().__init__(batch_size=batch_size, max_batches=max_batches)
        self.settings = settings
        self.drivers: dict[str, AnyProvisioner] = {
            name: provisioners.create(name, settings)
            for name in provisioners.names()
            if provisioners.get(name).runs_host_commands
        }

    def candidates(self, now: datetime) -> Select[Workspace]:
        return running_on(sorted(self.drivers))

    async def __call__(self, session: AsyncSession, now: datetime) -> int:
        if not self.drivers:
            return 0
        return await super().__call__(session, now)

    async def process(self, session: AsyncSession, workspace: Workspace, now: datetime) -> bool:
        # The documents are read row by row, here, where one that cannot be decoded fails
        # this row only.
        driver_state, spec = await SweepRows(session).driver_state_and_spec(workspace.id)
        set_committed_value(workspace, "driver_state", driver_state)
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
            return False
        workspace.error = f"the workspace process is not running: {status.detail}"
        workspace.connection = None
        move(session, workspace, S.failed, actor=SYSTEM, reason=workspace.error, now=now)
        record_system_action(session, workspace, "workspace.fail", workspace.error, now)
        return True


def record_system_action(
    session: AsyncSession, workspace: Workspace, action: str, reason: str, now: datetime
) -> None:
    """Audit what the scheduler did to `workspace`, in the sweep row's savepoint."""
    unit_of(session).record(
        system_action(
            tenant_id=workspace.tenant_id,
            action=action,
            resource_type="workspace",
            resource_id=workspace.id,
            reason=reason,
            at=now,
        )
    )


async def _discard(_: str) -> None:
    return None


def workspace_tasks(
    *,
    provisioners: ProvisionerRegistry | None = None,
    settings: Settings | None = None,
    interval: timedelta = timedelta(seconds=30),
    batch_size: int = BATCH,
    max_batches: int = MAX_BATCHES,
) -> list[PeriodicTask]:
    """The workspace sweeps, the finisher of cascading deletes and key expiry."""
    sizes = {"batch_size": batch_size, "max_batches": max_batches}
    sweeps: list[WorkspaceSweep | PendingDeletions] = [
        IdleStop(**sizes),
        ExpiredDelete(**sizes),
        PendingDeletions(batch_size=batch_size),
    ]
    if provisioners is not None and settings is not None:
        sweeps.append(LostProcessSweep(provisioners, settings, **sizes))
    return [
        *(PeriodicTask(sweep.name, interval, sweep) for sweep in sweeps),
        PeriodicTask("idempotency.purge_expired", timedelta(hours=1), purge_idempotency_keys),
    ]
