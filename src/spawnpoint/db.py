"""Engines, the declarative base and the request-owned transaction.

SQLite runs in WAL mode with a busy timeout; transactions that write begin IMMEDIATE so
concurrent writers queue on the lock instead of failing with "database is locked".
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import orjson
import psycopg
from sqlalchemy import DateTime, MetaData, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.types import TypeDecorator
from sqlalchemy.util import await_only

from spawnpoint.sqlite_inline import (
    Checkpointer,
    InlineConnection,
    ReadConnections,
    WriteGate,
    connect_inline,
)

if TYPE_CHECKING:
    from spawnpoint.kit.auditing import RequestAudit
    from spawnpoint.uow import UnitOfWork

from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.ids import uuid7

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SQLITE_BUSY_TIMEOUT_MS = 30_000
AUTOCOMMIT_READ_OPTION = "spawnpoint_autocommit_read"
WRITE_OPTION = "spawnpoint_write"
# A server that is unreachable (not refusing: silent) must not hold a request or a worker
# loop for the operating system's TCP timeout, minutes long.
CONNECT_TIMEOUT_SECONDS = 5
# Read connections of the serving loop (spawnpoint.kit.loops): its reads run one at a time.
SERVING_POOL_SIZE = 2
# SQLSTATEs that say the server is going away, starting up or out of connection slots, or
# that it closed this idle session: any statement would fail the same way (class 08, the
# connection exceptions, is recognised by its prefix).
log = logging.getLogger("spawnpoint.db")
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "57P05", "53300"})


def is_unavailable(error: BaseException) -> bool:
    """Whether `error` means the database cannot be used right now, whatever was asked.

    True for connections refused, reset, closed or lost mid-statement (through SQLAlchemy
    or raw from psycopg's pipelines), a server shutting down, starting up or out of
    connection slots, a pool with no connection to give in time, and SQLite's lock wait
    running out. False for errors in the work itself (constraints, syntax, serialisation
    failures, an aborted pipeline's follow-on errors): retrying the same work would not help.
    """
    if isinstance(error, sa_exc.TimeoutError | sa_exc.DisconnectionError):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        return error.orig is not None and is_unavailable(error.orig)
    if isinstance(error, psycopg.errors.PipelineAborted):
        return False
    if isinstance(error, psycopg.InterfaceError):
        return True  # "the connection is closed": a connection psycopg found dead earlier
    if isinstance(error, psycopg.OperationalError):
        # No SQLSTATE: the client failed to connect or lost the connection.
        state = error.sqlstate
        return state is None or state.startswith("08") or state in _UNAVAILABLE_SQLSTATES
    if isinstance(error, sqlite3.OperationalError):
        return "database is locked" in str(error)
    return False


def first_line(error: BaseException) -> str:
    """A driver error's first line (psycopg adds context lines), or its class's name."""
    return next(iter(str(error).strip().splitlines()), type(error).__name__)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime}


class IdMixin:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid7)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def _configure_sqlite(engine: AsyncEngine, *, busy_timeout_ms: int) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself, so we can choose IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get(AUTOCOMMIT_READ_OPTION, False):
            return
        sql = "BEGIN IMMEDIATE" if options.get(WRITE_OPTION, False) else "BEGIN"
        driver = connection.connection.driver_connection
        if isinstance(driver, InlineConnection):
            # Straight to the sqlite3 connection (a lock held by another process waited out
            # as `InlineConnection.run` does): SQLAlchemy's execution of a statement, for
            # one that returns nothing, costs several times what SQLite does.
            await_only(driver.run(lambda: driver.raw.execute(sql)))
            return
        connection.exec_driver_sql(sql)


def inline_path(url: str) -> str | None:
    """The database file of a SQLite URL whose statements run inline, else None."""
    if not url.startswith("sqlite"):
        return None
    path = make_url(url).database or ""
    if path and path != ":memory:" and not path.startswith("file:"):
        return path
    return None


def create_engine(
    url: str, *, pool_size: int = 10, checkpointer: Checkpointer | None = None
) -> AsyncEngine:
    """The engine for `url`; `checkpointer` takes over a SQLite file's WAL checkpoints."""
    # orjson decodes JSON columns (template specs, job payloads) several times faster.
    if url.startswith("sqlite"):
        path = inline_path(url)
        if path is not None:
            # A database file: its statements run on the event loop's thread (see
            # `spawnpoint.sqlite_inline`), lock waits as non-blocking retries.
            engine = create_async_engine(
                url,
                async_creator=functools.partial(
                    connect_inline,
                    path,
                    busy_timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
                    checkpointer=checkpointer,
                ),
                pool_size=pool_size,
                max_overflow=pool_size,
                json_deserializer=orjson.loads,
            )
            _configure_sqlite(engine, busy_timeout_ms=0)
            return engine
        engine = create_async_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            json_deserializer=orjson.loads,
        )
        _configure_sqlite(engine, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS)
        return engine
    # No pre-ping (a round trip per checkout): after a restart, the first statement on a
    # dead connection fails, SQLAlchemy recognises the disconnect (psycopg marks the
    # connection closed) and invalidates the whole pool, so later checkouts connect afresh.
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
        json_deserializer=orjson.loads,
    )


