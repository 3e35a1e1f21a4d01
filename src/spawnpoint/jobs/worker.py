"""The worker: claims due jobs, runs their handlers, keeps their leases and records outcomes.

One `Worker` per process (or inside `spawnpoint serve` on SQLite). Its tasks:

- the claim loop fills free slots (`concurrency`) with one claim statement; it wakes on
  PostgreSQL NOTIFY (a dedicated LISTEN connection), on local commits that enqueued jobs,
  when a slot frees up while the queue may hold more, and every `poll_interval` anyway
  (delayed retries and other processes on SQLite announce nothing). A slot frees up when
  its handler returns, not when its outcome is recorded: the next claim runs while the
  settle task writes the last batch's outcomes, so neither waits for the other's round
  trips. At most `concurrency` outcomes wait to be recorded (the slots stay taken past
  that), so a slow database holds the worker to 2 x `concurrency` attempts in hand;
- one handler task per claimed job;
- one heartbeat task that, every `lease_seconds / 3`, extends all held leases in one
  statement, refreshes `cancel_requested` and writes buffered log lines; a lost lease
  cancels its handler;
- one settle task that records finished attempts in batches (one transaction for all
  outcomes that piled up while the previous batch was written), each write fenced; while
  the queue may hold more, the same transaction claims the next jobs for the slots free by
  then (`complete_and_claim`), so a busy worker runs one transaction per batch.

A handler's last transaction may record its success itself (`JobContext.succeed_in`, SQLite
only): the completion and the attempt's log lines then commit with the work, and the worker
has nothing left to write for it.

Outcomes: a returned dict (or None) -> succeeded; `JobCancelled` -> cancelled;
`PermanentJobError` -> failed at once; any other exception -> retried with backoff until
`max_attempts`, then failed. On stop, the worker claims nothing more, waits up to
`grace_seconds` for running handlers, then cancels them and releases their jobs to the
queue without counting the attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

import psycopg
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint import logs, tracing
from spawnpoint.config import Settings
from spawnpoint.db import CONNECT_TIMEOUT_SECONDS, Database
from spawnpoint.jobs.context import JobContext
from spawnpoint.jobs.errors import JobCancelled, PermanentJobError, StaleLease
from spawnpoint.jobs.events import JOB_COMPLETED, JOB_FAILED, job_event
from spawnpoint.jobs.outages import Outage
from spawnpoint.jobs.queue import (
    CHANNEL,
    Backoff,
    ClaimedJob,
    Completion,
    LogLine,
    append_logs,
    claim,
    complete_and_claim,
    complete_many,
    fail,
    heartbeat_many,
    mark_cancelled,
    new_owner_id,
    release,
)
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.jobs.scheduler import PeriodicTask, Scheduler, default_tasks
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.metrics import JOB_DURATION, JOB_RETRIES
from spawnpoint.models.jobs import JobState
from spawnpoint.uow import unit_of

log = logging.getLogger("spawnpoint.jobs.worker")

LISTEN_KEEPALIVE_SECONDS = 30.0
# The longest wait between tries while the database is down: the worker resumes within
# this long of its return.
RECONNECT_MAX_SECONDS = 2.0


class _Kind(Enum):
    succeeded = "succeeded"
    retry = "retry"
    permanent = "permanent"
    cancelled = "cancelled"
    released = "released"


# The `outcome` label of service_job_duration_ms: an attempt that raised is an `error`
# (retried or not, as `fail` decides), a PermanentJobError a `failed`.
OUTCOME_LABELS = {
    _Kind.succeeded: "succeeded",
    _Kind.retry: "error",
    _Kind.permanent: "failed",
    _Kind.cancelled: "cancelled",
    _Kind.released: "released",
}


@dataclass(eq=False)
class _Attempt:
    job: ClaimedJob
    ctx: JobContext
    lease_expires_at: datetime
    # (job id, fencing token): how the worker's maps name this attempt.
    key: tuple[uuid.UUID, int]
    task: asyncio.Task[None] | None = None
    lost: bool = False
    releasing: bool = False
    # Log lines taken into a handler's transaction that records the success (`_succeed_in`),
    # put back if it does not commit.
    taken: list[LogLine] | None = None


@dataclass(eq=False)
class _Outcome:
    attempt: _Attempt
    kind: _Kind
    result: dict[str, Any] | None = None
    error: str | None = None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Worker:
    """Runs jobs from the queue with at most `concurrency` handlers at a time.

    Args:
        database: Where the queue lives; handlers get it as `ctx.database`.
        settings: Passed to handlers as `ctx.settings`.
        registry: Job type -> handler; only these types are claimed.
        concurrency: Handlers run at once.
        worker_id: The lease owner name; default host:pid:random.
        lease_seconds: Lease length; heartbeats renew it every third of it.
        poll_interval: Longest wait between claims when nothing wakes the worker.
        clock: Source of `now` for leases and backoff.
        backoff: Retry delays; default base 1 s, cap 300 s.
        grace_seconds: How long a stopping worker lets running handlers finish.
    """

    def __init__(
        self,
        database: Database,
        settings: Settings,
        registry: HandlerRegistry,
        *,
        concurrency: int,
        worker_id: str | None = None,
        lease_seconds: float,
        poll_interval: float,
        clock: Callable[[], datetime] = utcnow,
        backoff: Backoff | None = None,
        grace_seconds: float = 30.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if lease_seconds <= 0 or poll_interval <= 0:
            raise ValueError("lease_seconds and poll_interval must be positive")
        self.database = database
        self.settings = settings
        self.registry = registry
        self.concurrency = concurrency
        self.worker_id = worker_id or new_owner_id()
        self.lease = timedelta(seconds=lease_seconds)
        self.poll_interval = poll_interval
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.grace_seconds = grace_seconds
        self._running: dict[tuple[uuid.UUID, int], _Attempt] = {}
        self._outcomes: list[_Outcome] = []
        # Attempts whose handler has finished and whose outcome is not yet recorded.
        self._unrecorded = 0
        # Slots promised to claims in flight (the claim loop's, the settle task's).
        self._reserved = 0
        self._stopping = False
        self._more = True
        self._durations: dict[tuple[str, _Kind], Any] = {}
        # Created in run(): events belong to the loop that runs the worker.
        self._wake: asyncio.Event
        self._settle_wake: asyncio.Event
        self._idle: asyncio.Event
        self._write_lock: asyncio.Lock

    @property
    def active(self) -> int:
        """Attempts claimed and not yet recorded."""
        return len(self._running)

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then finish (or release) running jobs and return."""
        self._wake = asyncio.Event()
        self._settle_wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._write_lock = asyncio.Lock()
        loop = asyncio.get_running_loop()

        def poke_from_commit() -> None:
            loop.call_soon_threadsafe(self._poke)

        helpers = [
            asyncio.create_task(self._heartbeat_loop(), name="jobs heartbeat"),
            asyncio.create_task(self._settle_loop(), name="jobs settle"),
            asyncio.create_task(self._relay(stop), name="jobs stop relay"),
        ]
        if not self.database.is_sqlite:
            helpers.append(asyncio.create_task(self._listen_loop(), name="jobs listen"))
        self.database.wakeups.add(poke_from_commit)
        log.info(
            "worker %s started: concurrency %d, %d job type(s)",
            self.worker_id,
            self.concurrency,
            len(self.registry.job_types()),
        )
        try:
            await self._claim_loop(stop)
            await self._drain()
        finally:
            self.database.wakeups.discard(poke_from_commit)
            # Normally empty; when run() itself is cancelled, handlers must not outlive it.
            handlers = [a.task for a in self._running.values() if a.task is not None]
            for task in [*handlers, *helpers]:
                task.cancel()
            await asyncio.gather(*handlers, *helpers, return_exceptions=True)
            log.info("worker %s stopped", self.worker_id)

    def _poke(self) -> None:
        """Something may be due: claim as soon as a slot is free."""
        self._more = True
        self._wake.set()

    async def _relay(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stopping = True
        self._wake.set()

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        job_types = self.registry.job_types()
        outage = Outage("claiming jobs", log, max_delay=RECONNECT_MAX_SECONDS)
        while not stop.is_set():
            free = self._free_slots()
            if free > 0 and self._more:
                # Cleared before the claim: a wake-up that arrives during it sets it again.
                self._more = False
                self._reserved += free
                try:
                    # One UPDATE ... RETURNING; on PostgreSQL it commits in the same round trip.
                    async with self.database.transaction(write=True) as session:
                        claimed = await claim(
                            session,
                            owner=self.worker_id,
                            limit=free,
                            lease=self.lease,
                            job_types=job_types,
                            now=self.clock(),
                        )
                except Exception as error:
                    self._reserved -= free
                    self._more = True
                    delay = outage.failed(error)
                    # Woken early by a stop, or by the LISTEN connection coming back.
                    self._wake.clear()
                    if not stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._wake.wait(), delay)
                    continue
                self._reserved -= free
                outage.succeeded()
                if len(claimed) == free:
                    self._more = True
                for job in claimed:
                    self._start(job)
                continue
            # No await between the checks above and this clear, so no wake-up is lost.
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                self._more = True

    def _free_slots(self, recording: int = 0) -> int:
        """Slots for new claims: handlers running stay within `concurrency`, and so do the
        finished attempts whose outcomes wait to be recorded (`recording` of them are
        being recorded by the transaction that would claim)."""
        handlers = len(self._running) - self._unrecorded
        held = len(self._running) - recording
        return min(self.concurrency - handlers, 2 * self.concurrency - held) - self._reserved

    def _start(self, job: ClaimedJob) -> None:
        ctx = JobContext(
            job=job,
            database=self.database,
            settings=self.settings,
            clock=self.clock,
            recorder=self._succeed_in,
        )
        attempt = _Attempt(
            job=job, ctx=ctx, lease_expires_at=job.lease_expires_at, key=(job.id, job.fencing_token)
        )
        self._running[attempt.key] = attempt
        self._idle.clear()
        # Unnamed: a name per task would format a UUID per job for nobody.
        attempt.task = asyncio.create_task(self._execute(attempt))
        log.debug("job %s (%s) attempt %d started", job.id, job.type, job.attempt)

    async def _execute(self, attempt: _Attempt) -> None:
        outcome: _Outcome | None = None
        ctx = attempt.ctx
        job = attempt.job
        # This task's own context: its log lines name the job (see logs.py).
        logs.current.set(logs.job_log_context(job))
        started = time.perf_counter()
        try:
            handler = self.registry.get(job.type)
            if handler is None:
                raise PermanentJobError(f"no handler for job type {job.type!r}")
            if job.payload_error is not None:
                raise PermanentJobError(job.payload_error)
            if tracing.enabled():
                with tracing.span(
                    "job.execute",
                    tenant_id=job.tenant_id,
                    project_id=job.project_id,
                    job_type=job.type,
                    job_id=job.id,
                    attempt=job.attempt,
                ):
                    result = await handler(ctx)
            else:
                result = await handler(ctx)
            outcome = self._success(attempt, result)
        except JobCancelled as exc:
            outcome = _Outcome(attempt, _Kind.cancelled, error=str(exc) or None)
        except PermanentJobError as exc:
            outcome = _Outcome(attempt, _Kind.permanent, error=_describe(exc))
        except asyncio.CancelledError:
            if attempt.releasing:
                outcome = _Outcome(attempt, _Kind.released)
            elif not attempt.lost:
                raise
        except Exception as exc:
            ctx.log(f"attempt {attempt.job.attempt} failed:\n{traceback.format_exc().rstrip()}")
            outcome = _Outcome(attempt, _Kind.retry, error=_describe(exc))
        finally:
            if ctx.recorded:
                # The success committed with the handler's own transaction (`_succeed_in`).
                elapsed_ms = (time.perf_counter() - started) * 1000
                self._duration(job.type, _Kind.succeeded).observe(elapsed_ms)
                self._forget(attempt)
            elif outcome is None:
                # Lease lost (or the worker itself was cancelled): there is nothing to record.
                self._forget(attempt)
            else:
                if attempt.taken:
                    ctx.restore_logs(attempt.taken)
                attempt.taken = None
                elapsed_ms = (time.perf_counter() - started) * 1000
                self._duration(job.type, outcome.kind).observe(elapsed_ms)
                self._outcomes.append(outcome)
                self._unrecorded += 1
                self._settle_wake.set()
                self._wake.set()  # its slot is free for the next claim

    async def _succeed_in(
        self, ctx: JobContext, session: AsyncSession, result: dict[str, Any] | None
    ) -> bool:
        """`JobContext.succeed_in`: the attempt's log lines and its completion, fenced, in
        the handler's transaction; marked recorded once that commits.

        SQLite only: there a transaction's own cost is most of a small job's, and the
        worker's would be one more per job; PostgreSQL's outcomes go out in batches, a round
        trip shared by many jobs. A service job's governance event stays the worker's.
        """
        attempt = self._running.get((ctx.job_id, ctx.fencing_token))
        uow = unit_of(session)
        # While a heartbeat writes lines it took, this attempt's later ones wait for the
        # worker's write, which comes after: lines reach the table in the order logged.
        busy = self._write_lock.locked()
        if attempt is None or attempt.ctx is not ctx or uow.is_postgres or busy:
            return False
        job = attempt.job
        outcome = self._success(attempt, result)
        if outcome.kind is not _Kind.succeeded or self._governed(job):
            return False
        attempt.taken = ctx.take_logs()
        await append_logs(session, lines=attempt.taken)
        completion = Completion(job.id, job.fencing_token, outcome.result)
        if await complete_many(session, completions=[completion], now=self.clock()):
            raise StaleLease(job.id, job.fencing_token)

        def committed() -> None:
            ctx.recorded = True
            attempt.taken = None

        uow.on_commit(committed)
        return True

    def _duration(self, job_type: str, kind: _Kind) -> Any:
        """The `service_job_duration_ms` series of (job type, outcome), looked up once."""
        key = (job_type, kind)
        series = self._durations.get(key)
        if series is None:
            series = self._durations[key] = JOB_DURATION.labels(job_type, OUTCOME_LABELS[kind])
        return series

    @staticmethod
    def _success(attempt: _Attempt, result: object) -> _Outcome:
        if result is None:
            return _Outcome(attempt, _Kind.succeeded)
        if not isinstance(result, dict):
            error = f"handler returned {type(result).__name__}, expected dict or None"
            return _Outcome(attempt, _Kind.permanent, error=error)
        try:
            # PostgreSQL's json type refuses NaN and Infinity, which json.dumps allows.
            json.dumps(result, allow_nan=False)
        except (TypeError, ValueError) as exc:
            # Caught here, not in the batch write, which it would fail for everyone.
            return _Outcome(attempt, _Kind.permanent, error=f"result is not JSON: {exc}")
        return _Outcome(attempt, _Kind.succeeded, result=result)

    def _forget(self, attempt: _Attempt) -> None:
        if self._running.pop(attempt.key, None) is not None:
            self._wake.set()
            if not self._running:
                self._idle.set()

    async def _settle_loop(self) -> None:
        outage = Outage("recording job outcomes", log, max_delay=1.0)
        while True:
            await self._settle_wake.wait()
            self._settle_wake.clear()
            batch, self._outcomes = self._outcomes, []
            if not batch:
                continue
            # Claim in the same transaction while the queue may hold more (and not stopping).
            wanted = 0 if self._stopping or not self._more else self._free_slots(len(batch))
            wanted = max(0, wanted)
            self._reserved += wanted
            try:
                claimed = await self._settle(batch, claim_limit=wanted)
            except Exception as error:
                self._outcomes[:0] = batch
                await asyncio.sleep(outage.failed(error))
                self._settle_wake.set()
                continue
            finally:
                self._reserved -= wanted
            outage.succeeded()
            self._unrecorded -= len(batch)
            for outcome in batch:
                self._forget(outcome.attempt)
            if wanted and len(claimed) == wanted:
                self._more = True
            for job in claimed:
                self._start(job)

    async def _settle(self, batch: Sequence[_Outcome], *, claim_limit: int) -> list[ClaimedJob]:
        """Record `batch`'s outcomes in one transaction, claiming up to `claim_limit` jobs in
        it; returns the claimed jobs (leased once this returns: the transaction committed)."""
        now = self.clock()
        stale: list[_Attempt] = []
        claimed: list[ClaimedJob] = []
        # The logs go in the same transaction: they are durable before the outcome is.
        async with self._logged_write([outcome.attempt for outcome in batch]) as session:
            successes = [o for o in batch if o.kind is _Kind.succeeded]
            completions = [
                Completion(o.attempt.job.id, o.attempt.job.fencing_token, o.result)
                for o in successes
            ]
            # Nothing else to write (no failures to record, no governance events): the
            # COMMIT goes out with the statements, one round trip for the whole batch.
            final = len(successes) == len(batch) and not any(
                self._governed(o.attempt.job) for o in successes
            )
            rejected, claimed = await complete_and_claim(
                session,
                completions=completions,
                owner=self.worker_id,
                limit=claim_limit,
                lease=self.lease,
                job_types=self.registry.job_types(),
                now=now,
                final=final,
            )
            if rejected:
                rejected_keys = {(c.job_id, c.fencing_token) for c in rejected}
                stale.extend(o.attempt for o in successes if o.attempt.key in rejected_keys)
                successes = [o for o in successes if o.attempt.key not in rejected_keys]
            if not final:
                for o in successes:
                    self._govern(session, o.attempt.job, JOB_COMPLETED, now, result=o.result)
            for outcome in batch:
                if outcome.kind is _Kind.succeeded:
                    continue
                try:
                    await self._record(session, outcome, now)
                except StaleLease:
                    stale.append(outcome.attempt)
        for attempt in stale:
            log.warning(
                "job %s attempt %d: lease lost before its outcome was recorded; dropped",
                attempt.job.id,
                attempt.job.attempt,
            )
        return claimed

    async def _record(self, session: AsyncSession, outcome: _Outcome, now: datetime) -> None:
        job = outcome.attempt.job
        if outcome.kind is _Kind.cancelled:
            await mark_cancelled(
                session,
                job_id=job.id,
                fencing_token=job.fencing_token,
                reason=outcome.error,
                now=now,
            )
        elif outcome.kind is _Kind.released:
            await release(session, job_id=job.id, fencing_token=job.fencing_token, now=now)
        else:
            state = await fail(
                session,
                job_id=job.id,
                fencing_token=job.fencing_token,
                error=outcome.error or "failed",
                permanent=outcome.kind is _Kind.permanent,
                backoff=self.backoff,
                now=now,
            )
            if state is JobState.queued:
                JOB_RETRIES.labels(job.type).inc()
            elif state is JobState.failed:
                self._govern(session, job, JOB_FAILED, now, error=outcome.error)
            log.info(
                "job %s (%s) attempt %d/%d failed (%s): %s",
                job.id,
                job.type,
                job.attempt,
                job.max_attempts,
                state.value,
                outcome.error,
            )

    def _governed(self, job: ClaimedJob) -> bool:
        """Whether the job's outcome writes a governance event (see `_govern`)."""
        return job.tenant_id is not None and self.registry.is_service(job.type)

    def _govern(
        self,
        session: AsyncSession,
        job: ClaimedJob,
        event_type: str,
        now: datetime,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Write a service job's governance event in the transaction recording its outcome.

        Only a tenant's jobs of service types have them (`HandlerRegistry.service_types`);
        workspace jobs have their workspace's events, platform jobs none.
        """
        if not self._governed(job):
            return
        finished = "succeeded" if event_type == JOB_COMPLETED else "failed"
        unit_of(session).emit(
            job_event(
                event_type,
                job_id=job.id,
                job_type=job.type,
                tenant_id=job.tenant_id,
                project_id=job.project_id,
                actor_id=job.actor_id,
                state=finished,
                attempts=job.attempt,
                max_attempts=job.max_attempts,
                error=error,
                artifact_id=(result or {}).get("artifact_id"),
                now=now,
            )
        )

    @contextlib.asynccontextmanager
    async def _logged_write(self, attempts: Sequence[_Attempt]) -> AsyncIterator[AsyncSession]:
        """A write transaction that first stores the log lines `attempts` buffered.

        Serialised with the worker's other such writes, and the lines taken only once the
        turn comes, so lines reach the table (and get their ids) in the order logged.
        """
        async with self._write_lock:
            logs = [(attempt.ctx, attempt.ctx.take_logs()) for attempt in attempts]
            try:
                async with self.database.transaction(write=True) as session:
                    await append_logs(session, lines=[ln for _, lines in logs for ln in lines])
                    yield session
            except BaseException:
                for ctx, lines in logs:
                    ctx.restore_logs(lines)
                raise

    async def _heartbeat_loop(self) -> None:
        interval = self.lease.total_seconds() / 3
        outage = Outage("heartbeat", log)
        while True:
            await asyncio.sleep(interval)
            try:
                await self._heartbeat()
            except Exception as error:
                outage.failed(error)  # the next one is due in `interval` all the same
            else:
                outage.succeeded()
            self._expire_unrenewed()

    async def _heartbeat(self) -> None:
        attempts = list(self._running.values())
        if not attempts:
            return
        now = self.clock()
        async with self._logged_write(attempts) as session:
            held = await heartbeat_many(
                session,
                owner=self.worker_id,
                leases=[attempt.key for attempt in attempts],
                lease=self.lease,
                now=now,
            )
        for attempt in attempts:
            if attempt.key in held:
                attempt.lease_expires_at = now + self.lease
                attempt.ctx.set_cancel_requested(held[attempt.key])
            elif attempt.key in self._running:
                self._lose(attempt, "the lease was taken back")

    def _expire_unrenewed(self) -> None:
        # If heartbeats cannot reach the database, the lease runs out all the same and
        # another worker may start the job: stop this attempt rather than run it twice.
        now = self.clock()
        for attempt in list(self._running.values()):
            if attempt.lease_expires_at <= now:
                self._lose(attempt, "the lease expired without a successful heartbeat")

    def _lose(self, attempt: _Attempt, why: str) -> None:
        if attempt.lost or attempt.ctx.recorded:
            return
        attempt.lost = True
        if attempt.task is not None and not attempt.task.done():
            log.warning("job %s attempt %d stopped: %s", attempt.job.id, attempt.job.attempt, why)
            attempt.task.cancel()

    async def _listen_loop(self) -> None:
        conninfo = make_url(self.database.url).set(drivername="postgresql")
        dsn = conninfo.render_as_string(hide_password=False)
        outage = Outage("LISTEN connection", log, max_delay=RECONNECT_MAX_SECONDS)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    outage.succeeded()
                    self._poke()  # notifications sent while we were not listening are lost
                    while True:
                        async for _ in conn.notifies(timeout=LISTEN_KEEPALIVE_SECONDS):
                            self._poke()
                        # Quiet for a while: make sure the connection is still alive.
                        await conn.execute("SELECT 1")
            except asyncio.CancelledError:
                raise
            except Exception as error:
                await asyncio.sleep(outage.failed(error))

    async def _drain(self) -> None:
        if self._running:
            log.info(
                "stopping: waiting up to %.0fs for %d running job(s)",
                self.grace_seconds,
                len(self._running),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.grace_seconds)
        if not self._running:
            return
        for attempt in list(self._running.values()):
            if attempt.task is not None and not attempt.task.done():
                attempt.releasing = True
                attempt.task.cancel()
        # Releasing needs one more write; if the database is gone, the leases will expire.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), self.lease.total_seconds())


async def run_worker_in_process(
    database: Database,
    settings: Settings,
    registry: HandlerRegistry,
    stop: asyncio.Event,
    *,
    concurrency: int = 4,
    lease_seconds: float = 30.0,
    poll_interval: float = 1.0,
    grace_seconds: float = 30.0,
    scheduler: bool = True,
    tasks: Sequence[PeriodicTask] | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> None:
    """Run a `Worker` and (unless `scheduler` is False) a `Scheduler` until `stop` is set.

    For `spawnpoint worker` and for the API process's lifespan (`spawnpoint serve` on
    SQLite). `tasks` defaults to `default_tasks()`; the scheduler takes part in leader
    election, so any number of processes may run it. When the run ends, the registry's
    closers run (`HandlerRegistry.on_close`), which closes the workers' provisioner drivers.
    """
    owner = new_owner_id()
    worker = Worker(
        database,
        settings,
        registry,
        concurrency=concurrency,
        worker_id=owner,
        lease_seconds=lease_seconds,
        poll_interval=poll_interval,
        clock=clock,
        grace_seconds=grace_seconds,
    )
    runners = [worker.run(stop)]
    # With RABBITMQ_URL, the outbox relay too (one leader among the processes).
    from spawnpoint.events.relay import relay_runners

    runners.extend(relay_runners(database, settings, stop, owner=owner))
    if settings.rabbitmq_url:
        # Every worker consumes permit events (issue 13); the inbox makes that safe.
        from spawnpoint.permits.consumer import run_consumer

        runners.append(run_consumer(database, settings, stop))
    if scheduler:
        periodic = default_tasks() if tasks is None else tasks
        runners.append(
            Scheduler(database, settings, tasks=periodic, clock=clock, owner=owner).run(stop)
        )
    try:
        await asyncio.gather(*runners)
    finally:
        await registry.aclose()


async def serve_worker(
    settings: Settings,
    registry: HandlerRegistry,
    *,
    concurrency: int,
    lease_seconds: float,
    poll_interval: float,
    grace_seconds: float,
    scheduler: bool,
    tasks: Sequence[PeriodicTask],
) -> None:
    """The `spawnpoint worker` process: run until SIGTERM or SIGINT, then stop gracefully.

    A second signal stops at once; leases of unfinished jobs then expire and are rescued.
    """
    database = Database(
        settings.sqlalchemy_url, pool_size=max(settings.database_pool_size, concurrency + 2)
    )
    # Transitions written here update the permit status cache too (with REDIS_URL).
    from spawnpoint.workspaces.status_cache import detach_status_cache, install_status_cache

    install_status_cache(database, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_signal(signum: int) -> None:
        if stop.is_set() and main is not None:
            main.cancel()
            return
        log.info("received %s: stopping gracefully", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await run_worker_in_process(
            database,
            settings,
            registry,
            stop,
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            poll_interval=poll_interval,
            grace_seconds=grace_seconds,
            scheduler=scheduler,
            tasks=tasks,
        )
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await detach_status_cache(database)
        await database.dispose()
