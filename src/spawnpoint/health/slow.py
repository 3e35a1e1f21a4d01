"""The most recent slow requests, kept in a bounded ring for /healthz and /readyz."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spawnpoint.kit.clock import utcnow

# How many slow requests /healthz lists, whatever SLOW_REQUEST_MAX is.
SHOWN = 20


@dataclass(frozen=True, slots=True)
class SlowRequest:
    method: str
    route: str
    status: int
    duration_ms: float
    at: datetime
    seen: float  # the tracker's clock when it was recorded

    def document(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "route": self.route,
            "status": self.status,
            "duration_ms": round(self.duration_ms, 3),
            "time": self.at.isoformat(),
        }


class SlowRequestTracker:
    """Requests over `threshold_ms`; "overloaded" while more than `max_in_window` of them
    were seen in the last `window_seconds`.

    The ring holds `max_in_window + 1` entries at least, so the count can always tell;
    `clock` (monotonic seconds) and `wall` are injectable so tests age entries out
    without sleeping.
    """

    def __init__(
        self,
        *,
        threshold_ms: float,
        max_in_window: int,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        self.threshold_seconds = threshold_ms / 1000
        self.max_in_window = max_in_window
        self.window_seconds = window_seconds
        self.clock = clock
        self.wall = wall
        self._ring: deque[SlowRequest] = deque(maxlen=max(SHOWN, max_in_window + 1))

    def observe(self, method: str, route: str, status: int, seconds: float) -> bool:
        """Record the request if it was slow (cheap when it was not); whether it was."""
        if seconds < self.threshold_seconds:
            return False
        self._ring.append(
            SlowRequest(
                method=method,
                route=route,
                status=status,
                duration_ms=seconds * 1000,
                at=self.wall(),
                seen=self.clock(),
            )
        )
        return True

    def recent(self, limit: int = SHOWN) -> list[SlowRequest]:
        """The newest slow requests first."""
        return [self._ring[-index] for index in range(1, min(limit, len(self._ring)) + 1)]

    def in_window(self) -> int:
        since = self.clock() - self.window_seconds
        count = 0
        for entry in reversed(self._ring):
            if entry.seen < since:
                break
            count += 1
        return count

    def overloaded(self) -> bool:
        return self.in_window() > self.max_in_window
