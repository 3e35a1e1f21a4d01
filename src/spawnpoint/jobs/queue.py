"""The durable job queue: rows in `jobs`, claimed under expiring, fenced leases.

A job is written in the caller's transaction (`enqueue`), so it exists exactly when the
state change it carries out was committed. Workers `claim` due jobs: the claim bumps the
job's fencing token, and every later write about that attempt (`heartbeat`, `complete`,
`fail`, `mark_cancelled`, `release`) names the token and the `running` state in its WHERE
clause. Once a lease expires and `rescue_expired` (or a new claim) bumps the token, the old
holder's writes match no row: a stale worker can never overwrite the newer attempt.

Times come from the caller (`now`, default the wall clock) rather than the database, so
tests can drive expiry; leases are long compared with the clock skew of NTP-synced hosts.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import secrets
import socket
import uuid
from collections import namedtuple
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import orjson
from sqlalchemy import (
    ColumnElement,
    Integer,
    Select,
    Table,
    Text,
    bindparam,
    case,
    func,
    insert,
    literal,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import SessionTransaction

from spawnpoint import sqlite_fast, tracing
from spawnpoint.db import DriverStatement
from spawnpoint.jobs.errors import StaleLease
from spawnpoint.kit.auditing import system_action
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.inserts import NewRow, Step, insert_together, with_defaults
from spawnpoint.models.jobs import Job, JobLog, JobState, JobStateEntry
from spawnpoint.uow import unit_of

log = logging.getLogger("spawnpoint.jobs")

CHANNEL = "spawnpoint_jobs"
"""PostgreSQL LISTEN/NOTIFY channel that wakes workers when jobs are committed."""

_ANNOUNCED = "spawnpoint.jobs.announced"
_WAKE = "spawnpoint.jobs.wake"
_jitter = random.SystemRandom()
# A job whose token reached the column's limit can be claimed no more: the next claim's
# `fencing_token + 1` would overflow (PostgreSQL refuses it) and fail the whole batch.
MAX_FENCING_TOKEN = 2**63 - 1


def new_owner_id() -> str:
    """A lease owner id unique to this process run: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: a delay drawn from [0, min(cap, base * 2^(n-1))]."""

    base_seconds: float = 1.0
    cap_seconds: float = 300.0

    def delay(self, attempt: int) -> timedelta:
        """The wait before retrying after failed attempt number `attempt` (1-based)."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2.0 ** min(attempt - 1, 60))
        return timedelta(seconds=_jitter.uniform(0, ceiling))


@dataclass(frozen=True)
class ClaimedJob:
    """A snapshot of one job as a claim returned it; `fencing_token` names this attempt."""

    id: uuid.UUID
    type: str
    payload: dict[str, Any]
    tenant_id: uuid.UUID | None
    project_id: uuid.UUID | None
    actor_id: uuid.UUID | None
    attempt: int
    max_attempts: int
    fencing_token: int
    lease_expires_at: datetime
    cancel_requested: bool
    # Why the stored payload is unusable (not JSON, not an object); the worker fails the job.
    payload_error: str | None = None


@dataclass(frozen=True)
class Completion:
    """A successful attempt to record: the job, the attempt's fencing token and the result."""

    job_id: uuid.UUID
    fencing_token: int
    result: dict[str, Any] | None = None


@dataclass(frozen=True)
class LogLine:
    job_id: uuid.UUID
    at: datetime
    line: str


# Core tables for the executemany statements, which the ORM's bulk modes cannot fence.
_jobs = cast(Table, Job.__table__)
_job_logs = cast(Table, JobLog.__table__)
_entries = cast(Table, JobStateEntry.__table__)

_CLAIMED_COLUMNS = (
    Job.id,
    Job.type,
    # As text, decoded job by job in `_claimed`: one payload that cannot be decoded must
    # fail its own job, not the claim of every job in the batch.
    Job.payload.cast(Text).label("payload"),
    Job.tenant_id,
    Job.project_id,
    Job.actor_id,
    Job.attempts,
    Job.max_attempts,
    Job.fencing_token,
    Job.lease_expires_at,
    Job.cancel_requested,
)


def _state_is(state: JobState) -> ColumnElement[bool]:
    # A literal, not a bound parameter, as the predicates of the partial indexes are spelled
    # (see spawnpoint.models.jobs).
    return Job.state == literal_column(f"'{state.value}'")


def _entry_is(state: JobState) -> ColumnElement[bool]:
    # A literal for the partial index `ix_job_states_claim`, as in `_state_is`.
    return JobStateEntry.state == literal_column(f"'{state.value}'")


def state_entry(job: dict[str, Any]) -> dict[str, Any]:
    """The `job_states` row of a new job, from its complete column values (`queued_job`)."""
    return {
        "job_id": job["id"],
        "tenant_id": job["tenant_id"],
        "type": job["type"],
        "state": job["state"],
        "run_after": job["run_after"],
    }


async def _resync_entries(session: AsyncSession, job_ids: Collection[uuid.UUID]) -> None:
    """Copy state and `run_after` of the jobs `job_ids` to their `job_states` rows, in the
    caller's transaction: after a write of those jobs that changed either (the rare paths:
    failures, cancellations, releases, rescues). Claims and completions keep the rows in step
    in their own statements."""
    if not job_ids:
        return
    statement = (
        update(JobStateEntry)
        .where(
            JobStateEntry.job_id == Job.id,
            JobStateEntry.job_id.in_(sorted(job_ids)),
            Job.id.in_(sorted(job_ids)),  # both looked up by primary key, never scanned
        )
        .values(state=Job.state, run_after=Job.run_after)
        .execution_options(synchronize_session=False)
    )
    await session.execute(statement)


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


