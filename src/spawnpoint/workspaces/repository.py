from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute, defer
from sqlalchemy.orm.attributes import instance_state

from spawnpoint import sqlite_fast
from spawnpoint.db import DriverStatement
from spawnpoint.jobs.errors import StaleLease
from spawnpoint.jobs.queue import enqueue_with, lease_statement
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.errors import Conflict, NotFound
from spawnpoint.kit.inserts import insert_together, row_params, rows_statement
from spawnpoint.kit.pagination import PageParams, fetch_page
from spawnpoint.kit.repository import PlatformRepository, ScopedRepository
from spawnpoint.models import (
    Budget,
    Job,
    Plan,
    Project,
    TemplateVersion,
    Tenant,
    TenantUsage,
    Workspace,
    WorkspaceEvent,
    WorkspaceState,
)
from spawnpoint.models.workspaces import IDLE_SWEEP_PREDICATE
from spawnpoint.sqlite_fast import FastStatement
from spawnpoint.uow import unit_of
from spawnpoint.workspaces.schemas import Usage


def with_spec() -> Select[Workspace, dict[str, Any]]:
    """Workspaces with the spec of the template version they were spawned from."""
    return select(Workspace, TemplateVersion.spec).outerjoin(
        TemplateVersion,
        (TemplateVersion.template_id == Workspace.template_id)
        & (TemplateVersion.version == Workspace.template_version),
    )


def usage_statement(
    tenant_id: uuid.UUID | ColumnElement[uuid.UUID],
) -> Select[int, Decimal, int, int]:
    """The tenant's usage counters (`TenantUsage`); no row while it never had a workspace."""
    return select(
        TenantUsage.workspaces, TenantUsage.cpu, TenantUsage.memory_mb, TenantUsage.storage_gb
    ).where(TenantUsage.tenant_id == tenant_id)


USAGE_KEYS = ("workspaces", "cpu", "memory_mb", "storage_gb")


def usage_from_row(row: Sequence[Any] | None) -> Usage:
    if row is None:
        return Usage(workspaces=0, cpu=0.0, memory_mb=0, storage_gb=0)
    count, cpu, memory, storage = row
    # SQLite keeps the cpu counter as a binary float; four decimals is the column's scale.
    return Usage(
        workspaces=int(count),
        cpu=round(float(cpu), 4),
        memory_mb=int(memory),
        storage_gb=int(storage),
    )


class WorkspaceRepository(ScopedRepository[Workspace]):
    model = Workspace
    noun = "workspace"

    async def page_filtered(
        self,
        params: PageParams,
        *,
        state: WorkspaceState | None = None,
        owner_id: uuid.UUID | None = None,
        template_id: uuid.UUID | None = None,
        project_id: uuid.UUID | None = None,
    ) -> tuple[list[Workspace], str | None]:
        """One page of readable workspaces matching every filter given.

        Filters narrow the readable statement and never widen it: another tenant's owner,
        template or project id matches nothing, exactly like an id nobody has.
        """
        conditions = [
            column == value
            for column, value in (
                (Workspace.state, state),
                (Workspace.owner_id, owner_id),
                (Workspace.template_id, template_id),
                (Workspace.project_id, project_id),
            )
            if value is not None
        ]
        return await self.page(params, *conditions)

    async def read(self, workspace_id: uuid.UUID) -> Workspace:
        """`get` for a read that changes nothing: on SQLite, a detached row read with one
        compiled statement on the connection itself (a status poll's whole database work;
        `spawnpoint.sqlite_fast`), scoped exactly as `readable()` is."""
        if self.session.get_bind().dialect.name != "sqlite":
            return await self.get(workspace_id)
        scoped, values = self.compiled_scope(workspace_id=workspace_id)
        (outcome,) = await sqlite_fast.run(self.session, [(_fast_read(scoped), values)])
        row = outcome.one_or_none()
        if row is None:
            raise self.not_found()
        return _clean(READ_COLUMNS, row)

    async def get_for_update(self, workspace_id: uuid.UUID) -> Workspace:
        statement = self.readable().where(Workspace.id == workspace_id).with_for_update()
        found = (await self.session.execute(statement)).scalar_one_or_none()
        if found is None:
            raise NotFound("Workspace not found.")
        return found

    async def by_external_ref(self, external_ref: str) -> Workspace:
        """The caller's own tenant's workspace for a permit, for operators too.

        A permit id (`external_ref`) is unique within a tenant only, so across tenants it
        could name several workspaces.
        """
        statement = select(Workspace).where(
            Workspace.external_ref == external_ref, self.tenant_condition(Workspace.tenant_id)
        )
        found = (await self.session.execute(statement)).scalar_one_or_none()
        if found is None:
            raise NotFound("Workspace not found.")
        return found

    async def usage(self, tenant_id: uuid.UUID) -> Usage:
        found = (await self.session.execute(usage_statement(tenant_id))).one_or_none()
        return usage_from_row(found)

    async def page_events(
        self, workspace_id: uuid.UUID, params: PageParams
    ) -> tuple[list[WorkspaceEvent], str | None]:
        """One page of a workspace's events, scoped by the events' own `tenant_id`."""
        statement = select(WorkspaceEvent).where(
            WorkspaceEvent.workspace_id == workspace_id, *self.owned_by(WorkspaceEvent.tenant_id)
        )
        rows, cursor = await fetch_page(
            self.session, statement, key=WorkspaceEvent.id, params=params
        )
        return [row[0] for row in rows], cursor


