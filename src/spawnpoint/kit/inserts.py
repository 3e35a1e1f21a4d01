"""Several new rows written in one round trip: one statement on PostgreSQL.

A spawn writes a workspace, its first event and its job while it holds the tenant's lock;
every round trip inside that lock is time no other spawn of the tenant can use. On
PostgreSQL the rows go out as one statement, each INSERT in its own data-modifying CTE
(foreign keys between them are checked at the end of the statement, so a child may refer
to a parent inserted beside it). Other databases get one INSERT per row, in order.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, cast

import psycopg
from sqlalchemy import Table, bindparam, func, insert, literal, select
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint import sqlite_fast
from spawnpoint.db import Base, DriverStatement
from spawnpoint.uow import unit_of

NewRow = tuple[type[Base], dict[str, Any]]
Step = tuple[DriverStatement, dict[str, Any]]


def with_defaults(model: type[Base], values: dict[str, Any]) -> dict[str, Any]:
    """`values` plus the Python-side defaults of every column it leaves out.

    Filled in here rather than by SQLAlchemy because an INSERT inside a CTE cannot take
    generated default parameters; the caller also learns the values it stored (ids, times).
    """
    row = dict(values)
    for column in model.__table__.columns:
        default = column.default
        if column.name in row or default is None or not hasattr(default, "arg"):
            continue
        row[column.name] = default.arg(None) if default.is_callable else default.arg
    return row


Shape = tuple[tuple[type[Base], tuple[str, ...]], ...]


@functools.lru_cache(maxsize=32)
def rows_statement(dialect: Dialect, shape: Shape, notify: str | None = None) -> DriverStatement:
    """One statement inserting rows of `shape` (PostgreSQL), compiled once.

    Row i's value for column c is the parameter `r{i}_{c}` (see `row_params`).
    """
    ctes = [
        insert(model)
        .values(
            {
                c: bindparam(f"r{i}_{c}", type_=model.__table__.c[c].type, required=False)
                for c in columns
            }
        )
        .cte(f"new_{i}")
        for i, (model, columns) in enumerate(shape)
    ]
    result = func.pg_notify(notify, "") if notify is not None else literal(1)
    return DriverStatement(select(result).add_cte(*ctes), dialect)


async def insert_together(
    session: AsyncSession,
    rows: Sequence[NewRow],
    *,
    notify: str | None = None,
    final: bool = False,
    before: Sequence[Step] = (),
) -> None:
    """Insert `rows` (complete column values, parents first) in the session's transaction.

    Args:
        notify: on PostgreSQL, a channel to `pg_notify` in the same statement (delivered
            when the transaction commits); ignored elsewhere.
        final: the caller writes nothing more in this transaction, so on PostgreSQL the
            unit of work that owns it may send its own rows and the COMMIT in the same
            round trip (`UnitOfWork.pipelined`). Elsewhere it commits as usual.
        before: PostgreSQL statements to run first in the same round trip (a spawn's
            admission check); one that fails leaves the rows unwritten. Ignored elsewhere.
    """
    dialect = session.get_bind().dialect
    if dialect.name == "sqlite":
        # One INSERT per table and set of columns, compiled once, run on the sqlite3
        # connection itself (`spawnpoint.sqlite_fast`).
        steps = [
            (_sqlite_insert(model, tuple(values)), {f"v_{c}": v for c, v in values.items()})
            for model, values in rows
        ]
        await sqlite_fast.run(session, steps)
        return
    if dialect.name != "postgresql":
        for model, values in rows:
            await session.execute(insert(cast(Table, model.__table__)), values)
        return
    statement = rows_statement(
        dialect, tuple((model, tuple(values)) for model, values in rows), notify
    )
    try:
        await unit_of(session).pipelined([*before, (statement, row_params(rows))], final=final)
    except psycopg.IntegrityError as exc:
        raise IntegrityError(statement.sql, None, exc) from exc


@functools.lru_cache(maxsize=64)
def _sqlite_insert(model: type[Base], columns: tuple[str, ...]) -> sqlite_fast.FastStatement:
    table = cast(Table, model.__table__)
    values = {c: bindparam(f"v_{c}", type_=table.c[c].type, required=False) for c in columns}
    return sqlite_fast.FastStatement(insert(table).values(values))


def row_params(rows: Sequence[NewRow]) -> dict[str, Any]:
    """The parameters of `rows_statement` for `rows`."""
    return {f"r{i}_{c}": v for i, (_, values) in enumerate(rows) for c, v in values.items()}
