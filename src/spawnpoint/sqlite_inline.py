"""SQLite on the event loop's own thread, behind SQLAlchemy's aiosqlite dialect.

aiosqlite runs every call of a connection on a thread of its own: a statement costs four
hand-offs between that thread and the event loop (cursor, execute, fetch, close), each a
wake-up of the loop and a wait for the GIL (up to its 5 ms switch interval while the loop
is busy). In the embedded mode, where one process serves the API, runs the worker and
answers the polls, those hand-offs cost far more than the statements: a primary-key read
takes some 20 microseconds in SQLite itself.

Here the same calls run inline instead, on the loop's thread, through objects with the
interface SQLAlchemy's aiosqlite adapter drives (`connect_inline` is its `async_creator`).
What could block the loop is a lock wait, and none is left to SQLite's busy handler
(whose sleeps would stop the whole process): the connection's busy timeout is 0, and a
statement that finds the database locked while it opens a transaction -- `BEGIN
IMMEDIATE` meeting another process's writer, or a read that starts a snapshot -- is
retried with `asyncio.sleep` between attempts, up to `busy_timeout` seconds, so the loop
serves other requests meanwhile. (This process's own writers never meet: they queue on
`Database`'s write gate.) Inside a transaction a locked answer is raised as it is.

Durability is SQLite's: WAL with `synchronous=NORMAL`, so a committed transaction survives
the process being killed; see `spawnpoint.db`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, TypeVar

# Between attempts while the database is locked: short at first (another writer's
# transaction takes a millisecond or so), never long.
log = logging.getLogger("spawnpoint.sqlite")
T = TypeVar("T")
RETRY_DELAYS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02)


def _locked(error: sqlite3.OperationalError) -> bool:
    text = str(error)
    return "database is locked" in text or "database table is locked" in text


class InlineCursor:
    """An aiosqlite-like cursor whose coroutines run the sqlite3 call at once."""

    def __init__(self, connection: InlineConnection) -> None:
        self._owner = connection
        self._cursor = connection._conn.cursor()

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *_: object) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value

    async def execute(self, sql: str, parameters: Any = None) -> InlineCursor:
        await self._owner._run(lambda: self._cursor.execute(sql, parameters or ()))
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> InlineCursor:
        rows = list(parameters)
        await self._owner._run(lambda: self._cursor.executemany(sql, rows))
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(self._cursor.arraysize if size is None else size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()


class _CursorContext:
    """What `InlineConnection.cursor()` answers: SQLAlchemy enters it to get the cursor."""

    def __init__(self, connection: InlineConnection) -> None:
        self._connection = connection

    async def __aenter__(self) -> InlineCursor:
        return InlineCursor(self._connection)

    async def __aexit__(self, *_: object) -> None:
        return None


class _Immediate:
    """Stands in for aiosqlite's queue to its thread: runs each function at once."""

    @staticmethod
    def put_nowait(item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except BaseException as exc:
            if future is None:
                raise
            future.set_exception(exc)
        else:
            if future is not None:
                future.set_result(result)


class InlineConnection:
    """An aiosqlite-like connection over a `sqlite3.Connection` used on the loop's thread."""

    def __init__(
        self,
        connection: sqlite3.Connection,
        *,
        busy_timeout: float,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        self._conn = connection
        self._connection: sqlite3.Connection | None = connection  # truthy while open
        self._tx = _Immediate()
        self._busy_timeout = busy_timeout
        self._checkpointer = checkpointer

    @property
    def raw(self) -> sqlite3.Connection:
        """The sqlite3 connection, for statements run on it directly (`sqlite_fast`)."""
        return self._conn

    async def run(self, call: Callable[[], T]) -> T:
        """`call()` on the connection, waiting out a lock as `_run` does."""
        return await self._run(call)

    async def _run(self, call: Callable[[], T]) -> T:
        # Only a statement that opens a transaction may wait for a lock: inside one, a
        # locked answer means a conflicting writer and is the caller's to handle.
        may_wait = not self._conn.in_transaction
        deadline = time.monotonic() + self._busy_timeout
        attempt = 0
        while True:
            try:
                return call()
            except sqlite3.OperationalError as exc:
                if not may_wait or not _locked(exc) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
            attempt += 1

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def cursor(self) -> _CursorContext:
        return _CursorContext(self)

    async def execute(self, sql: str, parameters: Sequence[Any] | None = None) -> InlineCursor:
        cursor = InlineCursor(self)
        return await cursor.execute(sql, parameters)

    async def commit(self) -> None:
        self._conn.commit()
        if self._checkpointer is not None:
            self._checkpointer.committed()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    def stop(self) -> None:
        """Close at once (SQLAlchemy's forced termination)."""
        if self._connection is not None:
            self._connection = None
            self._conn.close()


async def connect_inline(
    path: str, *, busy_timeout: float, checkpointer: Checkpointer | None = None
) -> InlineConnection:
    """Open `path` for use on this thread (SQLAlchemy's `async_creator`).

    With `checkpointer`, the connection leaves WAL checkpoints to it (`Checkpointer`).
    """
    # check_same_thread off: the pool may close a connection from a finaliser elsewhere.
    connection = sqlite3.connect(path, timeout=0, check_same_thread=False)
    if checkpointer is not None:
        connection.execute("PRAGMA wal_autocheckpoint=0")
    return InlineConnection(connection, busy_timeout=busy_timeout, checkpointer=checkpointer)


class ReadConnections:
    """Connections for reads' compiled statements, run outside SQLAlchemy (`sqlite_fast`).

    A read on SQLite runs each statement on its own (no BEGIN, see `spawnpoint.db`), so its
    compiled statements need nothing of a session's connection: a unit of work that reads
    takes one of these instead, and SQLAlchemy's checkout, events and greenlet hops (most
    of a status poll's database time) are skipped. Taken by one reader at a time (any
    thread), given back when its unit of work ends.
    """

    MAX_IDLE = 8

    def __init__(self, path: str, *, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._idle: list[InlineConnection] = []

    def take(self) -> InlineConnection:
        try:
            return self._idle.pop()
        except IndexError:
            pass
        # Autocommit: the sqlite3 module begins no transaction of its own.
        connection = sqlite3.connect(
            self.path, timeout=0, check_same_thread=False, isolation_level=None
        )
        return InlineConnection(connection, busy_timeout=self.busy_timeout)

    def give_back(self, connection: InlineConnection) -> None:
        if connection.in_transaction or len(self._idle) >= self.MAX_IDLE:
            connection.stop()
            return
        self._idle.append(connection)

    def close(self) -> None:
        """Close the idle connections (one in use goes back to the idle ones when given back)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.stop()


class Checkpointer:
    """Copies the WAL back into the database file on a thread of its own.

    SQLite's automatic checkpoint runs inside the commit that crosses its threshold (1,000
    pages): that commit, on the event loop's thread here, then copies the pages and syncs
    the files, some 10 ms in which the whole process waits, and half of every commit's cost
    on average. The inline connections turn it off (`wal_autocheckpoint=0`) and this
    thread runs a PASSIVE checkpoint (it waits for no reader or writer) shortly after
    commits happened, with the GIL released while SQLite works. Durability is unchanged:
    a committed transaction is in the WAL, which SQLite replays on the next open if the
    process dies before a checkpoint.
    """

    # After a commit, wait this long so one checkpoint covers a run of commits.
    DELAY_SECONDS = 0.05

    def __init__(self, path: str) -> None:
        self.path = path
        self._dirty = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._guard = threading.Lock()
        self.checkpoints = 0

    def committed(self) -> None:
        """A commit happened: checkpoint soon (starts the thread the first time)."""
        if self._thread is None:
            with self._guard:
                if self._thread is None and not self._stopped:
                    self._thread = threading.Thread(
                        target=self._loop, name="sqlite checkpointer", daemon=True
                    )
                    self._thread.start()
        self._dirty.set()

    def _loop(self) -> None:
        connection = sqlite3.connect(self.path, timeout=0, check_same_thread=False)
        try:
            while True:
                self._dirty.wait()
                if self._stopped:
                    break
                time.sleep(self.DELAY_SECONDS)
                self._dirty.clear()
                self.checkpoint(connection)
                # `stop` sets the flag before the event, so a stop whose event was just
                # cleared is seen here.
                if self._stopped:
                    break
        finally:
            # A last checkpoint, so a clean shutdown leaves a short WAL.
            self.checkpoint(connection)
            connection.close()

    def checkpoint(self, connection: sqlite3.Connection) -> None:
        try:
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            self.checkpoints += 1
        except sqlite3.Error:
            # Locked or closing: the next commit brings the next attempt; the WAL stays valid.
            log.debug("WAL checkpoint skipped", exc_info=True)

    def stop(self) -> None:
        """Checkpoint once more and end the thread (waits for it)."""
        with self._guard:
            self._stopped = True
            thread = self._thread
        self._dirty.set()
        if thread is not None:
            thread.join()


class WriteGate:
    """One writer at a time in this process, the system's writers first (mostly).

    `Database`'s writers queue here instead of on SQLite's lock. A writer serving no API
    request (the in-process worker's claims, handlers and settlements; the scheduler) goes
    before queued API requests, up to `SYSTEM_RUN` in a row while a request waits: each
    spawn's job then moves as soon as the writer ahead of it commits, rather than behind
    every spawn that arrived meanwhile, so a workspace spends less time pending and its
    client polls it less (under 32 clients the polls were much of the work), and no request
    waits for a worker that always has more. Each kind keeps its order.
    """

    # System writers in a row while a request waits: a spawn's job takes about three
    # writes (its start, its end, its settlement, which is shared), its request one.
    SYSTEM_RUN = 3

    def __init__(self) -> None:
        self._held = False
        self._system_run = 0
        self._system: deque[asyncio.Future[None]] = deque()
        self._requests: deque[asyncio.Future[None]] = deque()

    @property
    def held(self) -> bool:
        return self._held

    async def acquire(self, *, system: bool) -> None:
        if not self._held and not self._system and not self._requests:
            self._held = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._system if system else self._requests
        queue.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted just as it was cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(waiter)
            raise

    def release(self) -> None:
        """Hand the gate to the next writer, system writers first, or open it."""
        self._discard_cancelled()
        if self._system and (not self._requests or self._system_run < self.SYSTEM_RUN):
            self._system_run += 1
            self._system.popleft().set_result(None)
        elif self._requests:
            self._system_run = 0
            self._requests.popleft().set_result(None)
        else:
            self._held = False

    def _discard_cancelled(self) -> None:
        for queue in (self._system, self._requests):
            while queue and queue[0].done():
                queue.popleft()

    @contextlib.asynccontextmanager
    async def held_by(self, *, system: bool) -> AsyncIterator[None]:
        await self.acquire(system=system)
        try:
            yield
        finally:
            self.release()
