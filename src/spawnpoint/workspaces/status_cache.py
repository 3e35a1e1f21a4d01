"""The status and connection documents of permit workspaces, kept in Redis.

Why Redis (the provisioning seed): the Permit Manager and the remote-desktop gateway poll
`GET /api/v1/workspaces/{permitId}/status` and `/connection`; with REDIS_URL set those
answer from memory, without a database round trip, even while the database is slow. The
database stays the source of truth: a miss, Redis down or slow (STATUS_CACHE_TIMEOUT_SECONDS),
or a process that knows it missed writes answers from the database, and the answer is the
same bytes either way (both paths render the documents with `documents_of`).

Writes go through after the commit (an `on_commit` step of the unit of work, registered by
`refresh_on_commit` wherever a permit workspace's state, error, connection or `updated_at`
changes: by the transitions, by the job handlers' Core updates, and by an ORM flush hook
for any other change of a permit workspace). The step does not write what the transaction
saw: it reads the committed row again and writes that, under the row's version
(`updated_at` in microseconds: every writer of a workspace holds its row lock when it
stamps it, so the stamps of one row grow with its commits). A Lua script compares and
sets: an older version never replaces a newer one, so of two writers racing after their
commits the one that read the newer row wins, whichever arrives last. Writes that fail are
remembered by the process (up to PENDING_MAX ids), retried in the background, and written
before it trusts Redis for reads again; the scheduler's sweep (`status_cache_task`) and
`spawnpoint cache rebuild` rewrite documents from the database to repair drift that no
process remembers (a write lost by a process that died, for one).

Keys are `{STATUS_CACHE_PREFIX}:{tenant id}:{permit id}`, one hash each (`v`, `status`,
`connection`): a tenant's key is only ever built from the caller's own tenant, so another
tenant's permit is a miss, then the database's 404. Plain Redis only: the batch script
writes keys of several slots, which a cluster refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, cast

from prometheus_client import Counter
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from sqlalchemy import event
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.scheduler import PeriodicTask
from spawnpoint.kit.metrics import SWEEP_ROW_ERRORS
from spawnpoint.models import Workspace, WorkspaceState
from spawnpoint.uow import NoUnitOfWork, unit_of
from spawnpoint.workspaces.repository import StatusRows
from spawnpoint.workspaces.schemas import PermitConnection, PermitStatus

log = logging.getLogger("spawnpoint.workspaces.status_cache")

Document = Literal["status", "connection"]
TASK = "status_cache.repair"
# Workspace ids whose write failed, kept for the next write or read; more are left to the sweep.
PENDING_MAX = 10_000
# How many remembered ids one read or write takes along.
DRAIN_BATCH = 500
_SESSION_KEY = "spawnpoint.status_cache"

CACHE_READS = Counter(
    "spawnpoint_status_cache_reads",
    "Permit status and connection reads, by outcome: hit (answered from Redis), miss (not "
    "in Redis: answered from the database, then written), fallback (Redis down, slow or "
    "behind: answered from the database).",
    ["outcome"],
)
CACHE_WRITES = Counter(
    "spawnpoint_status_cache_writes",
    "Permit documents sent to Redis, by outcome: written, stale (Redis held a newer "
    "version), deleted (the workspace or its permit id is gone), failed (Redis down or "
    "slow; remembered and written again later).",
    ["outcome"],
)

# For each key: write (v, status, connection) unless the stored version is newer.
# ARGV holds three values per key; returns 1 (written) or 0 (stale) per key.
COMPARE_AND_SET = """
local written = {}
for i, key in ipairs(KEYS) do
    local version = ARGV[3 * i - 2]
    local stored = redis.call("HGET", key, "v")
    if stored == false or tonumber(version) >= tonumber(stored) then
        redis.call("HSET", key, "v", version, "status", ARGV[3 * i - 1],
            "connection", ARGV[3 * i])
        written[i] = 1
    else
        written[i] = 0
    end
