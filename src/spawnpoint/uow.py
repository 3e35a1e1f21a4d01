"""The unit of work: the one owner of a transaction, and the only code that commits.

Requests, job handlers, the scheduler and the CLI all open one (`Database.unit_of_work`, or
`Database.transaction` for callers that want only the session). Code below it adds rows to
the session, may ask it for a pipelined fast path on PostgreSQL, and hands it three kinds of
work that belong to the commit:

- outbox events (`emit`) and audit entries (`record`): rows written in the same commit as
  the change they describe, never before, never after;
- `on_commit` callbacks (worker wake-ups, cache invalidation): run only once the commit
  succeeded, never after a rollback.

A fast path that wants its last statements to ride with the COMMIT asks for it with
`pipelined(steps, final=True)`: the unit of work then sends the outbox rows, the audit
entries and the COMMIT in the same round trip, so nothing it was given is left out.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.db import DriverStatement, pipelined
from spawnpoint.sqlite_inline import InlineConnection

if TYPE_CHECKING:
    from spawnpoint.audit.chain import AuditDraft
    from spawnpoint.db import Database
    from spawnpoint.kit.auditing import RequestAudit

log = logging.getLogger("spawnpoint.uow")
Step = tuple[DriverStatement, dict[str, Any]]
Callback = Callable[[], object]
_OWNER = "spawnpoint.unit_of_work"
_OUTBOX_NUDGE = "spawnpoint.events.relay.nudge"


class NoUnitOfWork(RuntimeError):
    """A session that no unit of work owns was asked for one."""


def unit_of(session: AsyncSession) -> UnitOfWork:
    """The unit of work that owns `session`.

    Lets code that is handed a session (a lifecycle transition, a periodic task) add its
    outbox event or audit entry to the same commit without another parameter.
    """
    owner = session.info.get(_OWNER)
    if owner is None:
        raise NoUnitOfWork("this session is not owned by a unit of work")
    assert isinstance(owner, UnitOfWork)
    return owner


def owner_of(session: AsyncSession) -> UnitOfWork | None:
    """`unit_of`, or None for a session no unit of work owns."""
    owner = session.info.get(_OWNER)
    return owner if isinstance(owner, UnitOfWork) else None


@dataclass
class UnitOfWork:
    """One transaction: its session, the rows that ride in its commit, its callbacks."""

    database: Database
    session: AsyncSession
    write: bool
    # The entry of the API request this unit of work serves, completed as it runs.
    request: RequestAudit | None = None
    outbox: list[dict[str, Any]] = field(default_factory=list)
    audit: list[AuditDraft] = field(default_factory=list)
    # Outbox rows that describe a refusal: written, in a transaction of their own, only
    # when this one rolls back (a refused spawn changes nothing else).
    refusals: list[dict[str, Any]] = field(default_factory=list)
    _callbacks: dict[Hashable, Callback] = field(default_factory=dict)
    _committed: bool = False
    _finished: bool = False
    # A read's connection for compiled statements on SQLite (`direct_reader`).
    _direct: InlineConnection | None = None

    def __post_init__(self) -> None:
        self.session.info[_OWNER] = self
        if self.request is not None:
            self.request.watch(self.session.sync_session)

    @property
    def is_postgres(self) -> bool:
        return self.session.get_bind().dialect.name == "postgresql"

    @property
    def committed(self) -> bool:
        return self._committed

    def on_commit(self, callback: Callback, *, key: Hashable | None = None) -> None:
        """Run `callback` after a successful commit; never after a rollback.

        Callbacks under the same `key` run once per transaction (the last one given).
        A coroutine function is awaited. Errors are logged, not raised: the commit is done.
        """
        self._callbacks[key if key is not None else object()] = callback

    def emit(self, event: dict[str, Any]) -> None:
        """Add an outbox row (complete column values, `events.outbox.outbox_event`)."""
        self._check_open()
        self.outbox.append(event)
        # This process's relay sends it at once rather than at its next poll.
        self.on_commit(self.database.outbox_nudges.fire, key=_OUTBOX_NUDGE)

    def emit_if_refused(self, event: dict[str, Any]) -> None:
        """Keep an outbox row for the refusal about to be raised (see `refusals`)."""
        self.refusals.append(event)

    def describe(self, *, resource_id: object = None, **details: Any) -> None:
        """Name the request's resource (a create's new id) and add details to its entry."""
        if self.request is None:
            return
        if resource_id is not None:
            self.request.resource_id = str(resource_id)
        self.request.details.update(details)

    def record(self, draft: AuditDraft) -> None:
        """Append an audit entry to its tenant's chain in this transaction's commit."""
        self._check_open()
        self.audit.append(draft)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A savepoint whose rollback also forgets the outbox events and audit entries
        given inside it."""
        marks = (len(self.outbox), len(self.audit))
        try:
            async with self.session.begin_nested():
                yield
        except BaseException:
            del self.outbox[marks[0] :]
            del self.audit[marks[1] :]
            raise

    def direct_reader(self) -> InlineConnection | None:
        """The connection this read runs its compiled statements on, outside SQLAlchemy
        (`sqlite_fast`); None for a write, or a database without them (PostgreSQL)."""
        if self._direct is None and not self.write:
            reads = self.database.direct_reads
            if reads is not None:
                self._direct = reads.take()
        return self._direct

    def _idle(self) -> bool:
        """Whether the session never reached the database and holds nothing to write: it
        then commits, rolls back and closes without IO, so without a greenlet hop each."""
        session = self.session.sync_session
        transaction = session.get_transaction()
        if transaction is not None and transaction._connections:
            return False
        return not (session.new or session.dirty or session.deleted)

    def _check_open(self) -> None:
        if self._committed:
            raise RuntimeError("this unit of work has already committed")

    def _drafts(self) -> list[AuditDraft]:
        if not self._finished:
            self._finished = True
            if self.request is not None and self.request.principal is not None:
                self.audit.append(self.request.draft("success"))
        return self.audit

    async def pipelined(self, steps: Sequence[Step], *, final: bool = False) -> list[Any]:
        """Run `steps` in this transaction in one round trip (PostgreSQL only).

        With `final`, the caller writes nothing more: the ORM's pending changes are flushed
        first, then `steps`, the outbox rows, the audit entries and the COMMIT go out in one
        round trip (an entry is numbered and hashed under its chain head's lock by the
        database itself, `AuditLog.append_steps`). Returns a cursor per step of `steps`.
        """
        self._check_open()
        if not final:
            return await pipelined(self.session, steps)
        await self.session.flush()
        from spawnpoint.audit.repository import AuditLog

        tail = [*self._outbox_steps(), *AuditLog(self.session).append_steps(self._drafts())]
        cursors = await pipelined(self.session, [*steps, *tail], commit=True)
        self._committed = True
        return cursors[: len(steps)]

    def _outbox_steps(self) -> list[Step]:
        from spawnpoint.events.repository import OutboxWriter

        return OutboxWriter(self.session).insert_steps(self.outbox)

    async def commit(self) -> None:
        """Write what rides in the commit, then commit (unless a final pipeline did)."""
        if not self._committed:
            drafts = self._drafts()
            if self.is_postgres and (drafts or self.outbox):
                await self.pipelined([], final=True)
            else:
                if self.outbox:
                    from spawnpoint.events.repository import OutboxWriter

                    await OutboxWriter(self.session).insert(self.outbox)
                if drafts:
                    from spawnpoint.audit.repository import AuditLog

                    await AuditLog(self.session).append(drafts)
                if self._idle():
                    self.session.sync_session.commit()
                else:
                    await self.session.commit()
                self._committed = True
                return
        if self.session.new or self.session.dirty or self.session.deleted:
            raise RuntimeError("rows were added after this unit of work committed")
        # The COMMIT went out with the final pipeline; this only ends SQLAlchemy's own
        # transaction (psycopg sends nothing for a connection already idle).
        await self.session.commit()

    async def run_callbacks(self) -> None:
        for callback in self._callbacks.values():
            try:
                outcome = callback()
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                log.exception("after-commit callback %r failed", callback)
        self._callbacks.clear()

    async def __aenter__(self) -> UnitOfWork:
        # The database transaction begins with the first statement: beginning the session's
        # does no IO, and called directly it costs no greenlet hop.
        self.session.sync_session.begin()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is None:
                await self.commit()
            elif self._idle():
                self.session.sync_session.rollback()
            else:
                await self.session.rollback()
        finally:
            self.session.info.pop(_OWNER, None)
            direct, self._direct = self._direct, None
            if direct is not None:
                self.database.direct_reads.give_back(direct)  # type: ignore[union-attr]
            if self._idle():
                self.session.sync_session.close()
            else:
                await self.session.close()
        if exc is None:
            await self.run_callbacks()


class ReadOnDemand:
    """A read request's transaction, begun when the request first asks for its session.

    The route opens none up front (a route may read nothing) and closes it once the handler
    has produced the response, before the response is sent (`kit/routing.py`): committed, or
    rolled back when the handler failed. Held by the route rather than by a generator
    dependency, which FastAPI wraps in an exit stack and a cancel scope on every request.
    """

    __slots__ = ("_entered", "_uow", "database")

    def __init__(self, database: Database) -> None:
        self.database = database
        self._entered: AbstractAsyncContextManager[UnitOfWork] | None = None
        self._uow: UnitOfWork | None = None

    async def session(self) -> AsyncSession:
        if self._uow is None:
            entered = self.database.unit_of_work(write=False)
            self._uow = await entered.__aenter__()
            self._entered = entered
        return self._uow.session

    async def close(self, exc: BaseException | None = None) -> None:
        """Commit (or, after `exc`, roll back) the transaction if one was begun."""
        entered, self._entered, self._uow = self._entered, None, None
        if entered is None:
            return
        if exc is None:
            await entered.__aexit__(None, None, None)
        else:
            await entered.__aexit__(type(exc), exc, exc.__traceback__)
