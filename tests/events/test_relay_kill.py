"""A relay process SIGKILLed after the broker confirmed a batch, before its mark committed.

PostgreSQL only: the test holds row locks on the events (SELECT ... FOR UPDATE in a
transaction of its own), which lets the relay read and publish them but keeps its mark
waiting, so the kill lands exactly between the confirm and the mark. (SQLite has no row
locks: holding its one write lock would also stop the relay from taking its lease.)
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from conftest import PostgresDatabase, make_settings, pg_conninfo, postgres_or_skip
from events.broker import EXCHANGE, amqp_url, fresh_vhost, listening
from events.relaying import delivered, drain, emit, relay_process, rows, unpublished
from polling import eventually
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.events.relay import OutboxRelay
from spawnpoint.kit.clock import utcnow
from spawnpoint.migrations import upgrade


@pytest.fixture(scope="module")
def pg_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    postgres_or_skip()
    with PostgresDatabase(prefix="spawnpoint_relay_kill") as pg:
        settings = make_settings(pg.url, tmp_path_factory.mktemp("relay-kill"))
        upgrade(settings)
        yield settings


@pytest.fixture(scope="module")
async def pg_db(pg_settings: Settings) -> AsyncIterator[Database]:
    database = Database(pg_settings.sqlalchemy_url, pool_size=4)
    yield database
    await database.dispose()


async def test_a_relay_process_killed_between_confirm_and_mark_loses_nothing(
    pg_db: Database, pg_settings: Settings, tmp_path: Path
) -> None:
    ids = await emit(pg_db, [(f"ws-{n % 4}", "workspace.running") for n in range(20)])
    async with fresh_vhost() as vhost, listening(amqp_url(vhost), EXCHANGE) as listener:
        locker = await psycopg.AsyncConnection.connect(pg_conninfo(pg_settings.sqlalchemy_url))
        try:
            await locker.execute(
                "SELECT id FROM outbox WHERE id = ANY(%s::uuid[]) FOR UPDATE",
                [[str(i) for i in ids]],
            )
            process = await relay_process(
                pg_settings.sqlalchemy_url, vhost, tmp_path, output=asyncio.subprocess.DEVNULL
            )
            try:
                await eventually(delivered(listener, ids), what="the relay to publish all 20")
                # Confirmed by the broker, and the mark waits for our locks: kill it now.
                assert await unpublished(pg_db, ids) == 20
            finally:
                process.send_signal(signal.SIGKILL)
                await asyncio.wait_for(process.wait(), 30)
            assert process.returncode == -signal.SIGKILL
        finally:
            await locker.rollback()
            await locker.close()
        assert await unpublished(pg_db, ids) == 20

        # The dead relay's lease runs out (15 s); a new relay takes over and sends them again.
        later = utcnow() + timedelta(seconds=20)
        successor = OutboxRelay(
            pg_db,
            pg_settings,
            url=amqp_url(vhost),
            owner=f"successor-{uuid.uuid4().hex[:6]}",
            clock=lambda: later,
        )
        try:
            await drain(successor, pg_db, ids)
        finally:
            await successor.disconnect()

        async def twice() -> bool:
            return all(listener.counts()[str(i)] == 2 for i in ids)

        await eventually(twice, what="every event a second time, under its message_id")
    assert set(listener.counts()) == {str(i) for i in ids}
    assert all(row.attempts == 1 for row in (await rows(pg_db, ids)).values())
