"""SQL of the audit log: appending to chains, reading them, checkpoints and partitions.

Appending upserts each chain head, then appends each entry after it under the head's lock.
PostgreSQL does the lock, the numbering and the hash in one statement per entry
(`append_steps`), so the unit of work sends the entries with its COMMIT in one round trip
(see `spawnpoint.uow`); SQLite, its write transactions serialised already (BEGIN
IMMEDIATE), reads the heads and writes entries hashed in Python (`lock_steps`,
`write_steps`).
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, cast

from pydantic_core import to_jsonable_python
from sqlalchemy import (
    JSON,
    ColumnElement,
    Integer,
    Row,
    Select,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    literal_column,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement

from spawnpoint import sqlite_fast
from spawnpoint.audit.chain import (
    ENTRY_COLUMNS_WITH_HASHES,
    GENESIS_HASH,
    HASHED_FIELDS,
    AuditDraft,
    canonical_around,
    chain_of,
    encode_document,
    entry_hash,
    tenant_of,
)
from spawnpoint.db import DriverStatement, driver_connection, pipelined
from spawnpoint.kit.pagination import PageParams, fetch_page
from spawnpoint.models import AuditCheckpoint, AuditEntry, AuditHead

PARTITION_SCHEMA = "audit_partitions"
STREAM_BATCH = 5_000
Step = tuple[DriverStatement, dict[str, Any]]
_LOG = cast(Table, AuditEntry.__table__)
_HEADS = cast(Table, AuditHead.__table__)


class Head(NamedTuple):
    """A chain's last link, as locked by `lock_steps`."""

    chain_id: uuid.UUID
    seq: int
    hash: str
    time: datetime | None


class Statement(DriverStatement):
    """A driver statement that keeps its SQLAlchemy form, for SQLite to execute."""

    def __init__(self, clause: Executable, dialect: Dialect) -> None:
        super().__init__(cast(ClauseElement, clause), dialect)
        self.clause = clause


@dataclass(frozen=True)
class _Statements:
    create_head: Statement
    lock_head: Statement
    insert_entry: Statement
    move_head: Statement


def _param(name: str, column: Any) -> Any:
    return bindparam(name, type_=column.type, required=False)


@functools.lru_cache(maxsize=8)
def statements(dialect: Dialect) -> _Statements:
    """The append statements for `dialect`, compiled once."""
    dialect_insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
    # Parameters are named apart from the columns they fill, as SQLAlchemy requires.
    chain_id = _param("chain", _HEADS.c.chain_id)
    create_head = (
        dialect_insert(_HEADS)
        .values(
            chain_id=chain_id,
            seq=0,
            hash=GENESIS_HASH,
            time=None,
            archived_seq=0,
            archived_hash=GENESIS_HASH,
        )
        .on_conflict_do_nothing(index_elements=[_HEADS.c.chain_id])
    )
    lock_head = (
        select(_HEADS.c.chain_id, _HEADS.c.seq, _HEADS.c.hash, _HEADS.c.time)
        .where(_HEADS.c.chain_id == chain_id)
        .with_for_update()
    )
    entry_values: dict[str, Any] = {c.key: _param(f"new_{c.key}", c) for c in _LOG.c}
    # `details` is stored as its canonical JSON text, so verification can hash the stored
    # text as it is (PostgreSQL's `json` keeps text verbatim; SQLite stores text anyway).
    details_text = bindparam("new_details", type_=Text(), required=False)
    entry_values["details"] = (
        sql_cast(details_text, JSON()) if dialect.name == "postgresql" else details_text
    )
    insert_entry = insert(_LOG).values(entry_values)
    move_head = (
        update(_HEADS)
        .where(_HEADS.c.chain_id == chain_id)
        .values(
            seq=_param("new_seq", _HEADS.c.seq),
            hash=_param("new_hash", _HEADS.c.hash),
            time=_param("new_time", _HEADS.c.time),
        )
    )
    return _Statements(
        create_head=Statement(create_head, dialect),
        lock_head=Statement(lock_head, dialect),
        insert_entry=Statement(insert_entry, dialect),
        move_head=Statement(move_head, dialect),
    )


# The columns of an entry that its draft gives (the rest come from the chain head).
_DRAFT_COLUMNS = (
    "tenant_id",
    "actor_type",
    "actor_id",
    "action",
    "resource_type",
    "resource_id",
    "result",
    "ip",
    "user_agent",
    "reason",
    "request_id",
)