def _storable(text: str) -> str:
    # PostgreSQL text cannot hold NUL; one such character in an exception message or log
    # line would otherwise fail the worker's whole batch write, again and again.
    return text.replace("\x00", "\ufffd")


def _wake_workers_on_commit(session: AsyncSession) -> None:
    """Have the in-process workers woken once the caller's transaction commits."""
    uow = unit_of(session)
    uow.on_commit(uow.database.wakeups.fire, key=_WAKE)


async def _announce(session: AsyncSession) -> None:
    """Arrange for workers to be woken when the caller's transaction commits.

    NOTIFY is transactional on PostgreSQL: it is delivered on commit and dropped on rollback.
    One per transaction is enough, except inside a savepoint, which may still roll back.
    In-process workers are woken by the unit of work's after-commit callback.
    """
    root: SessionTransaction | None = session.sync_session.get_transaction()
    nested = session.in_nested_transaction()
    if not nested and root is not None and session.info.get(_ANNOUNCED) is root:
        return
    if _dialect(session) == "postgresql":
        await session.execute(select(func.pg_notify(CHANNEL, "")))
    if not nested:
        session.info[_ANNOUNCED] = root
    _wake_workers_on_commit(session)


async def announce_on_commit(session: AsyncSession) -> None:
    """Wake workers when the caller's transaction commits, for jobs enqueued in savepoints.

    A NOTIFY sent inside a savepoint is dropped if the savepoint rolls back; a caller that
    enqueued in savepoints calls this once outside them.
    """
    await _announce(session)


async def find_by_idempotency_key(
    session: AsyncSession, *, tenant_id: uuid.UUID | None, idempotency_key: str
) -> Job | None:
    """The job enqueued earlier for this tenant (or the platform) under `idempotency_key`."""
    owner = Job.tenant_id.is_(None) if tenant_id is None else Job.tenant_id == tenant_id
    statement = select(Job).where(owner, Job.idempotency_key == idempotency_key)
    found: Job | None = (await session.execute(statement)).scalar_one_or_none()
    return found


@tracing.traced("job.enqueue", tracing.enqueue_attributes)
async def enqueue(
    session: AsyncSession,
    *,
    job_type: str,
    payload: dict[str, Any],
    tenant_id: uuid.UUID | None,
    actor_id: uuid.UUID | None = None,
    project_id: uuid.UUID | None = None,
    max_attempts: int = 5,
    idempotency_key: str | None = None,
    run_after: datetime | None = None,
) -> Job:
    """Add a queued job in the caller's transaction; never commits.

    On PostgreSQL a `pg_notify` on `CHANNEL` is issued in the same transaction, so workers
    are woken exactly when (and only if) the job becomes visible.

    Args:
        session: The caller's session; the job commits or rolls back with its transaction.
        job_type: A type some worker's registry handles (workers claim only known types).
        payload: JSON-serialisable arguments for the handler.
        tenant_id: The owning tenant, or None for platform jobs.
        actor_id: Who asked for the work (user, agent or None for the system).
        project_id: The project the work belongs to, if any.
        max_attempts: Attempts before the job fails for good (at least 1).
        idempotency_key: With the same tenant, a second enqueue returns the first job
            (whatever its payload) instead of adding another.
        run_after: Do not start before this time; default now.

    Returns:
        The new job, flushed (its id is set), or the earlier job with the same key.

    Raises:
        ValueError: `max_attempts` is below 1.
    """
    values = queued_job(
        job_type=job_type,
        payload=payload,
        tenant_id=tenant_id,
        actor_id=actor_id,
        project_id=project_id,
        max_attempts=max_attempts,
    )
    if idempotency_key is not None:
        existing = await find_by_idempotency_key(
            session, tenant_id=tenant_id, idempotency_key=idempotency_key
        )
        if existing is not None:
            return existing
    job = Job(**values, idempotency_key=idempotency_key)
    if run_after is not None:
        job.run_after = run_after
    if idempotency_key is None:
        session.add(job)
        await session.flush()
    else:
        # A concurrent transaction may insert the same key first; the savepoint keeps the
        # caller's transaction usable so the winner's job can be returned instead.
        try:
            async with session.begin_nested():
                session.add(job)
        except IntegrityError:
            existing = await find_by_idempotency_key(
                session, tenant_id=tenant_id, idempotency_key=idempotency_key
            )
            if existing is None:
                raise
            return existing
    await _announce(session)
    return job


