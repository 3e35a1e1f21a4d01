"""Compiled statements on the sqlite3 connection read and write what SQLAlchemy would.

The embedded mode's hot paths (`spawnpoint.sqlite_fast`) skip SQLAlchemy's per-statement
work; rows they write must read back the same through the ORM, and rows the ORM wrote
must come back from them as the ORM returns them, on a database file (statements inline
on the loop's thread) and in memory (aiosqlite's thread). And the WAL checkpoints the
inline connections leave to `Checkpointer` happen, off the loop.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, Column, MetaData, String, Table, bindparam, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import Uuid

from polling import eventually
from spawnpoint import sqlite_fast
from spawnpoint.db import Database, UTCDateTime
from spawnpoint.sqlite_fast import FastStatement

metadata = MetaData()
things = Table(
    "things",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("name", String(50), nullable=False, unique=True),
    Column("at", UTCDateTime, nullable=True),
    Column("doc", JSON, nullable=True),
)
COLUMNS = ("id", "name", "at", "doc")
INSERT = FastStatement(
    insert(things).values({c: bindparam(f"v_{c}", type_=things.c[c].type) for c in COLUMNS})
)
BY_ID = FastStatement(select(*things.c).where(things.c.id == bindparam("id", type_=Uuid())))
AT = datetime(2026, 12, 1, 12, 30, 15, 123456, tzinfo=UTC)


@pytest.fixture(params=["file", "memory"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'fast.db'}"
        if request.param == "file"
        else "sqlite+aiosqlite:///:memory:"
    )
    db = Database(url, pool_size=1)
    async with db.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield db
    await db.dispose()


def _row(name: str, doc: object) -> dict[str, object]:
    return {"v_id": uuid.uuid4(), "v_name": name, "v_at": AT, "v_doc": doc}


async def test_rows_written_fast_read_back_the_same_through_sqlalchemy(database: Database) -> None:
    row = _row("fast", {"a": [1, 2.5, None], "ü": "ß"})
    async with database.transaction(write=True) as session:
        (outcome,) = await sqlite_fast.run(session, [(INSERT, row)])
        assert outcome.rowcount == 1
    async with database.transaction(write=False) as session:
        found = (await session.execute(select(things))).one()
    assert tuple(found) == (row["v_id"], "fast", AT, {"a": [1, 2.5, None], "ü": "ß"})


async def test_rows_written_by_sqlalchemy_read_back_the_same_fast(database: Database) -> None:
    thing_id = uuid.uuid4()
    async with database.transaction(write=True) as session:
        await session.execute(
            insert(things), {"id": thing_id, "name": "orm", "at": AT, "doc": {"k": "v"}}
        )
    async with database.transaction(write=False) as session:
        orm = (await session.execute(select(things).where(things.c.id == thing_id))).one()
        (outcome,) = await sqlite_fast.run(session, [(BY_ID, {"id": thing_id})])
    assert outcome.one_or_none() == tuple(orm)
    assert isinstance(outcome.rows[0][0], uuid.UUID)
    assert outcome.rows[0][2] == AT
    assert outcome.rows[0][2].tzinfo is not None


async def test_nulls_and_missing_rows(database: Database) -> None:
    row = {**_row("empty", None), "v_at": None}
    async with database.transaction(write=True) as session:
        await sqlite_fast.run(session, [(INSERT, row)])
        outcomes = await sqlite_fast.run(
            session, [(BY_ID, {"id": row["v_id"]}), (BY_ID, {"id": uuid.uuid4()})]
        )
    assert outcomes[0].rows == [(row["v_id"], "empty", None, None)]
    assert outcomes[1].one_or_none() is None


async def test_a_constraint_violation_is_sqlalchemys_and_rolls_back_with_the_unit(
    database: Database,
) -> None:
    async with database.transaction(write=True) as session:
        await sqlite_fast.run(session, [(INSERT, _row("taken", None))])

    async def write_both() -> None:
        async with database.transaction(write=True) as session:
            await sqlite_fast.run(session, [(INSERT, _row("other", None))])
            await sqlite_fast.run(session, [(INSERT, _row("taken", None))])

    with pytest.raises(IntegrityError):
        await write_both()
    async with database.transaction(write=False) as session:
        names = (await session.execute(select(things.c.name))).scalars().all()
    assert names == ["taken"]  # "other" went with the rolled-back transaction


async def test_run_many_writes_every_row(database: Database) -> None:
    rows = [_row(f"n{n}", {"n": n}) for n in range(5)]
    async with database.transaction(write=True) as session:
        assert await sqlite_fast.run_many(session, INSERT, rows) == 5
    async with database.transaction(write=False) as session:
        count = (await session.execute(text("SELECT count(*) FROM things"))).scalar_one()
    assert count == 5


async def test_checkpoints_run_on_their_own_thread(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    database = Database(f"sqlite+aiosqlite:///{path}", pool_size=1)
    assert database.checkpointer is not None
    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        async with database.transaction(write=True) as session:
            await sqlite_fast.run_many(session, INSERT, [_row(f"w{n}", None) for n in range(50)])
            driver = (await (await session.connection()).get_raw_connection()).driver_connection
            # The loop's connections never checkpoint themselves.
            autocheckpoint = driver.raw.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert autocheckpoint == 0
        checkpointer = database.checkpointer

        async def checkpointed() -> bool:
            return checkpointer.checkpoints > 0

        await eventually(checkpointed, within=5, what="a checkpoint")
    finally:
        await database.dispose()
    # Everything committed is in the database file itself: a connection that ignores the
    # WAL (immutable) sees every row.
    plain = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        assert plain.execute("SELECT count(*) FROM things").fetchone()[0] == 50
    finally:
        plain.close()


@pytest.fixture
async def file_database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'direct.db'}", pool_size=2)
    async with db.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
    yield db
    await db.dispose()


async def test_a_read_runs_compiled_statements_on_a_connection_of_its_own(
    file_database: Database,
) -> None:
    """No connection of SQLAlchemy's pool is lent for them; the ORM beside them reads the
    same rows, and a compiled statement after it runs on the session's connection."""
    row = _row("direct", {"k": [1, 2]})
    async with file_database.transaction(write=True) as session:
        await sqlite_fast.run(session, [(INSERT, row)])
    pool: Any = file_database.engine.pool
    async with file_database.transaction(write=False) as session:
        (fast,) = await sqlite_fast.run(session, [(BY_ID, {"id": row["v_id"]})])
        lent = pool.checkedout()
        orm = (await session.execute(select(things).where(things.c.id == row["v_id"]))).one()
        (after,) = await sqlite_fast.run(session, [(BY_ID, {"id": row["v_id"]})])
        lent_after = pool.checkedout()
    assert lent == 0
    assert lent_after == 1
    assert fast.rows == after.rows == [tuple(orm)]
    assert pool.checkedout() == 0


