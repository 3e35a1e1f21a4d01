"""One contract for the hot-path repository methods, whatever statements each backend runs.

PostgreSQL gets pipelined statements (several in one round trip, the COMMIT riding with the
last), SQLite the plain ones. The same scenario runs through both, with the same ids and
times, and the rows each leaves behind must be the same.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from conftest import DRY_RUN_SPEC, PostgresDatabase, make_settings, postgres_or_skip
from spawnpoint.db import Database
from spawnpoint.jobs.errors import StaleLease
from spawnpoint.jobs.queue import claim, queued_job
from spawnpoint.kit.errors import Conflict
from spawnpoint.kit.inserts import with_defaults
from spawnpoint.migrations import upgrade
from spawnpoint.models import (
    Budget,
    Job,
    OutboxEvent,
    Plan,
    Template,
    TemplateVersion,
    Tenant,
    User,
    Workspace,
    WorkspaceEvent,
    WorkspaceState,
)
from spawnpoint.workspaces.lifecycle import announce, creation_event, transition
from spawnpoint.workspaces.repository import Admission, JobRows, OverQuota, SpawnRows

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BASE = 0xC0FFEE << 100  # clear of the demo rows the migrations seed
TENANT, PLAN, USER = (uuid.UUID(int=BASE + n) for n in (1, 2, 3))
TEMPLATE, WORKSPACE, JOB = (uuid.UUID(int=BASE + n) for n in (4, 5, 6))
# Budgets: the tenant's and the user's are in scope of the user's spawn without a project;
# another user's and a project's are not.
BUDGETS = [
    (uuid.UUID(int=BASE + 10), "tenant", TENANT),
    (uuid.UUID(int=BASE + 11), "user", USER),
    (uuid.UUID(int=BASE + 12), "user", uuid.UUID(int=BASE + 99)),
    (uuid.UUID(int=BASE + 13), "project", uuid.UUID(int=BASE + 98)),
]
PLAN_CPU, PLAN_STORAGE = Decimal("8.3"), 100
# Generated where the rows are written (uuid7 ids of events, the clock's updated_at).
VOLATILE = {"id", "created_at", "updated_at", "started_at", "lease_expires_at"}


@pytest.fixture(scope="module")
async def databases(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[list[Database]]:
    postgres_or_skip()
    data_dir: Path = tmp_path_factory.mktemp("contract")
    sqlite = make_settings(f"sqlite+aiosqlite:///{data_dir / 'contract.db'}", data_dir)
    with PostgresDatabase("spawnpoint_contract") as pg:
        postgres = make_settings(pg.url, data_dir)
        for settings in (sqlite, postgres):
            # One at a time: Alembic's migration context is process-global.
            await asyncio.to_thread(upgrade, settings)
        opened = [Database(s.sqlalchemy_url) for s in (sqlite, postgres)]
        for database in opened:
            await _seed(database)
        yield opened
        for database in opened:
            await database.dispose()


async def _seed(database: Database) -> None:
    async with database.transaction(write=True) as session:
        session.add(
            Plan(
                id=PLAN,
                name="contract",
                max_workspaces=5,
                max_cpu=PLAN_CPU,
                max_memory_mb=16384,
                max_storage_gb=PLAN_STORAGE,
                max_concurrent_jobs=5,
                max_jobs_per_day=500,
                monthly_budget=Decimal("12.50"),
            )
        )
        await session.flush()
        session.add(Tenant(id=TENANT, name="contract", slug="contract", plan_id=PLAN))
        await session.flush()
        session.add(User(id=USER, tenant_id=TENANT, email="c@example.test", role="member"))
        for number, (budget_id, scope, scope_id) in enumerate(BUDGETS):
            session.add(
                Budget(
                    id=budget_id,
                    tenant_id=TENANT,
                    scope=scope,
                    scope_id=scope_id,
                    limit_amount=Decimal(10 + number),
                    warn_ratio=Decimal("0.8"),
                    hard_ratio=Decimal(1),
                    warned_period=NOW if scope == "user" else None,
                )
            )
        session.add(Template(id=TEMPLATE, tenant_id=TENANT, name="t", provisioner="dry-run"))
        await session.flush()
        session.add(
            TemplateVersion(
                template_id=TEMPLATE,
                version=1,
                tenant_id=TENANT,
                provisioner="dry-run",
                spec=DRY_RUN_SPEC,
            )
        )


def _spawn_rows(
    workspace_id: uuid.UUID = WORKSPACE, job_id: uuid.UUID = JOB
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    workspace = with_defaults(
        Workspace,
        {
            "id": workspace_id,
            "tenant_id": TENANT,
            "project_id": None,
            "owner_id": USER,
            "template_id": TEMPLATE,
            "template_version": 1,
            "provisioner": "dry-run",
            "name": "contract",
            "state": WorkspaceState.pending,
            "external_ref": f"permit-{workspace_id.int - BASE}",
            "parameters": {"a": [1, 2]},
            "cpu": Decimal("1.5"),
            "memory_mb": 512,
            "storage_gb": 1,
            "idle_timeout_minutes": None,
            "driver_state": {},
            "connection": None,
            "error": None,
            "started_at": None,
            "created_at": NOW,
            "updated_at": NOW,
            "last_activity_at": NOW,
            "expires_at": NOW + timedelta(days=1),
        },
    )
    event = creation_event(workspace_id=workspace_id, tenant_id=TENANT, actor_id=USER, now=NOW)
    job = queued_job(
        job_type="workspace.provision",
        payload={"workspace_id": str(workspace_id)},
        tenant_id=TENANT,
        actor_id=USER,
    )
    job.update(id=job_id, run_after=NOW, created_at=NOW, updated_at=NOW)
    return workspace, event, job


async def _scenario(database: Database) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with database.unit_of_work(write=True) as uow:
        tenant, plan, usage = await SpawnRows(uow.session).lock_tenant_with_usage(TENANT)
        seen["locked"] = (tenant.slug, plan.name, plan.monthly_budget, usage.model_dump())
        workspace, event, job = _spawn_rows()
        announce(uow.session, workspace["external_ref"], event)
        admit = await _admission(uow.session, cpu=Decimal("1.5"), memory_mb=512, storage_gb=1)
        await SpawnRows(uow.session).insert(workspace, event, job, admit=admit, final=True)
    async with database.unit_of_work(write=True) as uow:
        _, _, usage = await SpawnRows(uow.session).lock_tenant_with_usage(TENANT)
        seen["usage"] = usage.model_dump()
    async with database.unit_of_work(write=True) as uow:
        *_, budgets = await SpawnRows(uow.session).facts_for_spawn(TENANT, budgets_for=(None, USER))
        seen["budgets"] = [
            (b.id, b.scope, b.scope_id, float(b.limit_amount), b.warned_period) for b in budgets
        ]
    async with database.unit_of_work(write=True) as uow:
        (claimed,) = await claim(
            uow.session, owner="contract", limit=5, lease=timedelta(minutes=1), now=NOW
        )
        seen["claimed"] = (claimed.id, claimed.type, claimed.payload, claimed.attempt)
    async with database.unit_of_work(write=True) as uow:
        rows = JobRows(uow.session)
        loaded = await rows.load(WORKSPACE, lease=(JOB, claimed.fencing_token))
        assert loaded is not None
        workspace_row, spec = loaded
        seen["loaded"] = (workspace_row.state, workspace_row.external_ref, spec)
        event_values = transition(
            uow.session,
            workspace_row,
            WorkspaceState.provisioning,
            actor="system",
            reason="contract",
            now=NOW,
        )
        workspace_row.driver_state = {"pid": 7}
        workspace_row.connection = {"url": "http://127.0.0.1:1"}
        await rows.save(workspace_row, event_values)
    stale = None
    try:
        async with database.unit_of_work(write=True) as uow:
            await JobRows(uow.session).load(WORKSPACE, lease=(JOB, claimed.fencing_token + 1))
    except StaleLease as exc:
        stale = type(exc).__name__
    seen["stale"] = stale
    async with database.unit_of_work(write=True) as uow:
        failing = await JobRows(uow.session).lock_for_failure(WORKSPACE)
        assert failing is not None
        seen["failing"] = (failing.state, failing.error)
        assert await JobRows(uow.session).lock_for_failure(uuid.uuid4()) is None
    # A workspace one more than the plan allows is refused as its rows would be written,
    # with the usage read then; nothing of it is stored.
    more = {"workspace_id": uuid.UUID(int=BASE + 7), "job_id": uuid.UUID(int=BASE + 8)}
    cpu_left = PLAN_CPU - Decimal("1.5")
    for too_big in ({"cpu": cpu_left + Decimal("0.0001")}, {"storage_gb": PLAN_STORAGE}):
        try:
            async with database.unit_of_work(write=True) as uow:
                admit = await _admission(uow.session, **too_big)
                rows = _spawn_rows(**more)
                await SpawnRows(uow.session).insert(*rows, admit=admit, final=True)
        except OverQuota as exc:
            seen.setdefault("refused", []).append(exc.usage.model_dump())
    # Exactly at the plan's cpu limit is allowed (Decimal sums on both: 0.1 + 0.2 == 0.3).
    async with database.unit_of_work(write=True) as uow:
        at_limit = await _admission(uow.session, cpu=cpu_left)
        await SpawnRows(uow.session).insert(*_spawn_rows(**more), admit=at_limit, final=True)
    seen["rows"] = await _dump(database)
    return seen


async def _dump(database: Database) -> dict[str, list[dict[str, Any]]]:
    dumped: dict[str, list[dict[str, Any]]] = {}
    async with database.transaction(write=False) as session:
        for model, order in (
            (Workspace, Workspace.id),
            (WorkspaceEvent, WorkspaceEvent.at),
            (Job, Job.id),
            (OutboxEvent, OutboxEvent.id),
        ):
            rows = (await session.execute(select(model).order_by(order))).scalars()
            dumped[model.__tablename__] = [
                {
                    c.key: _plain(getattr(row, c.key))
                    for c in model.__table__.c
                    if c.key not in VOLATILE
                }
                for row in rows
            ]
    return dumped


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, str) and hasattr(value, "value"):
        return str(value)
    return value


async def test_both_backends_leave_the_same_rows(databases: list[Database]) -> None:
    sqlite, postgres = [await _scenario(database) for database in databases]
    assert sqlite["stale"] == "StaleLease"
    assert sqlite["usage"]["workspaces"] == 1
    assert [b[0] for b in sqlite["budgets"]] == [b[0] for b in BUDGETS[:2]]
    assert sqlite["budgets"][1][4] == NOW
    assert sqlite["rows"]["workspaces"][0]["driver_state"] == {"pid": 7}
    # Both refusals saw the first workspace only; the one at the limit went in.
    assert sqlite["refused"] == [sqlite["usage"]] * 2
    assert [w["external_ref"] for w in sqlite["rows"]["workspaces"]] == ["permit-5", "permit-7"]
    assert [e["type"] for e in sqlite["rows"]["outbox"]] == [
        "workspace.pending",
        "workspace.provisioning",
    ]
    assert sqlite == postgres


async def _admission(
    session: AsyncSession,
    *,
    cpu: Decimal = Decimal(0),
    memory_mb: int = 0,
    storage_gb: int = 0,
) -> Admission:
    """One more workspace of this size, with the plan and usage as read now."""
    _, plan, usage, _ = await SpawnRows(session).facts_for_spawn(TENANT, budgets_for=(None, USER))
    return Admission(TENANT, cpu, memory_mb, storage_gb, plan=plan, usage=usage)


def _more(n: int) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    return _spawn_rows(workspace_id=uuid.UUID(int=BASE + n), job_id=uuid.UUID(int=BASE + 100 + n))


async def test_postgres_checks_the_plan_again_under_the_lock(databases: list[Database]) -> None:
    """The facts a spawn is decided on are read without the tenant lock on PostgreSQL: a
    spawn that commits meanwhile must still be counted when the rows are written."""
    postgres = databases[1]
    async with postgres.unit_of_work(write=True) as late:
        rows = SpawnRows(late.session)
        free = await _admission(late.session)
        plan, seen = free.plan, free.usage
        assert seen.workspaces < plan.max_workspaces  # room, as far as the snapshot knows
        # Other spawns take the rest of the room and commit while this one decides.
        for n in range(20, 20 + plan.max_workspaces - seen.workspaces):
            async with postgres.unit_of_work(write=True) as other:
                admit = await _admission(other.session)
                await SpawnRows(other.session).insert(*_more(n), admit=admit, final=True)
        with pytest.raises(OverQuota) as refused:
            await rows.insert(*_more(40), admit=free, final=True)
    assert refused.value.usage.workspaces == plan.max_workspaces
    rows_left = await _dump(postgres)
    assert "permit-40" not in {w["external_ref"] for w in rows_left["workspaces"]}


async def test_postgres_refuses_a_spawn_into_a_tenant_deleted_meanwhile(
    databases: list[Database],
) -> None:
    postgres = databases[1]
    try:
        async with postgres.unit_of_work(write=True) as late:
            rows = SpawnRows(late.session)
            tenant, *_ = await rows.facts_for_spawn(TENANT, budgets_for=(None, USER))
            assert tenant.deletion_requested_at is None
            free = await _admission(late.session)
            async with postgres.transaction(write=True) as other:
                await other.execute(
                    update(Tenant).where(Tenant.id == TENANT).values(deletion_requested_at=NOW)
                )
            with pytest.raises(Conflict, match="being deleted"):
                await rows.insert(*_more(41), admit=free, final=True)
    finally:
        async with postgres.transaction(write=True) as other:
            await other.execute(
                update(Tenant).where(Tenant.id == TENANT).values(deletion_requested_at=None)
            )
