"""SQLite statements run on the event loop's thread; a lock wait never blocks the loop."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from spawnpoint.db import Database
from spawnpoint.sqlite_inline import WriteGate


@pytest.fixture
async def database(tmp_path: Path) -> AsyncIterator[Database]:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}", pool_size=2)
    async with db.transaction(write=True) as session:
        await session.execute(text("CREATE TABLE t (n INTEGER)"))
    yield db
    await db.dispose()


async def test_statements_run_on_the_loops_thread(database: Database) -> None:
    seen: list[int] = []
    async with database.transaction(write=False) as session:
        raw = await session.connection()
        driver = (await raw.get_raw_connection()).driver_connection
        driver._conn.create_function("thread_id", 0, threading.get_ident)
        seen.append((await session.execute(text("SELECT thread_id()"))).scalar_one())
    assert seen == [threading.get_ident()]


async def test_a_writer_in_another_process_is_waited_for_without_blocking_the_loop(
    database: Database, tmp_path: Path
) -> None:
    other = sqlite3.connect(tmp_path / "inline.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock, as another process would
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    async def write() -> None:
        async with database.transaction(write=True) as session:
            await session.execute(text("INSERT INTO t VALUES (1)"))

    beat = asyncio.create_task(ticker())
    writer = asyncio.create_task(write())
    try:
        await asyncio.sleep(0.2)  # the other writer holds the lock this long
        assert not writer.done()
        assert ticks > 20  # the loop kept running while the writer waited
        other.execute("COMMIT")
        await asyncio.wait_for(writer, 5)
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        other.close()
    async with database.transaction(write=False) as session:
        assert (await session.execute(text("SELECT count(*) FROM t"))).scalar_one() == 1


async def test_in_process_writers_queue_instead_of_meeting_the_lock(database: Database) -> None:
    async def write(n: int) -> None:
        async with database.transaction(write=True) as session:
            await session.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
            await asyncio.sleep(0)  # let the others try to begin meanwhile

    await asyncio.gather(*(write(n) for n in range(50)))
    async with database.transaction(write=False) as session:
        assert (await session.execute(text("SELECT count(*) FROM t"))).scalar_one() == 50


async def test_reads_take_no_transaction_unless_they_ask_for_a_snapshot(
    database: Database,
) -> None:
    from spawnpoint.audit.repository import AuditLog

    async with database.transaction(write=False) as session:
        await session.execute(text("SELECT count(*) FROM t"))
        driver = (await (await session.connection()).get_raw_connection()).driver_connection
        assert driver.in_transaction is False  # no BEGIN, no COMMIT: one statement, one read
        await AuditLog(session).snapshot()
        assert driver.in_transaction is True  # several statements, one snapshot
    assert driver.in_transaction is False  # the unit of work ended it
    async with database.transaction(write=True) as session:
        await session.execute(text("INSERT INTO t VALUES (2)"))
        await AuditLog(session).snapshot()  # a writer's transaction is one snapshot already


async def test_the_write_gate_lets_system_writers_go_first() -> None:
    gate = WriteGate()
    order: list[str] = []
    await gate.acquire(system=False)  # a request holds it

    async def writer(name: str, *, system: bool) -> None:
        async with gate.held_by(system=system):
            order.append(name)

    tasks = [
        asyncio.create_task(writer("request 1", system=False)),
        asyncio.create_task(writer("request 2", system=False)),
        *(asyncio.create_task(writer(f"worker {n}", system=True)) for n in range(1, 6)),
    ]
    cancelled = asyncio.create_task(writer("gone", system=True))
    await asyncio.sleep(0)  # every writer is queued
    cancelled.cancel()
    await asyncio.sleep(0)
    gate.release()
    await asyncio.gather(*tasks)
    # Three system writers in a row at most while a request waits.
    assert order == [
        "worker 1",
        "worker 2",
        "worker 3",
        "request 1",
        "worker 4",
        "worker 5",
        "request 2",
    ]
    assert cancelled.cancelled()
    assert not gate.held
