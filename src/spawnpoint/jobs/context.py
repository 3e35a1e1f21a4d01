"""What a handler sees of its job: `JobContext`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.queue import ClaimedJob, LogLine
from spawnpoint.kit.clock import utcnow

# The worker's way of recording an attempt's success in a handler's transaction (see
# `JobContext.succeed_in`): whether it did.
Recorder = Callable[["JobContext", AsyncSession, dict[str, Any] | None], Awaitable[bool]]


class JobContext:
    """One attempt of one job, as handed to its handler.

    Handlers open their own transactions on `database`. They must be idempotent: a worker
    that dies mid-run loses its lease, and the job runs again from the start.
    """

    def __init__(
        self,
        *,
        job: ClaimedJob,
        database: Database,
        settings: Settings,
        clock: Callable[[], datetime] = utcnow,
        recorder: Recorder | None = None,
    ) -> None:
        self.job = job
        self.database = database
        self.settings = settings
        self._clock = clock
        self._cancel_requested = job.cancel_requested
        # Made when a handler first waits for it: most attempts never do.
        self._cancel_event: asyncio.Event | None = None
        self._pending_logs: list[LogLine] = []
        self._recorder = recorder
        # Whether this attempt's success was committed with the handler's transaction.
        self.recorded = False

    @property
    def job_id(self) -> uuid.UUID:
        return self.job.id

    @property
    def job_type(self) -> str:
        return self.job.type

    @property
    def payload(self) -> dict[str, Any]:
        return self.job.payload

    @property
    def tenant_id(self) -> uuid.UUID | None:
        return self.job.tenant_id

    @property
    def project_id(self) -> uuid.UUID | None:
        return self.job.project_id

    @property
    def actor_id(self) -> uuid.UUID | None:
        return self.job.actor_id

    @property
    def attempt(self) -> int:
        """This attempt's number, from 1."""
        return self.job.attempt

    @property
    def max_attempts(self) -> int:
        return self.job.max_attempts

    @property
    def fencing_token(self) -> int:
        return self.job.fencing_token

    @property
    def cancel_requested(self) -> bool:
        """Whether cancellation was requested; refreshed on every heartbeat.

        A handler that sees it should tidy up and raise `JobCancelled`.
        """
        return self._cancel_requested

    async def wait_cancel_requested(self) -> None:
        """Return once cancellation is requested (for handlers that mostly wait)."""
        if self._cancel_event is None:
            self._cancel_event = asyncio.Event()
            if self._cancel_requested:
                self._cancel_event.set()
        await self._cancel_event.wait()

    async def succeed_in(self, session: AsyncSession, result: dict[str, Any] | None) -> None:
        """Record this attempt's success, and its log lines, in `session`'s transaction.

        For a handler's last write transaction, which then returns `result` once it
        committed: the outcome commits with the work it describes, fenced by the lease like
        any outcome, instead of in a transaction of the worker's afterwards. Where the
        worker would gain nothing (PostgreSQL, whose outcomes go out in shared batches) or
        could not keep a promise (a service job's governance event, a result that is not a
        JSON object), nothing is written here and the worker records the outcome as usual.

        Raises:
            StaleLease: the lease was lost; the transaction must not commit.
        """
        if self._recorder is not None and not self.recorded:
            await self._recorder(self, session, result)

    def log(self, line: str) -> None:
        """Append a line to the job's log.

        Lines are buffered and written with the next heartbeat, and always before the
        attempt's outcome is recorded.
        """
        self._pending_logs.append(LogLine(job_id=self.job.id, at=self._clock(), line=line))

    def take_logs(self) -> list[LogLine]:
        """Remove and return the buffered lines (the worker writes them)."""
        lines, self._pending_logs = self._pending_logs, []
        return lines

    def restore_logs(self, lines: list[LogLine]) -> None:
        """Put back lines whose write failed, ahead of any logged since."""
        self._pending_logs[:0] = lines

    def set_cancel_requested(self, requested: bool) -> None:
        self._cancel_requested = requested
        if self._cancel_event is not None:
            if requested:
                self._cancel_event.set()
            else:
                self._cancel_event.clear()
