"""Riding out a database outage: backoff between retries, one log line per outage.

Worker and scheduler loops never exit on a database error: they wait and try again. While
the database is down (a restart, a failover), every try fails the same way, so a loop logs
the first failure of the outage as one warning line and the recovery as one info line, and
waits longer after each failure, up to a cap, so a long outage costs little and the loop
resumes within the cap of the database's return. Errors that are not an outage keep their
traceback on every occurrence: they are bugs or bad data, and someone must see them.
"""

from __future__ import annotations

import logging
import random
import time

from spawnpoint.db import first_line, is_unavailable

_jitter = random.SystemRandom()


class Outage:
    """Failure bookkeeping for one loop (`what` names it in the log lines).

    Call `failed(error)` after each failed try, which logs and returns how long to wait,
    and `succeeded()` after each successful one.
    """

    def __init__(
        self, what: str, log: logging.Logger, *, first_delay: float = 0.1, max_delay: float = 2.0
    ) -> None:
        self.what = what
        self.log = log
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.failures = 0
        self._since: float | None = None

    @property
    def ongoing(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException) -> float:
        """Log `error` as this loop's view of it deserves; return the wait before the retry."""
        self.failures += 1
        if not is_unavailable(error):
            self.log.error("%s failed; retrying", self.what, exc_info=error)
        elif self._since is None:
            self._since = time.monotonic()
            self.log.warning(
                "%s: database unavailable (%s: %s); retrying until it is back",
                self.what,
                type(error).__name__,
                first_line(error),
            )
        else:
            self.log.debug("%s: database still unavailable: %s", self.what, error)
        ceiling = min(self.max_delay, self.first_delay * 2.0 ** min(self.failures - 1, 30))
        # Half fixed, half random: processes that failed together do not retry together.
        return ceiling / 2 + _jitter.uniform(0, ceiling / 2)

    def succeeded(self) -> None:
        if self._since is not None:
            self.log.info(
                "%s: database reachable again after %.1fs",
                self.what,
                time.monotonic() - self._since,
            )
        self._since = None
        self.failures = 0