# The hot paths' statements. Where PostgreSQL gets a pipelined shape, both shapes sit in
# the same method and tests/workspaces/test_hot_path_contract.py runs both.

TENANT_COLUMNS = tuple(Tenant.__table__.c)
PLAN_COLUMNS = tuple(Plan.__table__.c)
BUDGET_COLUMNS = tuple(Budget.__table__.c)
# Everything but `parameters`, which no driver gets.
JOB_COLUMNS = tuple(c for c in Workspace.__table__.c if c.key != "parameters")
DOCUMENTS = (Workspace.parameters, Workspace.connection, Workspace.driver_state)


def _tenant_lock(tenant_id: uuid.UUID | ColumnElement[uuid.UUID]) -> Select[Any]:
    """The tenant row, locked, with its plan.

    FOR NO KEY UPDATE serialises spawns per tenant on PostgreSQL without blocking the
    key-share locks that foreign-key checks take: a plain FOR UPDATE made every worker
    inserting a workspace event wait for the spawn holding its tenant. On SQLite the write
    transaction already began IMMEDIATE, which serialises every writer.
    """
    return (
        select(*TENANT_COLUMNS, *PLAN_COLUMNS)
        .join_from(Tenant, Plan, Plan.id == Tenant.plan_id)
        .where(Tenant.id == tenant_id)
        .with_for_update(of=Tenant, key_share=True)
    )


def _tenant_read(tenant_id: uuid.UUID | ColumnElement[uuid.UUID]) -> Select[Any]:
    """`_tenant_lock` without the lock."""
    return (
        select(*TENANT_COLUMNS, *PLAN_COLUMNS)
        .join_from(Tenant, Plan, Plan.id == Tenant.plan_id)
        .where(Tenant.id == tenant_id)
    )


# Locks the tenant, then refuses (raises) when one more workspace of this size breaks its
# plan: migration 0020's function, the SQL twin of `WorkspaceService`'s `quota_violations`.
_ADMIT = text(
    "SELECT spawnpoint_admit_spawn(:tenant_id, CAST(:cpu AS numeric), :memory_mb, :storage_gb)"
)


@dataclass(frozen=True)
class Admission:
    """What one more workspace takes of its tenant's plan, checked as its rows are written,
    and the plan and usage the spawn was decided on (`facts_for_spawn`)."""

    tenant_id: uuid.UUID
    cpu: Decimal
    memory_mb: int
    storage_gb: int
    plan: Plan
    usage: Usage