def queued_job(
    *,
    job_type: str,
    payload: dict[str, Any],
    tenant_id: uuid.UUID | None,
    actor_id: uuid.UUID | None = None,
    project_id: uuid.UUID | None = None,
    max_attempts: int = 5,
) -> dict[str, Any]:
    """The complete column values of a new queued job, for `enqueue_with`."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    return with_defaults(
        Job,
        {
            "type": job_type,
            "payload": payload,
            "tenant_id": tenant_id,
            "actor_id": actor_id,
            "project_id": project_id,
            "max_attempts": max_attempts,
        },
    )


@tracing.traced("job.enqueue", tracing.enqueue_attributes)
async def enqueue_with(
    session: AsyncSession,
    rows: Sequence[NewRow],
    job: dict[str, Any],
    *,
    final: bool = False,
    before: Sequence[Step] = (),
) -> None:
    """Insert `rows` and then the job `job` (from `queued_job`) in one round trip.

    The job's NOTIFY goes out in the same statement on PostgreSQL; in-process workers are
    woken after the commit, as with `enqueue`. `final` and `before` as in `insert_together`.
    """
    _wake_workers_on_commit(session)
    entry = (JobStateEntry, state_entry(job))
    await insert_together(
        session, [*rows, (Job, job), entry], notify=CHANNEL, final=final, before=before
    )


def _payload(text: str | None) -> tuple[dict[str, Any], str | None]:
    """A claimed job's payload and, when it is unusable, why."""
    try:
        payload = orjson.loads(text or "null")
    except orjson.JSONDecodeError as exc:
        return {}, f"the stored payload is not valid JSON: {exc}"
    if not isinstance(payload, dict):
        return {}, f"the stored payload is a JSON {type(payload).__name__}, not an object"
    return payload, None


def _claimed(row: Any) -> ClaimedJob:
    payload, payload_error = _payload(row.payload)
    return ClaimedJob(
        id=row.id,
        type=row.type,
        payload=payload,
        payload_error=payload_error,
        tenant_id=row.tenant_id,
        project_id=row.project_id,
        actor_id=row.actor_id,
        attempt=row.attempts,
        max_attempts=row.max_attempts,
        fencing_token=row.fencing_token,
        lease_expires_at=row.lease_expires_at,
        cancel_requested=row.cancel_requested,
    )


async def claim(
    session: AsyncSession,
    *,
    owner: str,
    limit: int,
    lease: timedelta,
    job_types: Collection[str] | None = None,
    now: datetime | None = None,
) -> list[ClaimedJob]:
    """Take up to `limit` due queued jobs, oldest `run_after` first, and lease them to `owner`.

    The candidates are picked from the jobs' entries (`job_states`); on PostgreSQL one
    statement locks them with FOR UPDATE SKIP LOCKED, so concurrent claimers split the queue
    without waiting on each other, leases the jobs and marks the entries running (see
    `_claim_postgres`). SQLite has no row locks; call this inside a write (BEGIN
    IMMEDIATE) transaction, which serialises claimers instead.

    Each claimed job gets state running, `attempts + 1`, `fencing_token + 1`,
    `lease_expires_at = now + lease` and `started_at = now` (the start of this attempt).

    Args:
        owner: The worker's unique id; heartbeats must name it.
        limit: The most jobs to claim (the worker's free slots).
        lease: How long the lease lasts without a heartbeat.
        job_types: Claim only these types (the ones this worker can run); None for any.
            Jobs of other types stay queued for a worker that knows them.
        now: The current time; default the wall clock.

    Returns:
        The claimed jobs, possibly none.
    """
    if limit < 1 or (job_types is not None and not job_types):
        return []
    now = now or utcnow()
    values = _claim_values(owner, limit, lease, now)
    uow = unit_of(session)
    if uow.is_postgres:
        # BEGIN, the claim and COMMIT in one round trip, as cheap as autocommit.
        types = None if job_types is None else tuple(sorted(job_types))
        dialect = session.get_bind().dialect
        steps = _by_index(dialect, [(_claim_statement(dialect, types), values)])
        _, cursor, _ = await uow.pipelined(steps, final=True)
        return _sorted_claims([_ClaimedRow(*row) for row in await cursor.fetchall()])
    return _sorted_claims(await _claim_rows(session, values, job_types))


def _claim_values(owner: str, limit: int, lease: timedelta, now: datetime) -> dict[str, Any]:
    return {
        "claim_owner": owner,
        "claim_now": now,
        "claim_until": now + lease,
        "claim_limit": limit,
    }


async def _claim_rows(
    session: AsyncSession, values: dict[str, Any], job_types: Collection[str] | None
) -> list[Any]:
    """The claim on SQLite, in the caller's transaction (whose BEGIN IMMEDIATE serialises
    claimers): one compiled UPDATE leases the due jobs its subquery picks from `job_states`,
    then one executemany marks their entries running, both on the connection itself
    (`spawnpoint.sqlite_fast`)."""
    types = None if job_types is None else tuple(sorted(job_types))
    fast = _fast_claim(types)
    (leased,) = await sqlite_fast.run(session, [(fast, values)])
    if not leased.rows:
        return []
    rows: list[Any] = [_ClaimedRow(*row) for row in leased.rows]
    await sqlite_fast.run_many(
        session, _fast_entry_marked(JobState.running), [{"e_id": row.id} for row in rows]
    )
    return rows


@functools.lru_cache(maxsize=16)
def _fast_claim(job_types: tuple[str, ...] | None) -> sqlite_fast.FastStatement:
    """SQLite's claim: the lease of the jobs `_due` picks (its ids, a subquery SQLite runs
    once), returning what `_claimed` reads."""
    due = _due(job_types, postgres=False)
    return sqlite_fast.FastStatement(_lease(Job.id.in_(due), returning=_CLAIMED_COLUMNS))


@functools.cache
def _fast_entry_marked(state: JobState) -> sqlite_fast.FastStatement:
    """One job's entry marked `state` (SQLite; an executemany over claimed or settled jobs)."""
    return sqlite_fast.FastStatement(
        update(_entries)
        .where(_entries.c.job_id == bindparam("e_id", type_=_entries.c.job_id.type))
        .values(state=literal_column(f"'{state.value}'"))
    )