# `time` floored at the head's, and written as `chain.json_time` writes it. (Colons that
# are not parameters are escaped for SQLAlchemy's `text`.)
_APPEND_SQL = r"""
WITH moved AS (
    UPDATE audit_heads SET
        seq = audit_heads.seq + 1,
        time = GREATEST(CAST(:time AS timestamptz), audit_heads.time),
        prev_hash = audit_heads.hash,
        hash = encode(sha256(convert_to(
            audit_heads.hash || :head || CAST(audit_heads.seq + 1 AS text) || :mid
            || to_char(
                GREATEST(CAST(:time AS timestamptz), audit_heads.time) AT TIME ZONE 'UTC',
                'YYYY-MM-DD"T"HH24\:MI\:SS.US'
            ) || '+00\:00' || :tail,
            'UTF8'
        )), 'hex')
    WHERE audit_heads.chain_id = :chain
    RETURNING audit_heads.chain_id, audit_heads.seq, audit_heads.time,
        audit_heads.prev_hash, audit_heads.hash
)
INSERT INTO audit_log (
    chain_id, seq, time, prev_hash, hash, tenant_id, actor_type, actor_id, action,
    resource_type, resource_id, result, ip, user_agent, reason, request_id, details
)
SELECT moved.chain_id, moved.seq, moved.time, moved.prev_hash, moved.hash, :tenant_id,
    :actor_type, :actor_id, :action, :resource_type, :resource_id, :result, :ip,
    :user_agent, :reason, :request_id, CAST(:details AS json)
FROM moved
"""


@functools.lru_cache(maxsize=4)
def _append_statement(dialect: Dialect) -> Statement:
    """Append one entry to its chain in one PostgreSQL statement (`AuditLog.append_steps`).

    The UPDATE locks the chain head (or waits for the writer holding it, then sees the
    head as that writer left it: READ COMMITTED re-reads a row it waited for), numbers the
    entry after it, floors its time at the head's, and hashes the canonical JSON pieces
    the client sent around `seq` and `time` (`chain.canonical_around`), with `time` written
    as `chain.json_time` writes it. The head keeps its previous hash for the entry's
    `prev_hash`; the INSERT takes what the UPDATE returned.
    """
    clause = text(_APPEND_SQL).bindparams(
        bindparam("chain", type_=_HEADS.c.chain_id.type),
        bindparam("time", type_=_HEADS.c.time.type),
        bindparam("tenant_id", type_=_LOG.c.tenant_id.type),
    )
    return Statement(clause, dialect)


def _details(details: Mapping[str, Any]) -> dict[str, Any]:
    """`details` as the JSON column will give it back, so the hash covers what is stored.

    Values become JSON values (UUIDs and times as strings), and a round trip through JSON
    turns non-string keys into the strings they are stored as.
    """
    document: dict[str, Any] = json.loads(
        json.dumps(to_jsonable_python(dict(details)), allow_nan=False)
    )
    return document


@dataclass(frozen=True)
class AuditFilters:
    """What `GET /api/audit` narrows to; times are UTC, `since` inclusive, `until` not."""

    since: datetime | None = None
    until: datetime | None = None
    actor_id: str | None = None
    action_prefix: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    result: str | None = None


def action_starts_with(prefix: str) -> ColumnElement[bool]:
    """`action` starts with `prefix`, every character literal, case-sensitive everywhere."""
    return and_(
        AuditEntry.action.startswith(prefix, autoescape=True),
        func.substr(AuditEntry.action, 1, len(prefix)) == prefix,
    )


class Partition(NamedTuple):
    name: str
    start: datetime
    end: datetime


def month_start(value: datetime, shift: int = 0) -> datetime:
    """The first instant (UTC) of `value`'s month, `shift` months on."""
    value = value.astimezone(UTC)
    index = value.year * 12 + value.month - 1 + shift
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def partition_name(start: datetime) -> str:
    return f"audit_log_{start.year:04d}_{start.month:02d}"


