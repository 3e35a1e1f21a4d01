"""Losing a race the database broke (a deadlock) is a 409 to retry, never a 500."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from conftest import PostgresDatabase, pg_conninfo, postgres_or_skip
from spawnpoint.kit.errors import _contended


async def _deadlock() -> psycopg.Error:
    """Two transactions locking two rows in opposite orders: PostgreSQL aborts one."""
    with PostgresDatabase("spawnpoint_deadlock") as pg:
        url = pg_conninfo(pg.url)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as setup:
            await setup.execute("CREATE TABLE t (id int PRIMARY KEY)")
            await setup.execute("INSERT INTO t VALUES (1), (2)")
        first = await psycopg.AsyncConnection.connect(url)
        second = await psycopg.AsyncConnection.connect(url)
        try:
            await first.execute("UPDATE t SET id = id WHERE id = 1")
            await second.execute("UPDATE t SET id = id WHERE id = 2")
            results = await asyncio.gather(
                first.execute("UPDATE t SET id = id WHERE id = 2"),
                second.execute("UPDATE t SET id = id WHERE id = 1"),
                return_exceptions=True,
            )
        finally:
            await first.close()
            await second.close()
    errors = [r for r in results if isinstance(r, psycopg.Error)]
    assert len(errors) == 1, results
    return errors[0]


async def test_a_deadlock_is_recognised_as_contention() -> None:
    postgres_or_skip()
    error = await _deadlock()
    assert error.sqlstate == "40P01"
    assert _contended(error)
    assert not _contended(psycopg.errors.UniqueViolation("duplicate"))
    with pytest.raises(psycopg.errors.DeadlockDetected):
        raise error
