"""Deleting what workspaces belong to, without orphaning their infrastructure.

A tenant, project, user or template whose workspaces are live (any state but `deleted`:
a `failed` workspace may still hold a process or a volume) is not deleted: the request
answers 409 naming them, or with `?cascade=true` moves each through `deleting` with a real
`workspace.destroy` job and marks the object (`deletion_requested_at`), all in the
request's transaction. `PendingDeletions`, a periodic task, removes marked objects once
none of their workspaces is live; while marked they accept no new spawns.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.jobs.queue import announce_on_commit, queued_job
from spawnpoint.jobs.scheduler import isolated
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.errors import Conflict
from spawnpoint.models import Job, User, UserStatus, Workspace
from spawnpoint.models import WorkspaceState as S
from spawnpoint.security import Principal
from spawnpoint.teardown.repository import (
    KINDS,
    Parent,
    ParentKind,
    TeardownRepository,
)
from spawnpoint.teardown.schemas import TeardownAccepted, TeardownWorkspace
from spawnpoint.workspaces.lifecycle import SYSTEM, move

log = logging.getLogger("spawnpoint.teardown")

LISTED = 20
BATCH = 200


class LiveWorkspaces(Conflict):
    slug = "live-workspaces"


@dataclass(frozen=True)
class _Actor:
    kind: str
    user_id: uuid.UUID | None


class WorkspaceTeardown:
    """The request side: delete now, refuse with 409, or tear down and mark."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.repository = TeardownRepository(session)

    async def hold_spawns(self, tenant_id: uuid.UUID | None) -> None:
        """Wait for the tenant's spawns in flight, and hold new ones until this commits.

        Call before locking a parent row a spawn may refer to. A spawn takes its tenant's
        lock, then its audit chain head, then (inserting) key-share locks on the template,
        project and user it names; a delete that locked the parent first and then wanted
        the head at its commit would wait on the spawn while the spawn waited on it. Taking
        the tenant lock first puts both in the same order. A platform template (no tenant)
        is shared by every tenant's spawns: there is no one lock to take.
        """
        if tenant_id is not None:
            await self.repository.hold_spawns(tenant_id)

    async def delete(
        self, *, kind: ParentKind, parent: Parent, actor: Principal, cascade: bool
    ) -> TeardownAccepted | None:
        """Delete `parent`, or start tearing its live workspaces down.

        The caller has locked `parent`'s row, so no workspace can join it meanwhile (a
        spawn's foreign-key check waits for the lock; the tenant's spawn lock conflicts).

        Returns:
            None when `parent` was deleted; with `cascade`, what is being torn down.

        Raises:
            LiveWorkspaces: `parent` has live workspaces and `cascade` is false.
        """
        scope = kind.scope(parent.id)
        if not cascade:
            count, ids = await self.repository.live_summary(
                scope, listed=LISTED, visible_tenant=_visible_tenant(actor)
            )
            if count:
                listed = "" if count <= LISTED else f" (the first {LISTED} are listed)"
                raise LiveWorkspaces(
                    f"The {kind.noun} has {count} live workspace(s){listed}; delete them "
                    "first, or repeat with ?cascade=true to tear them down and then delete "
                    f"the {kind.noun}.",
                    live_workspaces=count,
                    workspace_ids=[str(i) for i in ids],
                )
            await self.repository.remove(kind, parent.id)
            return None
        live = await self.repository.lock_live(scope)
        if not live:
            await self.repository.remove(kind, parent.id)
            return None
        if parent.deletion_requested_at is None:
            parent.deletion_requested_at = utcnow()
        if isinstance(parent, User):
            # Being deleted: the account signs in no more, so it spawns nothing new either.
            parent.status = UserStatus.disabled
        jobs = await tear_down(self.session, live, kind=kind, actor=_Actor("user", actor.user_id))
        return TeardownAccepted(
            deletion_requested_at=parent.deletion_requested_at,
            live_workspaces=len(live),
            workspaces=[
                TeardownWorkspace(id=w.id, state=S.deleting, job_id=jobs.get(w.id))
                for w in live
                if _visible_tenant(actor) in (None, w.tenant_id)
            ],
        )


def _visible_tenant(actor: Principal) -> uuid.UUID | None:
    """Whose workspace ids the caller may see: every tenant's for operators."""
    return None if actor.operator else actor.tenant_id


async def tear_down(
    session: AsyncSession, workspaces: list[Workspace], *, kind: ParentKind, actor: _Actor
) -> dict[uuid.UUID, uuid.UUID]:
    """Move each workspace not yet `deleting` there, with its destroy job; flushes once.

    Returns:
        The new destroy job of each workspace that got one.
    """
    jobs: dict[uuid.UUID, uuid.UUID] = {}
    for workspace in workspaces:
        if workspace.state == S.deleting:
            continue
        move(
            session,
            workspace,
            S.deleting,
            actor=actor.kind,
            actor_id=actor.user_id,
            reason=f"{kind.noun} deleted",
        )
        values = queued_job(
            job_type="workspace.destroy",
            payload={"workspace_id": str(workspace.id)},
            tenant_id=workspace.tenant_id,
            actor_id=actor.user_id,
            project_id=workspace.project_id,
        )
        session.add(Job(**values))
        jobs[workspace.id] = values["id"]
    if jobs:
        await session.flush()
        await announce_on_commit(session)
    return jobs


class PendingDeletions:
    """The periodic task that finishes cascading deletes.

    For each marked object: a workspace that joined it after the mark (a spawn racing the
    delete) is torn down like the others; once none is live, the object is deleted. A
    workspace whose teardown failed (`failed`) keeps the object until an operator deals
    with it, for instance by repeating the cascading delete, which retries it. Each object
    is handled in a savepoint, so one that cannot be finished is logged, counted in
    `spawnpoint_sweep_row_errors_total` and skipped.
    """

    name = "workspaces.finish_deletions"

    def __init__(self, *, batch_size: int = BATCH) -> None:
        self.batch_size = batch_size

    async def __call__(self, session: AsyncSession, now: datetime) -> int:
        repository = TeardownRepository(session)
        removed = 0
        for kind in KINDS:
            after: tuple[datetime, uuid.UUID] | None = None
            while True:
                marked = await repository.marked(kind, after=after, limit=self.batch_size)
                for mark in marked:
                    after = mark
                    if await self._isolated(session, repository, kind, mark[1]):
                        removed += 1
                if len(marked) < self.batch_size:
                    break
        return removed

    async def _isolated(
        self,
        session: AsyncSession,
        repository: TeardownRepository,
        kind: ParentKind,
        parent_id: uuid.UUID,
    ) -> bool:
        return await isolated(
            session,
            lambda: self._finish(session, repository, kind, parent_id),
            task=self.name,
            row=f"{kind.noun} {parent_id}",
            logger=log,
        )

    async def _finish(
        self,
        session: AsyncSession,
        repository: TeardownRepository,
        kind: ParentKind,
        parent_id: uuid.UUID,
    ) -> bool:
        scope = kind.scope(parent_id)
        states = await repository.live_states(scope)
        if any(state not in (S.deleting, S.failed) for _, state in states):
            stragglers = await repository.lock_live(
                and_(scope, Workspace.state.not_in([S.deleting, S.failed])), skip_locked=True
            )
            await tear_down(session, stragglers, kind=kind, actor=_Actor(SYSTEM, None))
        if states:
            return False
        await repository.remove(kind, parent_id)
        log.info("%s %s deleted: none of its workspaces is live", kind.noun, parent_id)
        return True