def _sorted_claims(rows: Sequence[Any]) -> list[ClaimedJob]:
    # By the ids' integers: UUID's own comparisons are Python code, n log n of them.
    return sorted((_claimed(row) for row in rows), key=lambda job: job.id.int)


def _rejected(completions: Sequence[Completion], settled: Sequence[Any]) -> list[Completion]:
    """The completions whose (id, token) is not among the rows `settled` returned."""
    if len(settled) == len(completions):
        return []  # a batch names each job once, and each settled row is one of them
    done = {(row[0], row[1]) for row in settled}
    return [c for c in completions if (c.job_id, c.fencing_token) not in done]


_ClaimedRow = namedtuple("_ClaimedRow", [column.key for column in _CLAIMED_COLUMNS])  # type: ignore[misc]


def _bind(name: str, column: Any) -> Any:
    return bindparam(name, type_=column.type, required=False)


def _due(job_types: tuple[str, ...] | None, *, postgres: bool) -> Select[uuid.UUID]:
    """The ids of up to `claim_limit` due queued jobs, oldest `run_after` first, read from
    `job_states` in the order of `ix_job_states_claim`."""
    due = (
        select(JobStateEntry.job_id)
        .where(
            _entry_is(JobState.queued),
            JobStateEntry.run_after <= _bind("claim_now", _entries.c.run_after),
        )
        .order_by(JobStateEntry.run_after, JobStateEntry.job_id)
        .limit(bindparam("claim_limit", type_=Integer, required=False))
    )
    if job_types is not None:
        due = due.where(JobStateEntry.type.in_(job_types))
    if postgres:
        # The entries are locked, not the jobs: concurrent claimers skip each other's.
        due = due.with_for_update(of=JobStateEntry, skip_locked=True)
    return due


def _lease(picked: ColumnElement[bool], *, returning: Sequence[Any]) -> Any:
    """The UPDATE that leases the queued jobs `picked` picks, RETURNING `returning`.

    A token at its limit is passed over (`fencing_token + 1` would overflow and fail the
    batch). No write leaves a job queued with such a token (`fail`, `release` and
    `rescue_expired` fail it instead), so only a row written by hand can be passed over.
    """
    return (
        update(Job)
        .where(picked, _state_is(JobState.queued), Job.fencing_token < MAX_FENCING_TOKEN)
        .values(
            state=JobState.running,
            lease_owner=_bind("claim_owner", _jobs.c.lease_owner),
            lease_expires_at=_bind("claim_until", _jobs.c.lease_expires_at),
            attempts=Job.attempts + 1,
            fencing_token=Job.fencing_token + 1,
            started_at=_bind("claim_now", _jobs.c.started_at),
            updated_at=_bind("claim_now", _jobs.c.updated_at),
        )
        .returning(*returning)
        .execution_options(synchronize_session=False)
    )


def _claim_postgres(job_types: tuple[str, ...] | None) -> Any:
    """The claim on PostgreSQL (see `claim`): one statement, its values bound by name.

    A materialised CTE picks and locks the candidates' entries (FOR UPDATE SKIP LOCKED):
    it must be a CTE, evaluated once, because a `WHERE id IN (subquery)` may be re-run by
    the planner, each run locking further rows and overshooting `limit`. The jobs are then
    looked up by primary key as an array (a join may be planned as a hash join against a
    scan), leased, and their entries marked running in the same statement. Neither update
    changes an indexed column of `jobs`, so the jobs' new versions are heap-only.
    """
    due = _due(job_types, postgres=True).cte("due").prefix_with("MATERIALIZED")
    claimed = (
        _lease(
            Job.id == func.any(literal_column("ARRAY(SELECT due.job_id FROM due)")),
            returning=_CLAIMED_COLUMNS,
        )
        .add_cte(due)
        .cte("claimed")
    )
    entered = (
        update(JobStateEntry)
        .where(
            JobStateEntry.job_id
            == func.any(literal_column("ARRAY(SELECT claimed.id FROM claimed)"))
        )
        .values(state=JobState.running)
        .cte("entered")
    )
    return select(*claimed.c).add_cte(due, claimed, entered)


@functools.lru_cache(maxsize=16)
def _claim_statement(dialect: Dialect, job_types: tuple[str, ...] | None) -> DriverStatement:
    return DriverStatement(_claim_postgres(job_types), dialect)


def _planner_settings(enabled: str) -> Select[Any]:
    names = ("seqscan", "bitmapscan", "sort")
    return select(*(func.set_config(f"enable_{name}", enabled, True) for name in names))


@functools.lru_cache(maxsize=8)
def _planner(dialect: Dialect, enabled: str) -> DriverStatement:
    return DriverStatement(_planner_settings(enabled), dialect)


Steps = list[tuple[DriverStatement, dict[str, Any]]]


def _by_index(dialect: Dialect, steps: Steps) -> Steps:
    """`steps` planned for index scans in order, whatever the statistics say: sequential
    scans, bitmap scans and sorts off before them, on again after (`set_config(..., true)`
    lasts until the next setting or the transaction's end).

    The claim must read `ix_job_states_claim` in order and stop after `limit` rows, and the
    claim and the completions must look their jobs and entries up by primary key. A queue's
    tables change faster than the planner's picture of them: psycopg prepares a statement
    on its fifth run, and PostgreSQL keeps the generic plan it makes then, maybe while the
    tables held a few rows (a worker that started on an empty queue), when scanning every
    job and sorting every due one looks cheapest; right after a burst of enqueues, or on a
    server that has never analysed the tables, it expects a handful of rows. Either way the
    plan's cost then grows with the tables at every batch (23 ms per claim of 100 jobs from
    10,000 queued, 0.1 ms by index).
    """
    return [
        (_planner(dialect, "off"), {}),
        *steps,
        (_planner(dialect, "on"), {}),
    ]