class AuditLog:
    """The chains of `audit_log`, appended to and read in the caller's transaction.

    Nothing here commits: `append` writes in whatever transaction owns `session`.
    """

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def dialect(self) -> Dialect:
        return self.session.get_bind().dialect

    @property
    def is_postgres(self) -> bool:
        return self.dialect.name == "postgresql"

    # Appending

    def lock_steps(self, chain_ids: Sequence[uuid.UUID]) -> list[Step]:
        """Create (if new) and lock the heads of `chain_ids`, in one fixed order.

        Heads are locked sorted by chain id, so two transactions writing to the same
        chains never wait for each other in a cycle. A head created by a concurrent first
        writer is waited for (ON CONFLICT DO NOTHING), then locked like any other. The
        lock statements give (chain_id, seq, hash, time).
        """
        st = statements(self.dialect)
        steps: list[Step] = []
        for chain_id in sorted(set(chain_ids)):
            steps.append((st.create_head, {"chain": chain_id}))
            steps.append((st.lock_head, {"chain": chain_id}))
        return steps

    def write_steps(
        self, heads: Mapping[uuid.UUID, Head], drafts: Sequence[AuditDraft]
    ) -> list[Step]:
        """Insert `drafts` after the locked `heads`, and move the heads past them.

        Entries take the next `seq` of their chain in the order given. An entry's time is
        never earlier than its predecessor's (a draft made just before another that
        locked the head first takes that one's time), so `seq` and `time` order a chain
        alike and each month's partition holds a contiguous run of it.

        Raises:
            KeyError: a draft's chain is not among `heads` (it was not locked).
        """
        st = statements(self.dialect)
        current = dict(heads)
        steps: list[Step] = []
        for draft in drafts:
            chain_id = chain_of(draft.tenant_id)
            head = current[chain_id]
            time = draft.time.astimezone(UTC)
            if head.time is not None and time < head.time:
                time = head.time.astimezone(UTC)
            fields: dict[str, Any] = {
                "seq": head.seq + 1,
                "time": time,
                "tenant_id": draft.tenant_id,
                "actor_type": draft.actor_type,
                "actor_id": draft.actor_id,
                "action": draft.action,
                "resource_type": draft.resource_type,
                "resource_id": draft.resource_id,
                "result": draft.result,
                "ip": draft.ip,
                "user_agent": draft.user_agent,
                "reason": draft.reason,
                "request_id": draft.request_id,
                "details": _details(draft.details),
            }
            hash_ = entry_hash(head.hash, fields)
            row = {**fields, "chain_id": chain_id, "prev_hash": head.hash, "hash": hash_}
            row["details"] = encode_document(fields["details"])
            steps.append((st.insert_entry, {f"new_{name}": value for name, value in row.items()}))
            current[chain_id] = Head(chain_id, head.seq + 1, hash_, time)
        for chain_id, head in current.items():
            if head != heads[chain_id]:
                values = {"chain": chain_id, "new_seq": head.seq, "new_hash": head.hash}
                steps.append((st.move_head, {**values, "new_time": head.time}))
        return steps

    def append_steps(self, drafts: Sequence[AuditDraft]) -> list[Step]:
        """Steps that append `drafts` to their chains, needing no head read first
        (PostgreSQL): one pipeline, so the unit of work sends them with its COMMIT.

        Each chain's head is created if it is new, then one statement per entry locks it,
        numbers, hashes and inserts the entry (`_append_statement`). Entries go in chain id
        order (their own order within a chain), so two transactions writing to the same
        chains lock the heads in one order and never deadlock.
        """
        st = statements(self.dialect)
        append = _append_statement(self.dialect)
        ordered = sorted(drafts, key=lambda d: chain_of(d.tenant_id))
        chains = sorted({chain_of(d.tenant_id) for d in drafts})
        steps: list[Step] = [(st.create_head, {"chain": chain_id}) for chain_id in chains]
        for draft in ordered:
            details = _details(draft.details)
            fields = {name: getattr(draft, name) for name in _DRAFT_COLUMNS}
            head, mid, tail = canonical_around({**fields, "details": details})
            values = {
                **fields,
                "chain": chain_of(draft.tenant_id),
                "time": draft.time.astimezone(UTC),
                "details": encode_document(details),
                "head": head,
                "mid": mid,
                "tail": tail,
            }
            steps.append((append, values))
        return steps

    async def append(self, drafts: Sequence[AuditDraft]) -> None:
        """Append `drafts` to their chains in the caller's transaction (never commits)."""
        if not drafts:
            return
        chains = sorted({chain_of(d.tenant_id) for d in drafts})
        if self.is_postgres:
            await pipelined(self.session, self.append_steps(drafts))
            return
        if self.dialect.name == "sqlite":
            # On the sqlite3 connection itself (`spawnpoint.sqlite_fast`): the hot path of
            # every mutating request in the embedded mode.
            heads = {}
            for outcome in await sqlite_fast.run(self.session, _fast(self.lock_steps(chains))):
                for chain_id, seq, hash_, time in outcome.rows:
                    heads[chain_id] = Head(chain_id, seq, hash_, time)
            await sqlite_fast.run(self.session, _fast(self.write_steps(heads, drafts)))
            return
        connection = await self.session.connection()
        heads = {}
        for statement, values in self.lock_steps(chains):
            result = await connection.execute(_clause(statement), values)
            if result.returns_rows:
                for chain_id, seq, hash_, time in result:
                    heads[chain_id] = Head(chain_id, seq, hash_, time)
        await _run(connection, self.write_steps(heads, drafts))

    # Reading

    async def snapshot(self) -> None:
        """Make the rest of this read-only transaction see one snapshot.

        Call first thing in a `transaction(write=False)`: on PostgreSQL it turns the
        autocommit reader into a REPEATABLE READ transaction (streamed reads need a
        transaction, and heads, checkpoints and entries must agree); on SQLite, whose reader
        runs each statement on its own too, it opens a (deferred) transaction, which reads
        one snapshot until the unit of work ends it.
        """
        if self.is_postgres:
            await self.session.connection(
                execution_options={
                    "isolation_level": "REPEATABLE READ",
                    "postgresql_readonly": True,
                }
            )
            return
        connection = await self.session.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        if not getattr(driver, "in_transaction", False):  # a writer's is open already
            await connection.exec_driver_sql("BEGIN")

    async def head(self, chain_id: uuid.UUID) -> AuditHead | None:
        return await self.session.get(AuditHead, chain_id)

    async def heads(self) -> list[AuditHead]:
        return list((await self.session.execute(select(AuditHead))).scalars())

    async def page(
        self, chain_id: uuid.UUID, filters: AuditFilters, params: PageParams
    ) -> tuple[list[AuditEntry], str | None]:
        """One page of a chain's entries, newest (highest `seq`) first."""
        statement = select(AuditEntry).where(AuditEntry.chain_id == chain_id)
        if filters.since is not None:
            statement = statement.where(AuditEntry.time >= filters.since)
        if filters.until is not None:
            statement = statement.where(AuditEntry.time < filters.until)
        for column, value in (
            (AuditEntry.actor_id, filters.actor_id),
            (AuditEntry.resource_type, filters.resource_type),
            (AuditEntry.resource_id, filters.resource_id),
            (AuditEntry.result, filters.result),
        ):
            if value is not None:
                statement = statement.where(column == value)
        if filters.action_prefix is not None:
            statement = statement.where(action_starts_with(filters.action_prefix))
        rows, cursor = await fetch_page(
            self.session,
            statement,
            key=AuditEntry.seq,
            params=params,
            key_type=int,
            descending=True,
        )
        return [row[0] for row in rows], cursor

    async def stream(
        self,
        chain_id: uuid.UUID,
        *,
        first_seq: int = 1,
        last_seq: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> AsyncIterator[Sequence[Row[Any]]]:
        """A chain's entries in `seq` order, in batches, with bounded memory.

        Rows are in `ENTRY_COLUMNS_WITH_HASHES` order and in their canonical form already:
        `time` and `tenant_id` as the strings the hash covers (the database formats them),
        `details` as its stored JSON text. No column goes through SQLAlchemy's type
        processing, which would cost more than recomputing the hash. A server-side cursor
        on PostgreSQL (call `snapshot` first, or read in a write transaction).
        """
        statement = _entries_statement(
            self.dialect.name, chain_id, first_seq=first_seq, last_seq=last_seq
        )
        if since is not None:
            statement = statement.where(_LOG.c.time >= since)
        if until is not None:
            statement = statement.where(_LOG.c.time < until)
        if self.is_postgres:
            # psycopg's own server-side cursor, in the session's transaction: measured 1.3 to
            # 1.5 times the rows/s of SQLAlchemy's streamed fetch, and the rows need no
            # processing.
            compiled = DriverStatement(statement, self.dialect)
            raw = await driver_connection(self.session)
            async with raw.cursor(name=f"audit_stream_{uuid.uuid4().hex[:8]}") as cursor:
                cursor.itersize = STREAM_BATCH
                await cursor.execute(compiled.sql, compiled.params({}))
                while rows := await cursor.fetchmany(STREAM_BATCH):
                    yield rows
            return
        connection = await self.session.connection()
        result = await connection.stream(statement.execution_options(yield_per=STREAM_BATCH))
        try:
            async for batch in result.partitions(STREAM_BATCH):
                yield batch
        finally:
            await result.close()

    def range_query(
        self, chain_id: uuid.UUID, *, first_seq: int, last_seq: int | None
    ) -> RangeQuery:
        """One range of `seq` for `spawnpoint.audit.ranges`, as SQL and parameters for the
        database driver itself (psycopg, or the standard library's `sqlite3` with named
        parameters).

        On PostgreSQL, `stream`'s rows. On SQLite the database also writes each entry's
        canonical JSON (`json_quote` escapes exactly as `json.dumps(..., ensure_ascii=False)`
        does), so a row is five values instead of sixteen; `row_sql` reads one entry's
        fields by `seq`, for the verifier to judge an entry whose document does not match
        (whatever the reason) exactly as it would without the shortcut.
        """
        statement = _entries_statement(
            self.dialect.name, chain_id, first_seq=first_seq, last_seq=last_seq
        )
        if self.is_postgres:
            compiled = DriverStatement(statement, self.dialect)
            return RangeQuery(compiled.sql, compiled.params({}))
        dialect = sqlite.dialect(paramstyle="named")
        documents = DriverStatement(_documents_statement(chain_id, first_seq, last_seq), dialect)
        one = DriverStatement(
            _entries_statement("sqlite", chain_id, first_seq=0, last_seq=None).where(
                _LOG.c.seq == bindparam("entry_seq")
            ),
            dialect,
        )
        return RangeQuery(
            documents.sql, documents.params({}), row_sql=one.sql, row_params=one.params({})
        )

    async def first_seq_since(self, chain_id: uuid.UUID, since: datetime) -> int | None:
        return (
            await self.session.execute(
                select(func.min(AuditEntry.seq)).where(
                    AuditEntry.chain_id == chain_id, AuditEntry.time >= since
                )
            )
        ).scalar_one_or_none()

    async def last_seq_before(self, chain_id: uuid.UUID, until: datetime) -> int | None:
        return (
            await self.session.execute(
                select(func.max(AuditEntry.seq)).where(
                    AuditEntry.chain_id == chain_id, AuditEntry.time < until
                )
            )
        ).scalar_one_or_none()

    async def entry(self, chain_id: uuid.UUID, seq: int) -> AuditEntry | None:
        return (
            (
                await self.session.execute(
                    select(AuditEntry).where(AuditEntry.chain_id == chain_id, AuditEntry.seq == seq)
                )
            )
            .scalars()
            .first()
        )

    # Checkpoints

    async def latest_checkpoint(self, chain_id: uuid.UUID) -> AuditCheckpoint | None:
        return (
            await self.session.execute(
                select(AuditCheckpoint)
                .where(AuditCheckpoint.chain_id == chain_id)
                .order_by(AuditCheckpoint.seq.desc(), AuditCheckpoint.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()

    async def checkpoint_at(self, chain_id: uuid.UUID, seq: int) -> AuditCheckpoint | None:
        """The newest checkpoint of exactly `seq`."""
        return (
            await self.session.execute(
                select(AuditCheckpoint)
                .where(AuditCheckpoint.chain_id == chain_id, AuditCheckpoint.seq == seq)
                .order_by(AuditCheckpoint.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()

    async def first_checkpoint_from(self, chain_id: uuid.UUID, seq: int) -> AuditCheckpoint | None:
        """The earliest checkpoint at or after `seq`: the one that covers entry `seq`."""
        return (
            await self.session.execute(
                select(AuditCheckpoint)
                .where(AuditCheckpoint.chain_id == chain_id, AuditCheckpoint.seq >= seq)
                .order_by(AuditCheckpoint.seq, AuditCheckpoint.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()

    async def unsigned_heads(self) -> list[AuditHead]:
        """Heads that moved since their chain's last checkpoint (or never had one)."""
        signed = (
            select(func.max(AuditCheckpoint.seq))
            .where(AuditCheckpoint.chain_id == AuditHead.chain_id)
            .scalar_subquery()
        )
        statement = select(AuditHead).where(
            AuditHead.seq > 0, AuditHead.seq > func.coalesce(signed, 0)
        )
        return list((await self.session.execute(statement)).scalars())

    async def add_checkpoint(self, checkpoint: AuditCheckpoint) -> AuditCheckpoint:
        self.session.add(checkpoint)
        await self.session.flush()
        return checkpoint

    async def page_checkpoints(
        self, chain_id: uuid.UUID, params: PageParams
    ) -> tuple[list[AuditCheckpoint], str | None]:
        """A chain's checkpoints, newest first."""
        rows, cursor = await fetch_page(
            self.session,
            select(AuditCheckpoint).where(AuditCheckpoint.chain_id == chain_id),
            key=AuditCheckpoint.id,
            params=params,
            descending=True,
        )
        return [row[0] for row in rows], cursor

    # Partitions and retention

    async def partitions(self) -> list[Partition]:
        """The monthly partitions of `audit_log` (PostgreSQL; none on SQLite), oldest first."""
        if not self.is_postgres:
            return []
        names = (
            await self.session.execute(
                text(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'audit_log'::regclass ORDER BY c.relname"
                )
            )
        ).scalars()
        found = []
        for name in names:
            year, month = (int(part) for part in name.removeprefix("audit_log_").split("_"))
            start = datetime(year, month, 1, tzinfo=UTC)
            found.append(Partition(name, start, month_start(start, 1)))
        return found

    async def create_partition(self, start: datetime) -> str:
        """Create the partition of the month beginning at `start` (PostgreSQL), if missing."""
        name = partition_name(start)
        end = month_start(start, 1)
        await self.session.execute(
            text(
                f"CREATE TABLE IF NOT EXISTS {PARTITION_SCHEMA}.{name} PARTITION OF audit_log "
                f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
            )
        )
        return name

    async def drop_partition(self, name: str) -> None:
        await self.session.execute(text(f"DROP TABLE IF EXISTS {PARTITION_SCHEMA}.{name}"))

    async def oldest_time(self) -> datetime | None:
        return (await self.session.execute(select(func.min(AuditEntry.time)))).scalar_one_or_none()

    async def chain_ends(self, start: datetime, end: datetime) -> list[tuple[uuid.UUID, int]]:
        """Each chain with entries in [start, end), with its last `seq` there."""
        rows = await self.session.execute(
            select(AuditEntry.chain_id, func.max(AuditEntry.seq))
            .where(AuditEntry.time >= start, AuditEntry.time < end)
            .group_by(AuditEntry.chain_id)
        )
        return [(chain_id, seq) for chain_id, seq in rows]

    async def delete_between(self, start: datetime, end: datetime) -> int:
        """Delete the entries of [start, end) (SQLite's stand-in for dropping a partition)."""
        result = await self.session.execute(
            delete(AuditEntry).where(AuditEntry.time >= start, AuditEntry.time < end)
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def mark_archived(self, chain_id: uuid.UUID, *, seq: int, hash: str) -> None:
        """Record that a chain's entries up to `seq` (ending in `hash`) left the database."""
        await self.session.execute(
            update(AuditHead)
            .where(AuditHead.chain_id == chain_id, AuditHead.archived_seq < seq)
            .values(archived_seq=seq, archived_hash=hash)
        )


@dataclass(frozen=True)
class RangeQuery:
    sql: str
    params: dict[str, Any]
    # SQLite: rows are (seq, same tenant, prev_hash, hash, document); one entry's fields by
    # `seq` (the parameter `entry_seq`) come from `row_sql`.
    row_sql: str | None = None
    row_params: dict[str, Any] | None = None


def _documents_statement(chain_id: uuid.UUID, first_seq: int, last_seq: int | None) -> Select[Any]:
    """SQLite: each entry's canonical JSON, written by the database (see `range_query`)."""
    columns = _canonical_columns("sqlite")

    def quoted(name: str) -> ColumnElement[Any]:
        return func.json_quote(columns[name])

    parts: list[ColumnElement[Any]] = []
    for i, name in enumerate(sorted(HASHED_FIELDS)):
        parts.append(literal(("{" if i == 0 else ",") + f'"{name}":'))
        if name == "details":
            parts.append(columns[name])
        elif name == "seq":
            parts.append(sql_cast(_LOG.c.seq, Text()))
        else:
            parts.append(quoted(name))
    parts.append(literal("}"))
    document = parts[0]
    for part in parts[1:]:
        document = document.op("||")(part)
    tenant = tenant_of(chain_id)
    same_tenant = _LOG.c.tenant_id.is_(None) if tenant is None else _LOG.c.tenant_id == tenant
    statement = select(_LOG.c.seq, same_tenant, _LOG.c.prev_hash, _LOG.c.hash, document).where(
        _LOG.c.chain_id == chain_id, _LOG.c.seq >= first_seq
    )
    if last_seq is not None:
        statement = statement.where(_LOG.c.seq <= last_seq)
    return statement.order_by(_LOG.c.seq, _LOG.c.time)


def _entries_statement(
    dialect_name: str, chain_id: uuid.UUID, *, first_seq: int, last_seq: int | None
) -> Select[Any]:
    """A chain's entries from `first_seq` (to `last_seq`) in `seq` order, canonical form."""
    columns = _canonical_columns(dialect_name)
    statement = select(*(columns[name] for name in ENTRY_COLUMNS_WITH_HASHES)).where(
        _LOG.c.chain_id == chain_id, _LOG.c.seq >= first_seq
    )
    if last_seq is not None:
        statement = statement.where(_LOG.c.seq <= last_seq)
    return statement.order_by(_LOG.c.seq, _LOG.c.time)


@functools.lru_cache(maxsize=4)
def _canonical_columns(dialect_name: str) -> dict[str, ColumnElement[Any]]:
    """The entry columns as `stream` reads them on `dialect_name`: no result processing.

    PostgreSQL formats the time in UTC and the UUID itself. SQLite holds what SQLAlchemy
    stored: times as `YYYY-MM-DD HH:MM:SS.ffffff` in UTC (microseconds always written),
    UUIDs as 32 hex digits; both are rearranged into the canonical form in SQL.
    """
    columns: dict[str, ColumnElement[Any]] = {
        name: type_coerce(_LOG.c[name], String()) for name in ENTRY_COLUMNS_WITH_HASHES
    }
    columns["seq"] = type_coerce(_LOG.c.seq, Integer())
    if dialect_name == "postgresql":
        columns["time"] = literal_column(
            "to_char(audit_log.time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')",
            String(),
        )
        columns["tenant_id"] = literal_column("CAST(audit_log.tenant_id AS TEXT)", String())
        columns["details"] = literal_column("CAST(audit_log.details AS TEXT)", String())
        return columns
    columns["time"] = literal_column(
        "substr(audit_log.time, 1, 10) || 'T' || substr(audit_log.time, 12) || '+00:00'",
        String(),
    )
    parts = [(1, 8), (9, 4), (13, 4), (17, 4), (21, 12)]
    columns["tenant_id"] = literal_column(
        "lower("
        + " || '-' || ".join(f"substr(audit_log.tenant_id, {a}, {n})" for a, n in parts)
        + ")",
        String(),
    )
    return columns


@functools.lru_cache(maxsize=16)
def _fast_statement(statement: Statement) -> sqlite_fast.FastStatement:
    return sqlite_fast.FastStatement(cast(ClauseElement, statement.clause))


def _fast(steps: Sequence[Step]) -> list[sqlite_fast.Step]:
    """`steps` for the sqlite3 connection itself."""
    return [(_fast_statement(cast(Statement, statement)), values) for statement, values in steps]


def _clause(statement: DriverStatement) -> Executable:
    assert isinstance(statement, Statement)
    return statement.clause


async def _run(connection: AsyncConnection, steps: Sequence[Step]) -> None:
    """Run `steps` through SQLAlchemy, consecutive runs of one statement as one executemany."""
    index = 0
    while index < len(steps):
        statement = steps[index][0]
        batch = []
        while index < len(steps) and steps[index][0] is statement:
            batch.append(steps[index][1])
            index += 1
        await connection.execute(_clause(statement), batch if len(batch) > 1 else batch[0])