def breaks_plan(plan: Plan, usage: Usage, admit: Admission) -> bool:
    """Whether one more workspace of `admit`'s size breaks `plan` at `usage`: SQLite's
    check, the same sums and comparisons as `spawnpoint_admit_spawn` (Decimal cpu)."""
    return (
        usage.workspaces + 1 > plan.max_workspaces
        or Decimal(str(usage.cpu)) + admit.cpu > plan.max_cpu
        or usage.memory_mb + admit.memory_mb > plan.max_memory_mb
        or usage.storage_gb + admit.storage_gb > plan.max_storage_gb
    )


class OverQuota(Exception):
    """The tenant's usage, read under its lock, leaves no room for the workspace."""

    def __init__(self, usage: Usage) -> None:
        super().__init__("quota exceeded")
        self.usage = usage


def _budgets_in_scope(
    tenant_id: uuid.UUID | ColumnElement[uuid.UUID],
    project_id: uuid.UUID | ColumnElement[uuid.UUID] | None,
    user_id: uuid.UUID | ColumnElement[uuid.UUID],
) -> Select[Any]:
    """The budgets that limit a spawn: the tenant's, its project's and its user's."""
    return (
        select(*BUDGET_COLUMNS)
        .where(
            Budget.tenant_id == tenant_id,
            or_(
                and_(Budget.scope == "tenant", Budget.scope_id == tenant_id),
                and_(Budget.scope == "project", Budget.scope_id == project_id),
                and_(Budget.scope == "user", Budget.scope_id == user_id),
            ),
        )
        .order_by(Budget.id)
    )


def _budget(row: Sequence[Any]) -> Budget:
    return Budget(**{c.key: v for c, v in zip(BUDGET_COLUMNS, row, strict=True)})


def _tenant_and_plan(row: Sequence[Any]) -> tuple[Tenant, Plan]:
    """Detached rows read by `_tenant_lock`."""
    split = len(TENANT_COLUMNS)
    tenant = Tenant(**{c.key: v for c, v in zip(TENANT_COLUMNS, row[:split], strict=True)})
    plan = Plan(**{c.key: v for c, v in zip(PLAN_COLUMNS, row[split:], strict=True)})
    return tenant, plan


def _job_load(workspace_id: uuid.UUID | ColumnElement[uuid.UUID]) -> Select[Any]:
    """A workspace's columns (but `parameters`), locked, with its version's spec."""
    return (
        select(*JOB_COLUMNS, TemplateVersion.__table__.c.spec)
        .outerjoin(
            TemplateVersion,
            (TemplateVersion.template_id == Workspace.template_id)
            & (TemplateVersion.version == Workspace.template_version),
        )
        .where(Workspace.id == workspace_id)
        .with_for_update(of=Workspace)
    )


@dataclass(frozen=True)
class _Compiled:
    lock: DriverStatement
    tenant: DriverStatement
    admit: DriverStatement
    usage: DriverStatement
    load: DriverStatement
    lease: DriverStatement
    event: DriverStatement
    budgets: DriverStatement


@functools.lru_cache(maxsize=8)
def _compiled(dialect: Dialect) -> _Compiled:
    """The pipelined statements, compiled once per dialect."""
    tenant_id = bindparam("tenant_id", type_=Tenant.__table__.c.id.type, required=False)
    workspace_id = bindparam("workspace_id", type_=Workspace.__table__.c.id.type, required=False)
    lease = lease_statement(
        bindparam("job_id", type_=Job.__table__.c.id.type, required=False),
        bindparam("fencing_token", type_=Job.__table__.c.fencing_token.type, required=False),
    )
    event_shape = ((WorkspaceEvent, tuple(c.key for c in WorkspaceEvent.__table__.c)),)
    uuid_type = Budget.__table__.c.scope_id.type
    project_id = bindparam("project_id", type_=uuid_type, required=False)
    user_id = bindparam("user_id", type_=uuid_type, required=False)
    return _Compiled(
        lock=DriverStatement(_tenant_lock(tenant_id), dialect),
        tenant=DriverStatement(_tenant_read(tenant_id), dialect),
        admit=DriverStatement(_ADMIT.bindparams(tenant_id), dialect),
        usage=DriverStatement(usage_statement(tenant_id), dialect),
        load=DriverStatement(_job_load(workspace_id), dialect),
        lease=DriverStatement(lease, dialect),
        event=rows_statement(dialect, event_shape),
        budgets=DriverStatement(_budgets_in_scope(tenant_id, project_id, user_id), dialect),
    )


