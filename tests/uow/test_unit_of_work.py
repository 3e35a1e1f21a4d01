"""The unit of work: the only committer, its after-commit callbacks, the rows in its commit."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select

from conftest import World
from spawnpoint.db import Database
from spawnpoint.events.outbox import outbox_event
from spawnpoint.kit.auditing import system_action
from spawnpoint.models import AuditEntry, OutboxEvent, Tenant
from spawnpoint.uow import NoUnitOfWork, UnitOfWork, unit_of

pytestmark = pytest.mark.usefixtures("backend")


class Boom(Exception):
    pass


async def _events(database: Database, key: str) -> list[str]:
    async with database.transaction(write=False) as session:
        rows = await session.execute(
            select(OutboxEvent.type).where(OutboxEvent.key == key).order_by(OutboxEvent.id)
        )
        return list(rows.scalars())


async def _entries(database: Database, resource_id: str) -> int:
    async with database.transaction(write=False) as session:
        count = await session.scalar(
            select(func.count()).where(AuditEntry.resource_id == resource_id)
        )
        return int(count or 0)


def _event_and_entry(uow: UnitOfWork, tenant_id: uuid.UUID, kind: str, key: uuid.UUID) -> None:
    """An outbox event and an audit entry, both named `kind` and keyed by `key`."""
    uow.emit(outbox_event(tenant_id=tenant_id, type=kind, key=key, payload={}))
    uow.record(
        system_action(
            tenant_id=tenant_id, action=kind, resource_type="test", resource_id=key, reason="test"
        )
    )


async def test_on_commit_runs_after_the_commit_and_never_after_a_rollback(
    world: World,
) -> None:
    org = await world.org(roles=())
    seen: list[str] = []

    async def visible() -> None:
        # The commit is done: a new transaction sees the change.
        async with world.database.transaction(write=False) as session:
            tenant = await session.get(Tenant, org.tenant_id)
            assert tenant is not None
            seen.append(tenant.name)

    async with world.database.unit_of_work(write=True) as uow:
        tenant = await uow.session.get(Tenant, org.tenant_id)
        assert tenant is not None
        tenant.name = f"renamed-{org.tenant_id.hex[:8]}"
        uow.on_commit(visible)
        uow.on_commit(lambda: seen.append("once"), key="k")
        uow.on_commit(lambda: seen.append("twice"), key="k")
        assert seen == []
    assert seen == [f"renamed-{org.tenant_id.hex[:8]}", "twice"]

    async def fail() -> None:
        async with world.database.unit_of_work(write=True) as uow:
            uow.on_commit(lambda: seen.append("rolled back"))
            raise Boom

    with pytest.raises(Boom):
        await fail()
    assert "rolled back" not in seen


async def test_outbox_rows_and_audit_entries_commit_with_the_change_or_not_at_all(
    world: World,
) -> None:
    org = await world.org(roles=())
    kept, lost = uuid.uuid4(), uuid.uuid4()
    for key, fail in ((kept, False), (lost, True)):
        try:
            async with world.database.unit_of_work(write=True) as uow:
                _event_and_entry(uow, org.tenant_id, "test.done", key)
                if fail:
                    raise Boom
        except Boom:
            pass
    assert await _events(world.database, str(kept)) == ["test.done"]
    assert await _entries(world.database, str(kept)) == 1
    assert await _events(world.database, str(lost)) == []
    assert await _entries(world.database, str(lost)) == 0


async def test_a_rolled_back_savepoint_forgets_its_events_and_entries(world: World) -> None:
    org = await world.org(roles=())
    outer, inner = uuid.uuid4(), uuid.uuid4()
    async with world.database.unit_of_work(write=True) as uow:
        uow.emit(outbox_event(tenant_id=org.tenant_id, type="test.outer", key=outer, payload={}))

        async def fail() -> None:
            async with uow.savepoint():
                _event_and_entry(uow, org.tenant_id, "test.inner", inner)
                raise Boom

        with pytest.raises(Boom):
            await fail()
    assert await _events(world.database, str(outer)) == ["test.outer"]
    assert await _events(world.database, str(inner)) == []
    assert await _entries(world.database, str(inner)) == 0


async def test_nothing_may_be_written_after_a_final_pipeline(world: World, backend: str) -> None:
    org = await world.org(roles=())

    async def write_after_final() -> None:
        async with world.database.unit_of_work(write=True) as uow:
            await uow.pipelined([], final=True)
            tenant = await uow.session.get(Tenant, org.tenant_id)
            assert tenant is not None
            tenant.name = "too late"

    if backend == "sqlite":
        # The pipelined fast path is PostgreSQL's; SQLite callers take the plain path.
        with pytest.raises(TypeError, match="not a psycopg connection"):
            await write_after_final()
        return
    with pytest.raises(RuntimeError, match="after this unit of work committed"):
        await write_after_final()


async def test_a_session_without_an_owner_has_no_unit_of_work(database: Database) -> None:
    factory = database._writer
    async with factory() as session:
        with pytest.raises(NoUnitOfWork):
            unit_of(session)