async def heartbeat_many(
    session: AsyncSession,
    *,
    owner: str,
    leases: Collection[tuple[uuid.UUID, int]],
    lease: timedelta,
    now: datetime | None = None,
) -> dict[tuple[uuid.UUID, int], bool]:
    """Extend every lease in `leases` (job id, fencing token) that `owner` still holds.

    Returns:
        For each lease still held: whether cancellation was requested. A lease missing from
        the result was lost (rescued, re-claimed or settled): stop working on that attempt.
    """
    if not leases:
        return {}
    now = now or utcnow()
    statement = (
        update(Job)
        .where(
            Job.id.in_(sorted({job_id for job_id, _ in leases})),
            Job.lease_owner == owner,
            _state_is(JobState.running),
        )
        .values(lease_expires_at=now + lease, updated_at=now)
        .returning(Job.id, Job.fencing_token, Job.cancel_requested)
        .execution_options(synchronize_session=False)
    )
    rows = (await session.execute(statement)).all()
    wanted = set(leases)
    # A row holding a newer token than asked for is a later claim of the same job; only
    # exact (id, token) matches are still held.
    return {
        (row.id, row.fencing_token): row.cancel_requested
        for row in rows
        if (row.id, row.fencing_token) in wanted
    }


async def heartbeat(
    session: AsyncSession,
    *,
    job_id: uuid.UUID,
    owner: str,
    fencing_token: int,
    lease: timedelta,
    now: datetime | None = None,
) -> bool:
    """Extend one lease if (job, owner, fencing token) still match.

    Returns:
        True while the lease is held; False when it was lost and the caller must stop.
    """
    held = await heartbeat_many(
        session, owner=owner, leases=[(job_id, fencing_token)], lease=lease, now=now
    )
    return (job_id, fencing_token) in held


def _settled(now: datetime) -> dict[str, Any]:
    return {"lease_owner": None, "lease_expires_at": None, "updated_at": now}


def _fenced(
    job_id: uuid.UUID | ColumnElement[uuid.UUID], fencing_token: int | ColumnElement[int]
) -> tuple[ColumnElement[bool], ...]:
    return (Job.id == job_id, Job.fencing_token == fencing_token, _state_is(JobState.running))


def lease_statement(
    job_id: uuid.UUID | ColumnElement[uuid.UUID], fencing_token: int | ColumnElement[int]
) -> Select[uuid.UUID]:
    """The job's id, its row locked, if this attempt still holds the lease; else no row."""
    return select(Job.id).where(*_fenced(job_id, fencing_token)).with_for_update()


async def hold_lease(session: AsyncSession, *, job_id: uuid.UUID, fencing_token: int) -> None:
    """Lock the job row if this attempt still holds its lease, for the rest of the transaction.

    Handlers call it in the transaction that records their outcome, so work done under an
    expired lease is never written over the attempt that took the job over.

    Raises:
        StaleLease: the lease expired and the job was rescued (and maybe claimed again).
    """
    held = await session.scalar(lease_statement(job_id, fencing_token))
    if held is None:
        raise StaleLease(job_id, fencing_token)


async def held_result(
    session: AsyncSession, *, job_id: uuid.UUID, fencing_token: int
) -> dict[str, Any] | None:
    """`hold_lease`, returning what an earlier attempt of the job kept (`keep_result`).

    Lets a handler that creates something outside the job row (an artifact) find what an
    attempt that died before its outcome was recorded already created, instead of creating
    it twice.

    Raises:
        StaleLease: the lease expired and the job was rescued (and maybe claimed again).
    """
    statement = select(Job.result).where(*_fenced(job_id, fencing_token)).with_for_update()
    found = (await session.execute(statement)).one_or_none()
    if found is None:
        raise StaleLease(job_id, fencing_token)
    kept: dict[str, Any] | None = found.result if isinstance(found.result, dict) else None
    return kept


async def keep_result(
    session: AsyncSession, *, job_id: uuid.UUID, fencing_token: int, result: dict[str, Any]
) -> None:
    """Store `result` on the running job now, in the caller's transaction (see
    `held_result`); the attempt's outcome replaces it when the job succeeds.

    Raises:
        StaleLease: The lease was lost; nothing was written.
    """
    await _write_fenced(session, job_id, fencing_token, result=result)