end
return written
"""


class CacheUnavailable(RuntimeError):
    """Redis did not answer in time, refused the connection, or is in its retry pause."""


class PermitRow(Protocol):
    """What the documents are made of: a `Workspace`, or a row of `StatusRows`."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def tenant_id(self) -> uuid.UUID: ...
    @property
    def external_ref(self) -> str | None: ...
    @property
    def state(self) -> str: ...
    @property
    def error(self) -> str | None: ...
    @property
    def updated_at(self) -> datetime: ...
    @property
    def connection(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class PermitDocuments:
    """One workspace's two documents, rendered, with the version they were read at."""

    tenant_id: uuid.UUID
    permit_id: str
    version: int
    status: bytes
    connection: bytes

    def document(self, which: Document) -> bytes:
        return self.status if which == "status" else self.connection


def version_of(updated_at: datetime) -> int:
    """A row's version: its `updated_at` in microseconds since the epoch (UTC if naive).

    Exact in Lua's doubles (below 2**53) until the year 2255.
    """
    if updated_at.tzinfo is None:
        updated_at = updated_at.replace(tzinfo=UTC)
    delta = updated_at - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def documents_of(row: PermitRow) -> PermitDocuments:
    """The JSON the two permit routes answer for `row`, from the database or from Redis.

    Raises:
        ValueError: the row has no permit id, or a value the schemas refuse.
    """
    if row.external_ref is None:
        raise ValueError(f"workspace {row.id} has no external_ref")
    state = WorkspaceState(row.state)
    status = PermitStatus(
        permit_id=row.external_ref,
        workspace_id=row.id,
        status=state,
        error=row.error,
        updated_at=row.updated_at,
    )
    connection = PermitConnection(
        permit_id=row.external_ref,
        workspace_id=row.id,
        status=state,
        connection=row.connection,
    )
    return PermitDocuments(
        tenant_id=row.tenant_id,
        permit_id=row.external_ref,
        version=version_of(row.updated_at),
        status=status.__pydantic_serializer__.to_json(status),
        connection=connection.__pydantic_serializer__.to_json(connection),
    )


@dataclass
class StatusCache:
    """The Redis side: keys, the compare-and-set script, timeouts and the retry pause.

    After a failure Redis is left alone for `retry_seconds` (reads go to the database at
    once instead of waiting for a timeout each). `pending` holds the workspaces whose
    write failed; while any is pending, reads do not trust Redis.
    """

    client: Redis
    prefix: str
    timeout: float
    retry_seconds: float
    pending: dict[uuid.UUID, tuple[uuid.UUID, str]] = field(default_factory=dict)
    _paused_until: float = 0.0

    def __post_init__(self) -> None:
        self._compare_and_set = self.client.register_script(COMPARE_AND_SET)

    @classmethod
    def connect(cls, url: str, *, prefix: str, timeout: float, retry_seconds: float) -> StatusCache:
        client = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate retry: a pooled connection that Redis closed (a restart)
            # reconnects at once; the whole call stays within `timeout` regardless.
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client=client, prefix=prefix, timeout=timeout, retry_seconds=retry_seconds)

    @classmethod
    def from_settings(cls, settings: Settings) -> StatusCache:
        if not settings.redis_url:
            raise ValueError("REDIS_URL is not set")
        return cls.connect(
            settings.redis_url,
            prefix=settings.status_cache_prefix,
            timeout=settings.status_cache_timeout_seconds,
            retry_seconds=settings.status_cache_retry_seconds,
        )

    def key(self, tenant_id: uuid.UUID, permit_id: str) -> str:
        return f"{self.prefix}:{tenant_id}:{permit_id}"

    @property
    def paused(self) -> bool:
        return time.monotonic() < self._paused_until

    @property
    def trusted(self) -> bool:
        """Whether reads may be answered from Redis: reachable lately, no write owed."""
        return not self.paused and not self.pending

    async def _call(self, operation: Any) -> Any:
        try:
            if self.paused:
                raise CacheUnavailable("Redis is paused after a failure")
            async with asyncio.timeout(self.timeout):
                return await operation
        except (RedisError, OSError, TimeoutError) as exc:
            self._paused_until = time.monotonic() + self.retry_seconds
            raise CacheUnavailable(f"Redis did not answer: {exc!r}") from exc
        finally:
            if asyncio.iscoroutine(operation):
                operation.close()

    async def read(self, tenant_id: uuid.UUID, permit_id: str, which: Document) -> bytes | None:
        """The stored document, or None when Redis has none.

        Raises:
            CacheUnavailable: Redis is down, slow or paused.
        """
        found: bytes | None = await self._call(
            self.client.hget(self.key(tenant_id, permit_id), which)
        )
        return found

    async def put(self, documents: Sequence[PermitDocuments]) -> list[bool]:
        """Write each document unless Redis holds a newer version; whether each was written.

        Raises:
            CacheUnavailable: Redis is down, slow or paused.
        """
        if not documents:
            return []
        keys = [self.key(d.tenant_id, d.permit_id) for d in documents]
        values: list[bytes | int] = []
        for d in documents:
            values += [d.version, d.status, d.connection]
        flags = await self._call(self._compare_and_set(keys=keys, args=values))
        return [bool(flag) for flag in flags]

    async def drop(self, keys: Sequence[tuple[uuid.UUID, str]]) -> None:
        """Delete documents (always safe: a miss answers from the database).

        Raises:
            CacheUnavailable: Redis is down, slow or paused.
        """
        if keys:
            await self._call(self.client.delete(*(self.key(t, p) for t, p in keys)))

    async def scan(self, cursor: int, count: int) -> tuple[int, list[tuple[uuid.UUID, str]]]:
        """One SCAN step over this prefix's keys: the next cursor and the (tenant, permit)
        pairs found (keys of another shape are skipped).

        Raises:
            CacheUnavailable: Redis is down, slow or paused.
        """
        cursor, keys = await self._call(
            self.client.scan(cursor, match=f"{self.prefix}:*", count=count)
        )
        found: list[tuple[uuid.UUID, str]] = []
        for raw in keys:
            rest = raw.decode().removeprefix(f"{self.prefix}:")
            tenant, _, permit = rest.partition(":")
            with contextlib.suppress(ValueError):
                found.append((uuid.UUID(tenant), permit))
        return int(cursor), found

    def owe(self, keys: Mapping[uuid.UUID, tuple[uuid.UUID, str]]) -> None:
        """Remember workspaces (id → tenant, permit id) whose write failed; beyond
        PENDING_MAX the sweep repairs them."""
        for workspace_id, key in keys.items():
            if len(self.pending) >= PENDING_MAX and workspace_id not in self.pending:
                log.warning("status cache: %d writes owed; the sweep repairs more", PENDING_MAX)
                return
            self.pending[workspace_id] = key

    async def aclose(self) -> None:
        await self.client.aclose()


