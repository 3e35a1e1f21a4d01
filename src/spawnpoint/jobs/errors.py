"""Exceptions that handlers raise to steer their job, and the queue's fencing error."""

from __future__ import annotations


class PermanentJobError(Exception):
    """Raised by a handler when retrying cannot help: the job fails at once, error kept."""


class JobCancelled(Exception):
    """Raised by a handler that stopped because `ctx.cancel_requested` became true."""


class StaleLease(Exception):
    """The caller no longer holds the job's lease: its fencing token was superseded.

    Raised by `complete`, `fail`, `cancel` and `release` when the job was rescued and
    possibly claimed again since the caller claimed it. The write was not applied; the
    caller must drop its result, because another attempt owns the job now.
    """

    def __init__(self, job_id: object, fencing_token: int) -> None:
        super().__init__(
            f"job {job_id}: lease with fencing token {fencing_token} is no longer held"
        )
        self.job_id = job_id
        self.fencing_token = fencing_token