async def complete_many(
    session: AsyncSession, *, completions: Sequence[Completion], now: datetime | None = None
) -> list[Completion]:
    """Mark attempts succeeded in one statement, each row fenced by its own token.

    PostgreSQL: one UPDATE ... FROM unnest(ids, tokens, results) RETURNING the rows it
    settled, sent with the transaction's BEGIN in one round trip; SQLite (in process, no
    round trips): one executemany of the fenced UPDATE. Either way a row whose lease was lost
    (rescued, re-claimed: another token, or no longer running) is left alone, and only that
    completion is rejected.

    Returns:
        The completions that were rejected because their lease is no longer held.
    """
    if not completions:
        return []
    now = now or utcnow()
    if unit_of(session).is_postgres:
        return await _complete_many_postgres(session, completions, now)
    params = [
        {"b_id": c.job_id, "b_token": c.fencing_token, "b_result": c.result, "b_now": now}
        for c in completions
    ]
    matched = await sqlite_fast.run_many(session, _fast_complete(), params)
    if matched == len(completions):
        rejected = []
    elif len(completions) == 1:
        rejected = list(completions)
    else:
        # Rare: find which ones lost their lease. A row now carrying our token and
        # `succeeded` was written by this statement; anything else belongs to a newer attempt.
        rows = await session.execute(
            select(Job.id, Job.fencing_token, Job.state).where(
                Job.id.in_([c.job_id for c in completions])
            )
        )
        done = {
            (row.id, row.fencing_token) for row in rows if row.state == JobState.succeeded.value
        }
        rejected = [c for c in completions if (c.job_id, c.fencing_token) not in done]
    if not rejected:
        settled = [{"e_id": c.job_id} for c in completions]
    else:
        lost = {c.job_id for c in rejected}
        settled = [{"e_id": c.job_id} for c in completions if c.job_id not in lost]
    if settled:
        await sqlite_fast.run_many(session, _fast_entry_marked(JobState.succeeded), settled)
    return rejected


@functools.lru_cache(maxsize=1)
def _fast_complete() -> sqlite_fast.FastStatement:
    """One attempt marked succeeded, fenced by its token (SQLite; an executemany)."""
    return sqlite_fast.FastStatement(
        update(_jobs)
        .where(
            _jobs.c.id == _bind("b_id", _jobs.c.id),
            _jobs.c.fencing_token == _bind("b_token", _jobs.c.fencing_token),
            _state_is(JobState.running),
        )
        .values(
            state=literal_column(f"'{JobState.succeeded.value}'"),
            result=_bind("b_result", _jobs.c.result),
            error=None,
            finished_at=_bind("b_now", _jobs.c.finished_at),
            lease_owner=None,
            lease_expires_at=None,
            updated_at=_bind("b_now", _jobs.c.updated_at),
        )
    )


async def _complete_many_postgres(
    session: AsyncSession, completions: Sequence[Completion], now: datetime
) -> list[Completion]:
    dialect = session.get_bind().dialect
    steps = _by_index(dialect, [(_complete_statement(dialect), _complete_values(completions, now))])
    _, cursor, _ = await unit_of(session).pipelined(steps)
    return _rejected(completions, await cursor.fetchall())


def _complete_values(completions: Sequence[Completion], now: datetime) -> dict[str, Any]:
    return {
        "ids": [c.job_id for c in completions],
        "tokens": [c.fencing_token for c in completions],
        # Encoded as SQLAlchemy's JSON type would (None is JSON null), decoded by the cast.
        "results": ["null" if c.result is None else json.dumps(c.result) for c in completions],
        "now": now,
    }


@functools.lru_cache(maxsize=4)
def _complete_statement(dialect: Dialect) -> DriverStatement:
    # Arrays, not a VALUES list: one statement text (prepared once) for any batch size.
    # The jobs' rows first, then their entries (the lock order for running jobs); neither
    # update changes an indexed column of `jobs`, so its new versions are heap-only. The
    # jobs are looked up by primary key, the ids as an array the planner cannot see into
    # (`ARRAY(SELECT ...)`): joined to the arrays alone, or given the ids it can count, it
    # weighs a hundred index probes against one scan of a small table and scans every job
    # for each batch (no index names `state`), a cost that grows with the table.
    settled = text(
        "WITH settled AS (UPDATE jobs SET state = 'succeeded',"
        " result = CAST(v.result AS json), error = NULL, finished_at = :now,"
        " lease_owner = NULL, lease_expires_at = NULL, updated_at = :now"
        " FROM unnest(CAST(:ids AS uuid[]), CAST(:tokens AS bigint[]),"
        " CAST(:results AS text[])) AS v(id, token, result)"
        " WHERE jobs.id = any(ARRAY(SELECT unnest(CAST(:ids AS uuid[])))) AND jobs.id = v.id"
        " AND jobs.fencing_token = v.token AND jobs.state = 'running'"
        " RETURNING jobs.id, jobs.fencing_token),"
        " entered AS (UPDATE job_states SET state = 'succeeded'"
        " WHERE job_id = any(ARRAY(SELECT settled.id FROM settled)))"
        " SELECT settled.id, settled.fencing_token FROM settled"
    ).bindparams(bindparam("now", type_=_jobs.c.finished_at.type))
    return DriverStatement(settled, dialect)


async def complete_and_claim(
    session: AsyncSession,
    *,
    completions: Sequence[Completion],
    owner: str,
    limit: int,
    lease: timedelta,
    job_types: Collection[str] | None = None,
    now: datetime | None = None,
    final: bool = False,
) -> tuple[list[Completion], list[ClaimedJob]]:
    """`complete_many`, then `claim` up to `limit` more jobs, in the caller's transaction.

    A worker recording the outcomes of a batch takes the next batch in the same
    transaction: on PostgreSQL both statements go out with the BEGIN in one round trip, so
    a busy worker runs one transaction per batch, not two. The completions are fenced row
    by row exactly as in `complete_many`; the claimed jobs are leased as in `claim`, and
    exist only if the transaction commits (a failed commit leaves them queued, unclaimed).

    Args:
        limit: The most jobs to claim; 0 records the completions only.
        final: The caller writes nothing more in this transaction: on PostgreSQL the
            COMMIT (with the unit of work's outbox rows) goes out in the same round trip.

    Returns:
        The rejected completions (their lease is no longer held) and the claimed jobs.
    """
    now = now or utcnow()
    if job_types is not None and not job_types:
        limit = 0
    uow = unit_of(session)
    if not uow.is_postgres:
        rejected = await complete_many(session, completions=completions, now=now)
        if limit < 1:
            return rejected, []
        rows = await _claim_rows(session, _claim_values(owner, limit, lease, now), job_types)
        return rejected, _sorted_claims(rows)
    dialect = session.get_bind().dialect
    steps: Steps = []
    if completions:
        steps.append((_complete_statement(dialect), _complete_values(completions, now)))
    if limit > 0:
        types = None if job_types is None else tuple(sorted(job_types))
        steps.append((_claim_statement(dialect, types), _claim_values(owner, limit, lease, now)))
    if not steps:
        return [], []
    cursors = list(await uow.pipelined(_by_index(dialect, steps), final=final))[1:-1]
    rejected = []
    if completions:
        rejected = _rejected(completions, await cursors.pop(0).fetchall())
    claimed = []
    if limit > 0:
        claimed = _sorted_claims([_ClaimedRow(*row) for row in await cursors.pop(0).fetchall()])
    return rejected, claimed


