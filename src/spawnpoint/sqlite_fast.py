"""Statements compiled once and run on the sqlite3 connection itself: SQLite's hot path.

The embedded mode serves the API, runs the worker and answers the polls on one event loop,
so a spawn's CPU is the process's capacity. Through SQLAlchemy, a small statement costs
a few hundred microseconds of Python (building the statement, its cache key, the
execution context, the result's processing) against a few tens in SQLite itself. The hot
paths' statements (a spawn's, a job handler's, a status read's) are built and compiled
once here, as PostgreSQL's path does with `DriverStatement`, and run on the driver
connection under the session's transaction: SQLAlchemy still begins, commits or rolls it
back. Values are converted as SQLAlchemy would both ways (UUIDs, UTC datetimes, JSON), so
rows read and written either way are the same (tests/test_sqlite_fast.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql.elements import ClauseElement

from spawnpoint.db import DriverStatement
from spawnpoint.sqlite_inline import InlineConnection
from spawnpoint.uow import owner_of

# Named parameters (`:name`), which the standard library's sqlite3 takes as a dict; JSON
# decoded as the engines decode it (spawnpoint.db.create_engine).
DIALECT: Dialect = sqlite.dialect(paramstyle="named", json_deserializer=orjson.loads)
_RAW = "spawnpoint.sqlite_fast.raw"

Processor = Callable[[Any], Any]
M = TypeVar("M")


class FastStatement:
    """A statement compiled once for SQLite, with its result columns' converters.

    Built like a `DriverStatement` (`bindparam(name)` where values change). The rows it
    returns come back converted as SQLAlchemy's would (`columns` names their types: the
    statement's selected or returned columns by default).
    """

    def __init__(self, statement: ClauseElement, *, columns: Sequence[Any] | None = None) -> None:
        self.driver = DriverStatement(statement, DIALECT)
        self.sql = self.driver.sql
        if columns is None:
            selected = getattr(statement, "selected_columns", None)
            returning = getattr(statement, "_returning", ())
            columns = list(selected) if selected is not None else list(returning)
        self._processors: list[Processor | None] = [
            column.type.dialect_impl(DIALECT).result_processor(DIALECT, None) for column in columns
        ]
        self._converts = any(p is not None for p in self._processors)

    def params(self, values: dict[str, Any]) -> dict[str, Any]:
        return self.driver.params(values)

    def row(self, raw: Sequence[Any]) -> tuple[Any, ...]:
        """One raw row as SQLAlchemy would have returned it."""
        if not self._converts:
            return tuple(raw)
        return tuple(
            value if p is None or value is None else p(value)
            for p, value in zip(self._processors, raw, strict=True)
        )


def detached(model: type[M], columns: Sequence[Any], row: Sequence[Any]) -> M:
    """An instance of `model` holding `row` as loaded values (not in any session)."""
    instance = model()
    for column, value in zip(columns, row, strict=True):
        set_committed_value(instance, column.key, value)
    return instance


@dataclass(frozen=True)
class Outcome:
    """What one statement did: its rows (converted) and the rows it changed."""

    rows: list[tuple[Any, ...]]
    rowcount: int

    def one_or_none(self) -> tuple[Any, ...] | None:
        if len(self.rows) > 1:
            raise ValueError(f"{len(self.rows)} rows where one at most was expected")
        return self.rows[0] if self.rows else None


Step = tuple[FastStatement, dict[str, Any]]


async def _driver(session: AsyncSession) -> Any:
    """The driver connection under `session`'s transaction (begun now if it is not yet).

    A read whose session has not reached the database yet runs on a connection of its own
    instead (`UnitOfWork.direct_reader`): each of its statements reads on its own either way.
    """
    transaction = session.sync_session.get_transaction()
    cached = session.info.get(_RAW)
    if cached is not None and transaction is not None and cached[0] is transaction:
        return cached[1]
    if transaction is None or not transaction._connections:
        owner = owner_of(session)
        direct = owner.direct_reader() if owner is not None else None
        if direct is not None:
            return direct
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    session.info[_RAW] = (session.sync_session.get_transaction(), driver)
    return driver


async def run(session: AsyncSession, steps: Sequence[Step]) -> list[Outcome]:
    """Run `steps` in order in `session`'s transaction; SQLite only.

    On a database file (`sqlite_inline`) each is one call of the sqlite3 connection; an
    in-memory database (aiosqlite's thread) takes its usual hand-offs. A constraint
    violation raises SQLAlchemy's `IntegrityError`, as through the session.
    """
    driver = await _driver(session)
    outcomes: list[Outcome] = []
    for statement, values in steps:
        params = statement.params(values)
        try:
            if isinstance(driver, InlineConnection):
                sql = statement.sql
                cursor = await driver.run(lambda: driver.raw.execute(sql, params))  # noqa: B023
                raw_rows = cursor.fetchall()
                rowcount = cursor.rowcount
            else:
                async with driver.execute(statement.sql, params) as cursor:
                    raw_rows = await cursor.fetchall()
                    rowcount = cursor.rowcount
        except sqlite3.IntegrityError as exc:
            raise IntegrityError(statement.sql, params, exc) from exc
        outcomes.append(Outcome([statement.row(r) for r in raw_rows], rowcount))
    return outcomes


async def run_many(
    session: AsyncSession, statement: FastStatement, rows: Sequence[dict[str, Any]]
) -> int:
    """`statement` once per parameter set of `rows` (one executemany); rows changed."""
    driver = await _driver(session)
    params = [statement.params(values) for values in rows]
    try:
        if isinstance(driver, InlineConnection):
            cursor = await driver.run(lambda: driver.raw.executemany(statement.sql, params))
            return cursor.rowcount
        async with driver.executemany(statement.sql, params) as cursor:
            return int(cursor.rowcount)
    except sqlite3.IntegrityError as exc:
        raise IntegrityError(statement.sql, params, exc) from exc
