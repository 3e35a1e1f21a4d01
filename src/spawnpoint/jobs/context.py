"""What a handler sees of its job: `JobContext`."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.queue import ClaimedJob, LogLine
from spawnpoint.kit.clock import utcnow


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
    ) -> None:
        self.job = job
        self.database = database
        self.settings = settings
        self._clock = clock
        self._cancel_requested = job.cancel_requested
        # Made when a handler first waits for it: most attempts never do.
        self._cancel_event: asyncio.Event | None = None
        self._pending_logs: list[LogLine] = []

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