@dataclass(frozen=True)
class _Fast:
    lock: FastStatement
    usage: FastStatement
    load: FastStatement
    lease: FastStatement
    budgets: FastStatement


@functools.lru_cache(maxsize=1)
def _fast() -> _Fast:
    """The same statements for SQLite's connection itself (`spawnpoint.sqlite_fast`)."""
    tenant_id = bindparam("tenant_id", type_=Tenant.__table__.c.id.type, required=False)
    workspace_id = bindparam("workspace_id", type_=Workspace.__table__.c.id.type, required=False)
    lease = lease_statement(
        bindparam("job_id", type_=Job.__table__.c.id.type, required=False),
        bindparam("fencing_token", type_=Job.__table__.c.fencing_token.type, required=False),
    )
    uuid_type = Budget.__table__.c.scope_id.type
    project_id = bindparam("project_id", type_=uuid_type, required=False)
    user_id = bindparam("user_id", type_=uuid_type, required=False)
    return _Fast(
        lock=FastStatement(_tenant_lock(tenant_id)),
        usage=FastStatement(usage_statement(tenant_id)),
        load=FastStatement(_job_load(workspace_id)),
        lease=FastStatement(lease),
        budgets=FastStatement(_budgets_in_scope(tenant_id, project_id, user_id)),
    )


READ_COLUMNS = tuple(Workspace.__table__.c)


@functools.lru_cache(maxsize=2)
def _fast_read(scoped: bool) -> FastStatement:
    """One workspace by id; `scoped`: of the tenant `:tenant_id` only (`visible()`)."""
    table = Workspace.__table__
    conditions = [table.c.id == bindparam("workspace_id", type_=table.c.id.type)]
    if scoped:
        conditions.append(table.c.tenant_id == bindparam("tenant_id", type_=table.c.id.type))
    return FastStatement(select(*READ_COLUMNS).where(*conditions))


@functools.lru_cache(maxsize=64)
def _fast_update(columns: tuple[str, ...]) -> FastStatement:
    """SQLite's `_update_statement`."""
    table = Workspace.__table__
    values = {
        name: bindparam(name, type_=table.c[name].type, required=False)
        for name in (*columns, "updated_at")
    }
    workspace_id = bindparam("workspace_id", type_=table.c.id.type, required=False)
    return FastStatement(update(Workspace).where(Workspace.id == workspace_id).values(values))


@functools.lru_cache(maxsize=64)
def _update_statement(dialect: Dialect, columns: tuple[str, ...]) -> DriverStatement:
    """UPDATE of exactly `columns` (and `updated_at`) of one workspace, compiled once."""
    table = Workspace.__table__
    values = {
        name: bindparam(name, type_=table.c[name].type, required=False)
        for name in (*columns, "updated_at")
    }
    workspace_id = bindparam("workspace_id", type_=table.c.id.type, required=False)
    return DriverStatement(
        update(Workspace).where(Workspace.id == workspace_id).values(values), dialect
    )


def _clean(columns: Sequence[Any], values: Sequence[Any]) -> Workspace:
    """A detached workspace whose loaded values count as stored: what changes is tracked."""
    workspace = Workspace()
    # Straight into the instance's dict, as a load leaves them: an attribute set later
    # records its loaded value in `committed_state` (`changed_columns`).
    instance_state(workspace).dict.update(zip(_keys(tuple(columns)), values, strict=True))
    return workspace