async def test_compiled_reads_after_a_snapshot_read_that_snapshot(
    file_database: Database, tmp_path: Path
) -> None:
    from spawnpoint.audit.repository import AuditLog

    row = _row("before", None)
    async with file_database.transaction(write=True) as session:
        await sqlite_fast.run(session, [(INSERT, row)])
    other = sqlite3.connect(tmp_path / "direct.db", isolation_level=None)
    try:
        async with file_database.transaction(write=False) as session:
            await AuditLog(session).snapshot()
            (first,) = await sqlite_fast.run(session, [(BY_ID, {"id": row["v_id"]})])
            other.execute("UPDATE things SET name = 'after'")  # committed meanwhile
            (second,) = await sqlite_fast.run(session, [(BY_ID, {"id": row["v_id"]})])
    finally:
        other.close()
    assert first.rows[0][1] == second.rows[0][1] == "before"
    async with file_database.transaction(write=False) as session:
        (later,) = await sqlite_fast.run(session, [(BY_ID, {"id": row["v_id"]})])
    assert later.rows[0][1] == "after"


async def test_a_failed_read_gives_its_connection_back(file_database: Database) -> None:
    row = _row("kept", None)
    async with file_database.transaction(write=True) as session:
        await sqlite_fast.run(session, [(INSERT, row)])
    used = []

    async def fail() -> None:
        async with file_database.unit_of_work(write=False) as uow:
            await sqlite_fast.run(uow.session, [(BY_ID, {"id": row["v_id"]})])
            used.append(uow.direct_reader())
            raise LookupError

    for _ in range(3):
        with pytest.raises(LookupError):
            await fail()
    async with file_database.unit_of_work(write=False) as uow:
        (found,) = await sqlite_fast.run(uow.session, [(BY_ID, {"id": row["v_id"]})])
        used.append(uow.direct_reader())
    assert found.rows[0][1] == "kept"
    assert used[0] is not None
    assert all(connection is used[0] for connection in used)  # one connection, given back
    assert not used[0].in_transaction
