"""SQL of deletions that wait for workspaces: who is live, who is marked, what goes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, func, or_, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import defer

from spawnpoint.kit.errors import Conflict
from spawnpoint.kit.repository import PlatformRepository
from spawnpoint.models import Project, Template, Tenant, TenantUsage, User, Workspace
from spawnpoint.models import WorkspaceState as S

Parent = Tenant | Project | User | Template
DOCUMENTS = (Workspace.parameters, Workspace.connection, Workspace.driver_state)


def _tenant_scope(tenant_id: uuid.UUID) -> ColumnElement[bool]:
    # Its templates go with it, so workspaces spawned from them elsewhere count too.
    templates = select(Template.id).where(Template.tenant_id == tenant_id)
    return or_(Workspace.tenant_id == tenant_id, Workspace.template_id.in_(templates))


@dataclass(frozen=True)
class ParentKind:
    """A kind of object whose deletion waits for its workspaces.

    Args:
        scope: The workspaces that belong to the object with a given id.
        purge_deleted: Deleted workspace rows must go first: `workspaces.template_id` is
            ON DELETE RESTRICT. (A project's or an owner's deleted workspaces are kept,
            their reference set to NULL.)
    """

    noun: str
    model: type[Parent]
    scope: Callable[[uuid.UUID], ColumnElement[bool]]
    purge_deleted: bool


TENANT = ParentKind("tenant", Tenant, _tenant_scope, purge_deleted=True)
PROJECT = ParentKind("project", Project, lambda i: Workspace.project_id == i, purge_deleted=False)
USER = ParentKind("user", User, lambda i: Workspace.owner_id == i, purge_deleted=False)
TEMPLATE = ParentKind(
    "template", Template, lambda i: Workspace.template_id == i, purge_deleted=True
)
# The finisher's order: a tenant last, after whatever of its own it may have marked.
KINDS = (TEMPLATE, PROJECT, USER, TENANT)

LIVE = Workspace.state != S.deleted


class TeardownRepository(PlatformRepository[Workspace]):
    """Unscoped: the deletion finisher serves every tenant, and a request's parent (a
    tenant, project, user or template) was read through its scoped repository first.
    A platform template's workspaces belong to many tenants; `live_summary` names only
    the caller's."""

    model = Workspace

    async def hold_spawns(self, tenant_id: uuid.UUID) -> None:
        """Take the tenant's spawn lock (FOR NO KEY UPDATE, as a spawn does) until commit."""
        await self.session.execute(
            select(Tenant.id).where(Tenant.id == tenant_id).with_for_update(key_share=True)
        )

    noun = "workspace"

    async def live_summary(
        self, scope: ColumnElement[bool], *, listed: int, visible_tenant: uuid.UUID | None
    ) -> tuple[int, list[uuid.UUID]]:
        """How many workspaces in `scope` are live, and the ids of the first `listed`.

        Only ids of `visible_tenant`'s workspaces are listed (all for None): a platform
        template's workspaces belong to many tenants, and their ids are theirs alone.
        """
        count = await self.session.scalar(
            select(func.count()).select_from(Workspace).where(scope, LIVE)
        )
        if not count:
            return 0, []
        statement = select(Workspace.id).where(scope, LIVE)
        if visible_tenant is not None:
            statement = statement.where(Workspace.tenant_id == visible_tenant)
        ids = await self.session.scalars(statement.order_by(Workspace.id).limit(listed))
        return int(count), list(ids)

    async def live_states(self, scope: ColumnElement[bool]) -> list[tuple[uuid.UUID, str]]:
        rows = await self.session.execute(
            select(Workspace.id, Workspace.state).where(scope, LIVE).order_by(Workspace.id)
        )
        return [(row.id, row.state) for row in rows]

    async def lock_live(
        self, scope: ColumnElement[bool], *, skip_locked: bool = False
    ) -> list[Workspace]:
        """The live workspaces in `scope`, locked; their JSON documents are not read."""
        statement = (
            select(Workspace)
            .options(*(defer(c, raiseload=True) for c in DOCUMENTS))
            .where(scope, LIVE)
            .order_by(Workspace.id)
            .with_for_update(of=Workspace, skip_locked=skip_locked)
        )
        return list(await self.session.scalars(statement))

    async def marked(
        self, kind: ParentKind, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[tuple[datetime, uuid.UUID]]:
        """Objects of `kind` marked for deletion, oldest mark first, locked, after `after`.

        FOR NO KEY UPDATE: workers recording events of the objects' workspaces (foreign
        keys to the tenant) go on meanwhile.
        """
        model: Any = kind.model
        statement = select(model.deletion_requested_at, model.id).where(
            model.deletion_requested_at.is_not(None)
        )
        if after is not None:
            statement = statement.where(tuple_(model.deletion_requested_at, model.id) > after)
        rows = await self.session.execute(
            statement.order_by(model.deletion_requested_at, model.id)
            .limit(limit)
            .with_for_update(skip_locked=True, key_share=True)
        )
        return [(row[0], row[1]) for row in rows]

    async def remove(self, kind: ParentKind, parent_id: uuid.UUID) -> None:
        """Delete the object (its rows cascade) once none of its workspaces is live.

        Raises:
            Conflict: something the database protects still refers to it.
        """
        model: Any = kind.model
        try:
            if kind.purge_deleted:
                await self.session.execute(
                    delete(Workspace)
                    .where(kind.scope(parent_id), Workspace.state == S.deleted)
                    .execution_options(synchronize_session=False)
                )
            await self.session.execute(
                delete(model)
                .where(model.id == parent_id)
                .execution_options(synchronize_session=False)
            )
        except IntegrityError as exc:
            raise Conflict(f"The {kind.noun} is still referenced.") from exc
        if kind is TENANT:
            # Its workspaces went with it (ON DELETE CASCADE); their usage counters go now.
            await self.session.execute(
                delete(TenantUsage).where(TenantUsage.tenant_id == parent_id)
            )