Wakeup = Callable[[], None]


class Wakeups:
    """Callbacks to run after a commit that made jobs due (in-process workers listen here).

    One per `Database`: where there is no NOTIFY (SQLite), an in-process worker registers
    so a job enqueued by the API starts at once instead of at the next poll.
    """

    def __init__(self) -> None:
        self._callbacks: set[Wakeup] = set()

    def add(self, callback: Wakeup) -> None:
        self._callbacks.add(callback)

    def discard(self, callback: Wakeup) -> None:
        self._callbacks.discard(callback)

    def fire(self) -> None:
        for callback in list(self._callbacks):
            try:
                callback()
            except Exception:
                log.exception("job wake-up callback failed")


class Database:
    """One engine per process with separate session factories for reads and writes.

    `wakeups` are the in-process workers to poke after a commit that made jobs due.
    """

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        # A SQLite file's WAL is copied back by a thread of its own, off the event loop.
        path = inline_path(url)
        self.checkpointer = Checkpointer(path) if path is not None else None
        self.engine = create_engine(url, pool_size=pool_size, checkpointer=self.checkpointer)
        reader = self.engine
        if not self.is_sqlite:
            # Reads need no transaction block: autocommit saves the BEGIN and COMMIT round
            # trips, a third of a small GET's database time.
            reader = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        else:
            # Likewise on SQLite: a single SELECT reads one snapshot by itself, and BEGIN and
            # COMMIT cost a small GET about a tenth of its time. A read that must see one
            # snapshot over several statements begins it itself (`AuditLog.snapshot`).
            reader = self.engine.execution_options(**{AUTOCOMMIT_READ_OPTION: True})
        self._reader = async_sessionmaker(reader, expire_on_commit=False)
        self._writer = async_sessionmaker(
            self.engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )
        self.wakeups = Wakeups()
        # The outbox relay of this process (events.relay), poked after commits that wrote events.
        self.outbox_nudges = Wakeups()
        self._write_gate = WriteGate() if self.is_sqlite else None
        # With two loops (spawnpoint.kit.loops), the loop every write runs on; reads from the
        # other (the serving loop's polls) use engines of their own.
        self.work_loop: asyncio.AbstractEventLoop | None = None
        self._serving_engine: AsyncEngine | None = None
        self._serving_reader: async_sessionmaker[AsyncSession] | None = None
        # A SQLite file's reads run their compiled statements on connections of their own.
        self.direct_reads = (
            ReadConnections(path, busy_timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
            if path is not None
            else None
        )

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @asynccontextmanager
    async def unit_of_work(
        self, *, write: bool, request: RequestAudit | None = None
    ) -> AsyncIterator[UnitOfWork]:
        """Own one transaction: committed on success (then its callbacks run), else rolled back.

        See `spawnpoint.uow`: the unit of work is the only code that commits. `request` is
        the audit entry of the API request it serves.
        """
        # Imported here: the unit of work builds on this module's pipelines.
        from spawnpoint.uow import UnitOfWork

        if self.work_loop is not None and asyncio.get_running_loop() is not self.work_loop:
            if write:
                raise RuntimeError("writes run on the work loop (spawnpoint.kit.loops)")
            async with UnitOfWork(
                database=self, session=self._serving_reader_factory()(), write=False
            ) as uow:
                yield uow
            return
        if write and self._write_gate is not None:
            # SQLite takes one writer at a time. Queued here, this process's writers go in
            # turn, each the moment the one before commits; left to SQLite, they would poll
            # its lock with sleeps of up to 100 ms (its busy handler), which under a burst
            # of spawns cost more than the writes. A writer in another process is waited
            # for with retries that leave the event loop free (`spawnpoint.sqlite_inline`).
            async with (
                self._write_gate.held_by(system=request is None),
                UnitOfWork(
                    database=self, session=self._writer(), write=True, request=request
                ) as uow,
            ):
                yield uow
            return
        factory = self._writer if write else self._reader
        async with UnitOfWork(
            database=self, session=factory(), write=write, request=request
        ) as uow:
            yield uow

    def work_on(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run every write on `loop` from now on; reads from any other loop get their own
        connections (a pool's waiters are bound to one loop)."""
        self.work_loop = loop

    def _serving_reader_factory(self) -> async_sessionmaker[AsyncSession]:
        if self._serving_reader is None:
            self._serving_engine = create_engine(self.url, pool_size=SERVING_POOL_SIZE)
            self._serving_reader = async_sessionmaker(
                self._serving_engine.execution_options(**{AUTOCOMMIT_READ_OPTION: True}),
                expire_on_commit=False,
            )
        return self._serving_reader

    async def dispose_serving(self) -> None:
        """Close the serving loop's read connections (on that loop)."""
        if self._serving_engine is not None:
            await self._serving_engine.dispose()

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[AsyncSession]:
        """`unit_of_work`, for callers that need only its session."""
        async with self.unit_of_work(write=write) as uow:
            yield uow.session

    async def ping(self) -> None:
        conn: AsyncConnection
        async with self.engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.direct_reads is not None:
            self.direct_reads.close()
        if self.checkpointer is not None:
            await asyncio.to_thread(self.checkpointer.stop)


async def driver_connection(session: AsyncSession) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under `session`'s transaction, for pipelined statements.

    Statements sent on it run in the session's transaction; SQLAlchemy still commits or
    rolls it back. PostgreSQL only.
    """
    connection = await session.connection()
    raw = (await connection.get_raw_connection()).driver_connection
    if not isinstance(raw, psycopg.AsyncConnection):
        raise TypeError(f"not a psycopg connection: {type(raw).__name__}")
    return raw


class DriverStatement:
    """A statement compiled once, then run on the driver connection with new values.

    Build it with `bindparam(name)` where values change; constants (`IN` lists) are kept.
    Values are converted as SQLAlchemy would (JSON documents, UTC datetimes); an expanding
    parameter (`IN` a list) must need no conversion.
    """

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = cast(
            SQLCompiler,
            statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True}),
        )
        self.sql = str(compiled)
        self._constants = dict(compiled.params)
        self._processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is None:
                continue
            if name in self._constants:
                self._processors[name] = processor
            elif bind.expanding:
                raise TypeError(f"parameter {name} needs conversion; execute through SQLAlchemy")
        for name, value in self._constants.items():
            if name in self._processors and value is not None:
                self._constants[name] = self._processors[name](value)

    def params(self, values: dict[str, Any]) -> dict[str, Any]:
        """Every parameter: the constants, and `values` converted for the driver."""
        params = dict(self._constants)
        for name, value in values.items():
            processor = self._processors.get(name)
            params[name] = processor(value) if processor is not None else value
        return params


async def pipelined(
    session: AsyncSession,
    steps: Sequence[tuple[DriverStatement, dict[str, Any]]],
    *,
    commit: bool = False,
) -> list[psycopg.AsyncCursor[Any]]:
    """Run `steps` in `session`'s transaction in one round trip, then maybe commit with them.

    PostgreSQL runs each statement when the one before it is done, each with a fresh
    snapshot (READ COMMITTED), while the client waits only once. `commit` is for the unit
    of work alone (`UnitOfWork.pipelined(final=True)`), which then knows the transaction is
    over. Errors surface as psycopg exceptions. Returns a cursor per step, its rows ready
    to fetch.
    """
    raw = await driver_connection(session)
    failure: psycopg.Error | None = None
    try:
        async with raw.pipeline() as pipeline:
            # The first error is taken inside the block: one escaping it would have psycopg
            # log the follow-on error ("pipeline aborted") of leaving pipeline mode.
            try:
                cursors = [
                    await raw.execute(step.sql, step.params(values)) for step, values in steps
                ]
                if commit:
                    await raw.commit()
                else:
                    await pipeline.sync()
            except psycopg.Error as exc:
                failure = exc
    except psycopg.Error:
        if failure is None:
            raise
    if failure is not None:
        raise failure
    return cursors