@functools.lru_cache(maxsize=4)
def _keys(columns: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(column.key for column in columns)


_WORKSPACE_COLUMNS = frozenset(Workspace.__table__.c.keys())


def changed_columns(workspace: Workspace) -> dict[str, Any]:
    """Every mapped column of `workspace` set since it was loaded (`_clean`) to another
    value, with its new value."""
    state = instance_state(workspace)
    current = state.dict
    return {
        key: current[key]
        for key, loaded in state.committed_state.items()
        if key in _WORKSPACE_COLUMNS and key in current and current[key] != loaded
    }


class SpawnRows:
    """What a spawn reads under the tenant lock and the rows it writes."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock_tenant(self, tenant_id: uuid.UUID) -> tuple[Tenant, Plan]:
        """The tenant (locked until the transaction ends) and its plan, as detached rows."""
        row = (await self.session.execute(_tenant_lock(tenant_id))).one_or_none()
        if row is None:
            raise NotFound("Tenant not found.")
        return _tenant_and_plan(row)

    async def lock_tenant_with_usage(self, tenant_id: uuid.UUID) -> tuple[Tenant, Plan, Usage]:
        """`lock_tenant`, and the usage counters as of the moment the lock is held.

        On PostgreSQL both statements go out in one pipeline, each with its own snapshot
        (READ COMMITTED), so the usage counts every spawn committed before the lock was
        granted.
        """
        tenant, plan, usage, _ = await self._tenant_facts(tenant_id, None, lock=True)
        return tenant, plan, usage

    async def facts_for_spawn(
        self, tenant_id: uuid.UUID, *, budgets_for: tuple[uuid.UUID | None, uuid.UUID]
    ) -> tuple[Tenant, Plan, Usage, list[Budget]]:
        """The tenant and its plan (detached), its usage counters, and the budgets in scope
        of a spawn by `budgets_for` (the project, or None, and the user): what a spawn is
        decided on, in one round trip on PostgreSQL.

        Nothing is locked on PostgreSQL: the usage is a snapshot for the quick quota check
        and the policy, and `insert` checks the plan again under the tenant lock, in the
        round trip that writes the rows and commits, so spawns of one tenant hold its lock
        for that round trip only, never across the policy's decision or the event loop's
        other work. On SQLite the write transaction (BEGIN IMMEDIATE) serialises every
        writer from its first statement, so what is read here still holds at `insert`.
        """
        return await self._tenant_facts(tenant_id, budgets_for, lock=False)

    async def _tenant_facts(
        self,
        tenant_id: uuid.UUID,
        budgets_for: tuple[uuid.UUID | None, uuid.UUID] | None,
        *,
        lock: bool,
    ) -> tuple[Tenant, Plan, Usage, list[Budget]]:
        if not unit_of(self.session).is_postgres:
            return await self._lock_tenant_for_spawn_sqlite(tenant_id, budgets_for)
        compiled = _compiled(self.session.get_bind().dialect)
        values: dict[str, Any] = {"tenant_id": tenant_id}
        steps: list[tuple[DriverStatement, dict[str, Any]]] = []
        if budgets_for is not None:
            project_id, user_id = budgets_for
            scope = {"tenant_id": tenant_id, "project_id": project_id, "user_id": user_id}
            steps.append((compiled.budgets, scope))
        read = compiled.lock if lock else compiled.tenant
        cursors = await unit_of(self.session).pipelined(
            [*steps, (read, values), (compiled.usage, values)]
        )
        budget_rows = await cursors[0].fetchall() if steps else []
        row = await cursors[-2].fetchone()
        if row is None:
            raise NotFound("Tenant not found.")
        usage = usage_from_row(await cursors[-1].fetchone())
        return (*_tenant_and_plan(row), usage, [_budget(r) for r in budget_rows])

    async def _lock_tenant_for_spawn_sqlite(
        self, tenant_id: uuid.UUID, budgets_for: tuple[uuid.UUID | None, uuid.UUID] | None
    ) -> tuple[Tenant, Plan, Usage, list[Budget]]:
        """SQLite's `lock_tenant_for_spawn`: its write transaction began IMMEDIATE, which
        serialises every writer; the statements run on the connection itself."""
        fast = _fast()
        values: dict[str, Any] = {"tenant_id": tenant_id}
        steps: list[sqlite_fast.Step] = [(fast.lock, values), (fast.usage, values)]
        if budgets_for is not None:
            project_id, user_id = budgets_for
            scope = {"tenant_id": tenant_id, "project_id": project_id, "user_id": user_id}
            steps.append((fast.budgets, scope))
        outcomes = await sqlite_fast.run(self.session, steps)
        row = outcomes[0].one_or_none()
        if row is None:
            raise NotFound("Tenant not found.")
        budgets = [_budget(r) for r in outcomes[2].rows] if budgets_for is not None else []
        usage = usage_from_row(outcomes[1].one_or_none())
        return (*_tenant_and_plan(row), usage, budgets)

    async def project(self, tenant_id: uuid.UUID, project_id: uuid.UUID) -> Project | None:
        """The tenant's project `project_id`, or None."""
        statement = select(Project).where(Project.id == project_id, Project.tenant_id == tenant_id)
        found: Project | None = (await self.session.execute(statement)).scalar_one_or_none()
        return found

    async def insert(
        self,
        workspace: dict[str, Any],
        event: dict[str, Any],
        job: dict[str, Any],
        *,
        admit: Admission,
        final: bool,
    ) -> None:
        """Insert the workspace, its first event and its job in one round trip.

        On PostgreSQL the round trip begins with `admit`'s check (`spawnpoint_admit_spawn`):
        it takes the tenant lock and reads the usage counters after it, so concurrent
        spawns never exceed the plan, and the lock is held from there to the COMMIT. With
        `final` the caller writes nothing more, so the unit of work commits in the same
        round trip (with its outbox rows and audit entries). On SQLite the write
        transaction has serialised the spawn since `facts_for_spawn` read the plan and
        usage `admit` carries, so they still hold: they are checked (`breaks_plan`) with no
        statement.

        Raises:
            OverQuota: the workspace would break the plan (PostgreSQL, under the lock).
            Conflict: the external_ref is taken, the project or owner went meanwhile, or
                the tenant is being deleted.
            NotFound: the tenant is gone.
        """
        before: list[tuple[DriverStatement, dict[str, Any]]] = []
        if not unit_of(self.session).is_postgres:
            if breaks_plan(admit.plan, admit.usage, admit):
                raise OverQuota(admit.usage)
        else:
            need = {
                "tenant_id": admit.tenant_id,
                "cpu": admit.cpu,
                "memory_mb": admit.memory_mb,
                "storage_gb": admit.storage_gb,
            }
            before.append((_compiled(self.session.get_bind().dialect).admit, need))
        try:
            await enqueue_with(
                self.session,
                [(Workspace, workspace), (WorkspaceEvent, event)],
                job,
                final=final,
                before=before,
            )
        except psycopg.Error as exc:
            if exc.sqlstate == "SP429":
                detail = json.loads(exc.diag.message_detail or "{}")
                raise OverQuota(usage_from_row([detail[k] for k in USAGE_KEYS])) from exc
            if exc.sqlstate == "SP409":
                raise Conflict(
                    "The tenant is being deleted; nothing can be spawned in it."
                ) from exc
            if exc.sqlstate == "SP404":
                raise NotFound("Tenant not found.") from exc
            raise
        except IntegrityError as exc:
            if "external_ref" in str(exc.orig) or "UNIQUE" in str(exc.orig):
                raise Conflict("A workspace with this external_ref already exists.") from exc
            # A foreign key: the project or the owner went while this spawn was checked.
            raise Conflict(
                "The project or the user of this spawn was deleted meanwhile; nothing was created."
            ) from exc


class JobRows:
    """The workspace rows a job handler reads and writes, fenced by the job's lease."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def load(
        self, workspace_id: uuid.UUID, *, lease: tuple[uuid.UUID, int] | None = None
    ) -> tuple[Workspace, dict[str, Any] | None] | None:
        """The workspace, locked, with its template version's spec; None when it is gone.

        The workspace is detached: `save` writes back exactly the columns set on it since.
        With `lease` (job id, fencing token), first check that the job's lease is still
        held and lock the job row (`hold_lease`); on PostgreSQL both statements and the
        BEGIN go out in one round trip.

        Raises:
            StaleLease: `lease` is no longer held.
        """
        uow = unit_of(self.session)
        if not uow.is_postgres:
            found = await self._load_sqlite(workspace_id, lease)
        else:
            compiled = _compiled(self.session.get_bind().dialect)
            steps: list[tuple[DriverStatement, dict[str, Any]]] = [
                (compiled.load, {"workspace_id": workspace_id})
            ]
            if lease is not None:
                steps.insert(0, (compiled.lease, {"job_id": lease[0], "fencing_token": lease[1]}))
            cursors = await uow.pipelined(steps)
            if lease is not None and await cursors[0].fetchone() is None:
                raise StaleLease(lease[0], lease[1])
            found = await cursors[-1].fetchone()
        if found is None:
            return None
        return _clean(JOB_COLUMNS, found[:-1]), found[-1]

    async def _load_sqlite(
        self, workspace_id: uuid.UUID, lease: tuple[uuid.UUID, int] | None
    ) -> tuple[Any, ...] | None:
        """SQLite's `load` statements, on the connection itself (`spawnpoint.sqlite_fast`)."""
        fast = _fast()
        steps: list[sqlite_fast.Step] = [(fast.load, {"workspace_id": workspace_id})]
        if lease is not None:
            steps.insert(0, (fast.lease, {"job_id": lease[0], "fencing_token": lease[1]}))
        outcomes = await sqlite_fast.run(self.session, steps)
        if lease is not None and outcomes[0].one_or_none() is None:
            raise StaleLease(lease[0], lease[1])
        return outcomes[-1].one_or_none()

    async def save(self, workspace: Workspace, *events: dict[str, Any] | None) -> None:
        """Write the columns set on `workspace` (from `load`) and its events (those not
        None, in order); the last write.

        On PostgreSQL the update, the events, the unit of work's outbox rows and the COMMIT
        go out in one round trip.
        """
        changes = changed_columns(workspace)
        changes["updated_at"] = utcnow()
        new = [(WorkspaceEvent, event) for event in events if event is not None]
        uow = unit_of(self.session)
        columns = tuple(sorted(name for name in changes if name != "updated_at"))
        if not uow.is_postgres:
            await sqlite_fast.run(
                self.session, [(_fast_update(columns), {"workspace_id": workspace.id, **changes})]
            )
            if new:
                await insert_together(self.session, new)
            return
        dialect = self.session.get_bind().dialect
        steps = [(_update_statement(dialect, columns), {"workspace_id": workspace.id, **changes})]
        steps.extend((_compiled(dialect).event, row_params([row])) for row in new)
        await uow.pipelined(steps, final=True)

    async def lock_for_failure(self, workspace_id: uuid.UUID) -> Workspace | None:
        """The workspace, locked and attached, its documents not read (they may be unreadable)."""
        statement = (
            select(Workspace)
            .options(*(defer(c, raiseload=True) for c in DOCUMENTS))
            .where(Workspace.id == workspace_id)
            .with_for_update()
        )
        found: Workspace | None = (await self.session.execute(statement)).scalar_one_or_none()
        return found


def idle_candidates(now: datetime) -> Select[Workspace]:
    """Running workspaces with an idle timeout, idle for a minute at least."""
    return select(Workspace).where(
        # Spelled as the partial index's predicate, so PostgreSQL can use the index
        # (a bound parameter for the state would not match it).
        text(IDLE_SWEEP_PREDICATE),
        # Cheap prefilter on the index: nobody idles for less than a minute.
        Workspace.last_activity_at < now - timedelta(minutes=1),
    )


def expired_candidates(now: datetime) -> Select[Workspace]:
    """Workspaces past their maximum lifetime, not being deleted yet."""
    return select(Workspace).where(
        Workspace.expires_at.is_not(None),
        Workspace.expires_at <= now,
        Workspace.state.not_in([WorkspaceState.deleting, WorkspaceState.deleted]),
    )


def running_on(provisioners: Sequence[str]) -> Select[Workspace]:
    """Running workspaces of the given drivers."""
    return select(Workspace).where(
        Workspace.state == WorkspaceState.running, Workspace.provisioner.in_(list(provisioners))
    )


class SweepRows:
    """The scheduler's sweeps over every tenant's workspaces (system code, unscoped)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def batch(
        self,
        candidates: Select[Workspace],
        *,
        key: tuple[InstrumentedAttribute[Any], ...],
        after: tuple[Any, ...] | None,
        limit: int,
    ) -> list[Workspace]:
        """The next `limit` candidates after `after` in `key` order, locked, skipping
        rows another transaction holds; their documents are not read."""
        statement = candidates.options(*(defer(c, raiseload=True) for c in DOCUMENTS))
        if after is not None:
            statement = statement.where(tuple_(*key) > after)
        found = await self.session.execute(
            statement.order_by(*key).limit(limit).with_for_update(of=Workspace, skip_locked=True)
        )
        return list(found.scalars())

    async def driver_state_and_spec(
        self, workspace_id: uuid.UUID
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A workspace's driver state and its version's spec, read on their own."""
        row = (
            await self.session.execute(
                select(Workspace.driver_state, TemplateVersion.spec)
                .outerjoin(
                    TemplateVersion,
                    (TemplateVersion.template_id == Workspace.template_id)
                    & (TemplateVersion.version == Workspace.template_version),
                )
                .where(Workspace.id == workspace_id)
            )
        ).one()
        return row[0], row[1]


# The columns of the permit documents (status_cache.py); `Row`s of them have the
# attributes the documents are built from.
STATUS_COLUMNS = (
    Workspace.id,
    Workspace.tenant_id,
    Workspace.external_ref,
    Workspace.state,
    Workspace.error,
    Workspace.updated_at,
    Workspace.connection,
)


class StatusRows(PlatformRepository[Workspace]):
    """The permit documents' columns of every tenant's workspaces: the status cache's
    writers are system code (after-commit steps, the repair sweep, the rebuild command)."""

    model = Workspace
    noun = "workspace"

    async def by_ids(self, ids: Sequence[uuid.UUID]) -> list[Any]:
        """The rows of the workspaces `ids` that still exist."""
        statement = select(*STATUS_COLUMNS).where(Workspace.id.in_(list(ids)))
        return list((await self.session.execute(statement)).all())

    async def batch(self, *, after: tuple[uuid.UUID, str] | None, limit: int) -> list[Any]:
        """The next `limit` workspaces with a permit id after `after`, in (tenant, permit id)
        order: the partial unique index on both serves it."""
        statement = select(*STATUS_COLUMNS).where(Workspace.external_ref.is_not(None))
        if after is not None:
            statement = statement.where(tuple_(Workspace.tenant_id, Workspace.external_ref) > after)
        statement = statement.order_by(Workspace.tenant_id, Workspace.external_ref).limit(limit)
        return list((await self.session.execute(statement)).all())

    async def existing(self, pairs: Sequence[tuple[uuid.UUID, str]]) -> set[tuple[uuid.UUID, str]]:
        """Which (tenant, permit id) pairs name a workspace."""
        statement = select(Workspace.tenant_id, Workspace.external_ref).where(
            tuple_(Workspace.tenant_id, Workspace.external_ref).in_(list(pairs))
        )
        return {(row[0], str(row[1])) for row in await self.session.execute(statement)}