async def complete(
    session: AsyncSession,
    *,
    job_id: uuid.UUID,
    fencing_token: int,
    result: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> None:
    """Mark the attempt holding `fencing_token` succeeded, keeping `result`.

    Raises:
        StaleLease: The lease was lost; nothing was written.
    """
    completion = Completion(job_id=job_id, fencing_token=fencing_token, result=result)
    if await complete_many(session, completions=[completion], now=now):
        raise StaleLease(job_id, fencing_token)


async def fail(
    session: AsyncSession,
    *,
    job_id: uuid.UUID,
    fencing_token: int,
    error: str,
    permanent: bool = False,
    backoff: Backoff | None = None,
    now: datetime | None = None,
) -> JobState:
    """Record a failed attempt: retry later, or fail for good once attempts are used up.

    With attempts left (and not `permanent`), the job goes back to queued with
    `run_after = now + backoff.delay(attempts)`. A job whose cancellation was requested is
    cancelled instead of retried. The error is kept on the row either way.

    Returns:
        The job's new state: queued, failed or cancelled.

    Raises:
        StaleLease: The lease was lost; nothing was written.
    """
    now = now or utcnow()
    found = (
        await session.execute(
            select(Job.attempts, Job.max_attempts, Job.cancel_requested).where(
                *_fenced(job_id, fencing_token)
            )
        )
    ).one_or_none()
    if found is None:
        raise StaleLease(job_id, fencing_token)
    values: dict[str, Any] = {"error": _storable(error), **_settled(now)}
    if found.cancel_requested:
        state = JobState.cancelled
    elif permanent or found.attempts >= found.max_attempts or fencing_token >= MAX_FENCING_TOKEN:
        # A token at its limit can be claimed no more (see `_lease`): no retry then.
        state = JobState.failed
    else:
        state = JobState.queued
        values["run_after"] = now + (backoff or Backoff()).delay(found.attempts)
    if state is not JobState.queued:
        values["finished_at"] = now
    await _write_fenced(session, job_id, fencing_token, state=state, **values)
    return state


async def mark_cancelled(
    session: AsyncSession,
    *,
    job_id: uuid.UUID,
    fencing_token: int,
    reason: str | None = None,
    now: datetime | None = None,
) -> None:
    """Record that the running attempt stopped because cancellation was requested.

    Raises:
        StaleLease: The lease was lost; nothing was written.
    """
    now = now or utcnow()
    await _write_fenced(
        session,
        job_id,
        fencing_token,
        state=JobState.cancelled,
        error=None if reason is None else _storable(reason),
        finished_at=now,
        **_settled(now),
    )


async def release(
    session: AsyncSession,
    *,
    job_id: uuid.UUID,
    fencing_token: int,
    now: datetime | None = None,
) -> None:
    """Give a running job back to the queue without counting the attempt (worker stopping).

    A job whose token is at its limit could never be claimed again: it fails instead.

    Raises:
        StaleLease: The lease was lost; nothing was written.
    """
    now = now or utcnow()
    if fencing_token >= MAX_FENCING_TOKEN:
        await _write_fenced(
            session,
            job_id,
            fencing_token,
            state=JobState.failed,
            error="released with its fencing token at the limit: it cannot be claimed again",
            finished_at=now,
            **_settled(now),
        )
        return
    await _write_fenced(
        session,
        job_id,
        fencing_token,
        state=JobState.queued,
        attempts=Job.attempts - 1,
        run_after=now,
        **_settled(now),
    )


async def _write_fenced(
    session: AsyncSession, job_id: uuid.UUID, fencing_token: int, **values: Any
) -> None:
    statement = (
        update(Job)
        .where(*_fenced(job_id, fencing_token))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if (await session.execute(statement)).rowcount != 1:  # type: ignore[attr-defined]
        raise StaleLease(job_id, fencing_token)
    if "state" in values or "run_after" in values:
        await _resync_entries(session, [job_id])


class _AnyTenant:
    """`request_cancel`'s default: system code, which may cancel any tenant's job."""


ANY_TENANT = _AnyTenant()


async def request_cancel(
    session: AsyncSession,
    *,
    job_id: uuid.UUID,
    tenant_id: uuid.UUID | _AnyTenant | None = ANY_TENANT,
    now: datetime | None = None,
) -> JobState | None:
    """Ask for a job to be cancelled; a queued job is cancelled at once.

    A running job keeps running until its handler notices `ctx.cancel_requested` (refreshed
    on each heartbeat) and raises `JobCancelled`; if it fails instead, it is not retried.

    Args:
        tenant_id: The tenant the job must belong to (None: a platform job); only system
            code leaves it out. A job of another tenant is left alone, as a missing one.

    Returns:
        The job's state afterwards (cancelled or running), or None when the job does not
        exist, belongs to another tenant or had already finished.
    """
    now = now or utcnow()
    queued = _state_is(JobState.queued)
    owner: list[ColumnElement[bool]] = []
    if isinstance(tenant_id, uuid.UUID):
        owner.append(Job.tenant_id == tenant_id)
    elif tenant_id is None:
        owner.append(Job.tenant_id.is_(None))
    # The entry first, as a claim locks it: a queued job is then cancelled or claimed, and
    # the two never wait on each other's second lock.
    await session.execute(
        select(JobStateEntry.job_id).where(JobStateEntry.job_id == job_id).with_for_update()
    )
    statement = (
        update(Job)
        .where(Job.id == job_id, Job.state.in_([JobState.queued, JobState.running]), *owner)
        .values(
            cancel_requested=True,
            state=case((queued, literal(JobState.cancelled.value)), else_=Job.state),
            finished_at=case((queued, now), else_=Job.finished_at),
            updated_at=now,
        )
        .returning(Job.state)
        .execution_options(synchronize_session=False)
    )
    state = (await session.execute(statement)).scalar_one_or_none()
    if state is None:
        return None
    if state == JobState.cancelled:
        await _resync_entries(session, [job_id])
    return JobState(state)


# The ids of every running job, as an array (looked up in `jobs` by primary key).
_RUNNING_IDS: ColumnElement[Any] = literal_column(
    "ARRAY(SELECT job_id FROM job_states WHERE state = 'running')"
)


async def rescue_expired(session: AsyncSession, *, now: datetime | None = None) -> int:
    """Take back running jobs whose lease expired (their worker died or stalled).

    Each goes back to queued, or to failed when its attempts are used up (cancelled when
    cancellation was requested). The fencing token is bumped, so the old holder can no
    longer heartbeat, complete or fail that attempt.

    Returns:
        How many jobs were rescued.
    """
    now = now or utcnow()
    # One statement for every expired lease, so no row may make it fail: a token at its
    # limit is not bumped (the job fails instead, and leaving `running` fences the old
    # holder out all the same).
    exhausted = Job.fencing_token >= MAX_FENCING_TOKEN
    retry = (Job.attempts < Job.max_attempts) & ~exhausted
    state = case(
        (Job.cancel_requested, literal(JobState.cancelled.value)),
        (retry, literal(JobState.queued.value)),
        else_=literal(JobState.failed.value),
    )
    # Running jobs are found through their entries (bounded by the workers' slots), the
    # expired ones among them by their row: the jobs' rows are locked first, then the
    # entries, as every write about a running job does.
    picked = (
        Job.id == func.any(_RUNNING_IDS)
        if unit_of(session).is_postgres
        else Job.id.in_(select(JobStateEntry.job_id).where(_entry_is(JobState.running)))
    )
    statement = (
        update(Job)
        .where(picked, _state_is(JobState.running), Job.lease_expires_at < now)
        .values(
            state=state,
            fencing_token=case((exhausted, Job.fencing_token), else_=Job.fencing_token + 1),
            run_after=now,
            error=literal("lease expired: worker ")
            + func.coalesce(Job.lease_owner, "?")
            + " stopped heartbeating",
            finished_at=case((Job.cancel_requested, now), (retry, None), else_=now),
            **_settled(now),
        )
        .returning(Job.id, Job.tenant_id, Job.type, Job.state, Job.error)
        .execution_options(synchronize_session=False)
    )
    if unit_of(session).is_postgres:
        # By index, as the claims (see `_by_index`): every running entry by the state index,
        # their jobs by primary key, never a scan of the retained tables.
        await session.execute(_planner_settings("off"))
        rescued = (await session.execute(statement)).all()
        await session.execute(_planner_settings("on"))
    else:
        rescued = (await session.execute(statement)).all()
    if rescued:
        await _resync_entries(session, [row.id for row in rescued])
        log.warning("rescued %d job(s) whose lease expired", len(rescued))
        await _announce(session)  # they are due now; do not leave them to the next poll
    uow = unit_of(session)
    for row in rescued:
        uow.record(
            system_action(
                tenant_id=row.tenant_id,
                action="job.rescue",
                resource_type="job",
                resource_id=row.id,
                reason=row.error,
                at=now,
                job_type=row.type,
                state=row.state,
            )
        )
    return len(rescued)


async def append_logs(session: AsyncSession, *, lines: Sequence[LogLine]) -> None:
    """Insert handler log lines in one batched statement."""
    if not lines:
        return
    rows = [{"job_id": line.job_id, "at": line.at, "line": _storable(line.line)} for line in lines]
    if not unit_of(session).is_postgres:
        await sqlite_fast.run_many(
            session, _fast_log(), [{f"l_{k}": v for k, v in row.items()} for row in rows]
        )
        return
    await session.execute(insert(_job_logs), rows)


@functools.lru_cache(maxsize=1)
def _fast_log() -> sqlite_fast.FastStatement:
    columns = ("job_id", "at", "line")
    return sqlite_fast.FastStatement(
        insert(_job_logs).values({c: _bind(f"l_{c}", _job_logs.c[c]) for c in columns})
    )