@dataclass
class StatusKeeper:
    """The status cache of one database: writes after commits, reads with a fallback.

    While writes are owed, a background task writes them again every `retry_seconds`, so
    the cache heals once Redis answers even if this process writes and reads nothing more.
    """

    database: Database
    cache: StatusCache
    _retry: asyncio.Task[None] | None = None

    def _retry_later(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.get_running_loop().create_task(
                self._write_owed(), name="status cache: owed writes"
            )

    async def _write_owed(self) -> None:
        # A pause, not a test sleep: Redis is given `retry_seconds` to come back.
        await asyncio.sleep(max(self.cache.retry_seconds, 0.05))
        self._retry = None
        await self.refresh({})

    async def aclose(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        await self.cache.aclose()

    async def refresh(
        self,
        announced: Mapping[uuid.UUID, tuple[uuid.UUID, str]],
        *,
        force_drain: bool = False,
    ) -> None:
        """Write the committed documents of `announced` (workspace id → tenant, permit id
        as the transaction knew them) and of up to DRAIN_BATCH owed workspaces.

        A workspace that is gone, or whose permit id changed, has its old key deleted.
        Never raises: what could not be read or written is owed, and written again later.
        """
        cache = self.cache
        if force_drain or not cache.paused:
            owed = dict(itertools.islice(cache.pending.items(), DRAIN_BATCH))
            announced = {**owed, **announced}
        ids = list(announced)
        if not ids:
            if cache.pending:
                # Paused: the owed writes wait for the next try.
                self._retry_later()
            return
        if cache.paused:
            cache.owe(announced)
            CACHE_WRITES.labels("failed").inc(len(ids))
            self._retry_later()
            return
        try:
            async with self.database.transaction(write=False) as session:
                rows = await StatusRows(session).by_ids(ids)
        except Exception as exc:
            # The database may be down as well: owe the writes, as for Redis.
            log.warning("status cache: %d workspaces' rows could not be read: %r", len(ids), exc)
            cache.owe(announced)
            self._retry_later()
            return
        documents: list[PermitDocuments] = []
        stale_keys: list[tuple[uuid.UUID, str]] = []
        seen: set[uuid.UUID] = set()
        for row in rows:
            seen.add(row.id)
            before = announced.get(row.id)
            if before is not None and before != (row.tenant_id, row.external_ref):
                stale_keys.append(before)
            if row.external_ref is None:
                continue
            try:
                documents.append(documents_of(row))
            except ValueError:
                log.exception("status cache: workspace %s has values no document holds", row.id)
                stale_keys.append((row.tenant_id, row.external_ref))
        stale_keys += [announced[i] for i in announced if i not in seen]
        try:
            if stale_keys:
                await cache.drop(stale_keys)
                CACHE_WRITES.labels("deleted").inc(len(stale_keys))
            flags = await cache.put(documents)
        except CacheUnavailable as exc:
            log.warning("status cache: %d documents not written: %s", len(ids), exc)
            CACHE_WRITES.labels("failed").inc(len(ids))
            cache.owe(announced)
            self._retry_later()
            return
        for workspace_id in ids:
            cache.pending.pop(workspace_id, None)
        if cache.pending:
            self._retry_later()
        written = sum(flags)
        if written:
            CACHE_WRITES.labels("written").inc(written)
        if len(flags) - written:
            CACHE_WRITES.labels("stale").inc(len(flags) - written)

    async def read(self, tenant_id: uuid.UUID, permit_id: str, which: Document) -> bytes | None:
        """The document from Redis, or None when the database must answer (miss or fallback).

        Owed writes are written first; while any remains, Redis is not trusted.
        """
        cache = self.cache
        if cache.pending and not cache.paused:
            await self.refresh({})
        if not cache.trusted:
            CACHE_READS.labels("fallback").inc()
            return None
        try:
            found = await cache.read(tenant_id, permit_id, which)
        except CacheUnavailable:
            CACHE_READS.labels("fallback").inc()
            return None
        CACHE_READS.labels("hit" if found is not None else "miss").inc()
        return found

    async def fill(self, documents: PermitDocuments) -> None:
        """Write what the database answered after a miss (compare-and-set, like any write)."""
        if not self.cache.trusted:
            return
        try:
            flags = await self.cache.put([documents])
        except CacheUnavailable:
            return
        CACHE_WRITES.labels("written" if flags[0] else "stale").inc()


_keepers: dict[Database, StatusKeeper] = {}


def attach_status_cache(database: Database, cache: StatusCache) -> StatusKeeper:
    """Make `cache` the status cache of every unit of work of `database`."""
    keeper = StatusKeeper(database=database, cache=cache)
    _keepers[database] = keeper
    return keeper


def install_status_cache(database: Database, settings: Settings) -> StatusKeeper | None:
    """Attach a cache built from `settings` when REDIS_URL is set and none is attached."""
    if database in _keepers:
        return _keepers[database]
    if not settings.redis_url:
        return None
    return attach_status_cache(database, StatusCache.from_settings(settings))


def status_cache_of(database: Database) -> StatusKeeper | None:
    return _keepers.get(database)


async def detach_status_cache(database: Database) -> None:
    """Forget and close the cache of `database` (at shutdown)."""
    keeper = _keepers.pop(database, None)
    if keeper is not None:
        await keeper.aclose()


def refresh_on_commit(
    session: AsyncSession,
    *,
    workspace_id: uuid.UUID,
    tenant_id: uuid.UUID,
    external_ref: str | None,
) -> None:
    """Write the workspace's documents to Redis once `session`'s unit of work commits.

    Call it wherever a permit workspace's state, error, connection or `updated_at` may
    change. Workspaces without a permit id, and databases without a cache, cost nothing.
    All the workspaces of one transaction are written in one database read and one Redis
    round trip.
    """
    if external_ref is None:
        return
    uow = unit_of(session)
    keeper = status_cache_of(uow.database)
    if keeper is None:
        return
    announced: dict[uuid.UUID, tuple[uuid.UUID, str]] = session.info.setdefault(_SESSION_KEY, {})
    announced[workspace_id] = (tenant_id, external_ref)

    async def write_through() -> None:
        await keeper.refresh(dict(announced))
        announced.clear()

    uow.on_commit(write_through, key=_SESSION_KEY)


@event.listens_for(Session, "after_flush")
def _flushed_workspaces(session: Session, _context: object) -> None:
    """Every ORM flush that changes, adds or deletes a permit workspace refreshes it after
    the commit: a writer that forgets `refresh_on_commit` (a column set outside a
    transition, which still moves `updated_at`) cannot leave Redis behind. Core updates
    (`JobRows.save`) call it themselves.
    """
    # Before the flush is final, new, dirty and deleted still list what it wrote.
    for obj in (*session.new, *session.dirty, *session.deleted):
        if not isinstance(obj, Workspace):
            continue
        values = sa_inspect(obj).dict
        # Only loaded values: a lazy load cannot run here.
        if values.get("external_ref") is None or "id" not in values or "tenant_id" not in values:
            continue
        try:
            refresh_on_commit(
                cast(AsyncSession, session),
                workspace_id=values["id"],
                tenant_id=values["tenant_id"],
                external_ref=values["external_ref"],
            )
        except NoUnitOfWork:
            return


@dataclass
class RebuildReport:
    written: int = 0
    stale: int = 0
    deleted: int = 0
    failed: int = 0


async def rebuild(
    keeper: StatusKeeper,
    *,
    batch_size: int = 500,
    delete_orphans: bool = True,
    force: bool = False,
) -> RebuildReport:
    """Rewrite every permit workspace's documents from the database, batch after batch in
    (tenant, permit id) order, then (with `delete_orphans`) delete the keys of this prefix
    that no workspace has any more.

    Compare-and-set leaves a document whose stored version is newer than the database's
    (the database was restored from a backup, say); `force` deletes each batch's keys
    first, so the database's documents replace them. A write that commits meanwhile still
    wins over the batch it races with, or is repaired by the next sweep.
    A batch that Redis refuses is counted as failed and the rebuild goes on.
    """
    report = RebuildReport()
    after: tuple[uuid.UUID, str] | None = None
    while True:
        async with keeper.database.transaction(write=False) as session:
            rows = await StatusRows(session).batch(after=after, limit=batch_size)
        if not rows:
            break
        last = rows[-1]
        after = (last.tenant_id, str(last.external_ref))
        documents = _documents(rows, report)
        try:
            if force:
                await _drop_now(keeper.cache, [(d.tenant_id, d.permit_id) for d in documents])
            flags = await _put_now(keeper.cache, documents)
        except CacheUnavailable as exc:
            log.warning("cache rebuild: %d documents not written: %s", len(documents), exc)
            report.failed += len(documents)
            continue
        report.written += sum(flags)
        report.stale += len(flags) - sum(flags)
    if delete_orphans:
        report.deleted = await _delete_orphans(keeper, batch_size)
    keeper.cache.pending.clear()
    return report


def _documents(rows: Sequence[PermitRow], report: RebuildReport) -> list[PermitDocuments]:
    documents = []
    for row in rows:
        try:
            documents.append(documents_of(row))
        except ValueError:
            log.exception("status cache: workspace %s has values no document holds", row.id)
            SWEEP_ROW_ERRORS.labels(task=TASK).inc()
            report.failed += 1
    return documents


async def _put_now(cache: StatusCache, documents: Sequence[PermitDocuments]) -> list[bool]:
    """`put`, trying Redis even during a retry pause (an operator asked for it)."""
    cache._paused_until = 0.0
    return await cache.put(documents)


async def _drop_now(cache: StatusCache, keys: Sequence[tuple[uuid.UUID, str]]) -> None:
    cache._paused_until = 0.0
    await cache.drop(keys)


async def _delete_orphans(keeper: StatusKeeper, batch_size: int) -> int:
    deleted = 0
    cursor = 0
    while True:
        cursor, pairs = await keeper.cache.scan(cursor, batch_size)
        if pairs:
            async with keeper.database.transaction(write=False) as session:
                alive = await StatusRows(session).existing(pairs)
            orphans = [p for p in pairs if p not in alive]
            await keeper.cache.drop(orphans)
            deleted += len(orphans)
        if cursor == 0:
            return deleted


@dataclass
class RepairSweep:
    """The scheduler's drift repair: each tick rewrites the next `batch_size` permit
    workspaces' documents (compare-and-set), starting over after the last one, and the
    writes this process owes; and takes one SCAN step over the prefix's keys, deleting
    those no workspace has any more (a deleted tenant's). A row that no document holds is
    logged, counted and skipped.
    """

    batch_size: int
    name: str = TASK
    # Keys SCAN looks at per tick (of every prefix: the keyspace may be shared).
    scan_count: int = 1000
    _after: tuple[uuid.UUID, str] | None = None
    _scan_cursor: int = 0

    async def __call__(self, session: AsyncSession, _now: datetime) -> int:
        keeper = status_cache_of(unit_of(session).database)
        if keeper is None:
            return 0
        rows = await StatusRows(session).batch(after=self._after, limit=self.batch_size)
        # A short batch reached the end: the next tick starts from the first permit again.
        last = rows[-1] if len(rows) == self.batch_size else None
        self._after = (last.tenant_id, str(last.external_ref)) if last is not None else None
        documents = _documents(rows, RebuildReport())
        try:
            flags = await _put_now(keeper.cache, documents)
        except CacheUnavailable as exc:
            log.warning("%s: %d documents not written: %s", self.name, len(documents), exc)
            return 0
        if keeper.cache.pending:
            await keeper.refresh({}, force_drain=True)
        try:
            self._scan_cursor, pairs = await keeper.cache.scan(self._scan_cursor, self.scan_count)
            if pairs:
                alive = await StatusRows(session).existing(pairs)
                await keeper.cache.drop([p for p in pairs if p not in alive])
        except CacheUnavailable as exc:
            log.warning("%s: orphan keys not scanned: %s", self.name, exc)
        return sum(flags)


def status_cache_task(settings: Settings) -> list[PeriodicTask]:
    """The drift repair sweep, when REDIS_URL is set."""
    if not settings.redis_url:
        return []
    sweep = RepairSweep(batch_size=settings.status_cache_sweep_batch)
    interval = timedelta(seconds=settings.status_cache_sweep_seconds)
    return [PeriodicTask(sweep.name, interval, sweep)]
