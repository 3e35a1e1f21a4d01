"""Health reports (/healthz, /readyz) and the database-derived gauges of /metrics."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from datetime import time as day_time
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.events.repository import RelayRepository
from spawnpoint.health.checks import (
    CheckResult,
    database_probe,
    policy_probe,
    rabbitmq_probe,
    redis_probe,
    timed,
)
from spawnpoint.health.repository import HealthRepository, TenantQuotaRow
from spawnpoint.health.schemas import HealthRead
from spawnpoint.health.slow import SlowRequestTracker
from spawnpoint.kit.clock import utcnow
from spawnpoint.policy.engine import PolicyEngine

log = logging.getLogger("spawnpoint.health")


@dataclass(frozen=True)
class Snapshot:
    """What /metrics reads from the database at scrape time."""

    queue_depth: dict[str, int] = field(default_factory=dict)
    workspaces: dict[str, int] = field(default_factory=dict)
    quotas: list[TenantQuotaRow] = field(default_factory=list)
    # Seconds the oldest unpublished outbox event has waited; None without RABBITMQ_URL.
    relay_lag: float | None = None
    ok: bool = True


def ratio(used: float, limit: float) -> float:
    """As `GET /api/quotas` reports it: a limit of 0 leaves no room, so it reads as full."""
    return used / limit if limit > 0 else 1.0


class SnapshotCollector(Collector):
    """One scrape's database-derived gauges (a fresh collector per scrape).

    `job_types` (the registry's) get a queue depth of 0 when none is queued, so their series
    stay continuous.
    """

    def __init__(self, snapshot: Snapshot, *, job_types: Collection[str] = ()) -> None:
        self.snapshot = snapshot
        self.job_types = job_types

    def collect(self) -> Iterable[Metric]:
        snapshot = self.snapshot
        up = GaugeMetricFamily(
            "spawnpoint_metrics_database_up",
            "1 when this scrape could read the database-derived gauges, 0 when it could not.",
            value=1 if snapshot.ok else 0,
        )
        yield up
        if not snapshot.ok:
            return
        depth = GaugeMetricFamily(
            "service_job_queue_depth",
            "Jobs waiting in the queue, by job type.",
            labels=["job_type"],
        )
        queued = dict.fromkeys(self.job_types, 0) | snapshot.queue_depth
        for job_type, count in sorted(queued.items()):
            depth.add_metric([job_type], count)
        yield depth
        workspaces = GaugeMetricFamily(
            "spawnpoint_workspaces",
            "Workspaces in each state (deleted ones aside).",
            labels=["state"],
        )
        for state, count in snapshot.workspaces.items():
            workspaces.add_metric([state], count)
        yield workspaces
        usage = GaugeMetricFamily(
            "service_job_quota_usage",
            "Share of a plan limit a tenant uses (1 = at the limit), by tenant slug and quota.",
            labels=["tenant", "quota"],
        )
        used = GaugeMetricFamily(
            "service_job_quota_used", "What a tenant uses of a quota.", labels=["tenant", "quota"]
        )
        limit = GaugeMetricFamily(
            "service_job_quota_limit", "A tenant's plan limit.", labels=["tenant", "quota"]
        )
        for row in snapshot.quotas:
            for quota, allowed in row.limits.items():
                value = row.used[quota]
                usage.add_metric([row.slug, quota], ratio(value, allowed))
                used.add_metric([row.slug, quota], value)
                limit.add_metric([row.slug, quota], allowed)
        yield usage
        yield used
        yield limit
        if snapshot.relay_lag is not None:
            yield GaugeMetricFamily(
                "spawnpoint_events_relay_lag_seconds",
                "Age of the oldest outbox event not yet published to RabbitMQ (0: none waits).",
                value=snapshot.relay_lag,
            )


class HealthService:
    """Checks dependencies, reports slow requests and reads the gauges /metrics exposes.

    `clock` (monotonic seconds) decides when the cached snapshot is stale.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        database: Database,
        policy: PolicyEngine,
        slow: SlowRequestTracker,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.database = database
        self.slow = slow
        self.clock = clock
        timeout = settings.health_check_timeout_seconds
        self.timeout = timeout
        self.probes: dict[str, Callable[[], Awaitable[object]]] = {
            "database": database_probe(database),
            "policy_engine": policy_probe(policy),
        }
        if settings.redis_url:
            self.probes["redis"] = redis_probe(settings.redis_url, timeout=timeout)
        if settings.rabbitmq_url:
            self.probes["rabbitmq"] = rabbitmq_probe(settings.rabbitmq_url)
        self._snapshot: Snapshot | None = None
        self._snapshot_at = -math.inf
        self._lock = asyncio.Lock()

    async def checks(self) -> dict[str, CheckResult]:
        names = list(self.probes)
        results = await asyncio.gather(
            *(timed(self.probes[name], within=self.timeout) for name in names)
        )
        return dict(zip(names, results, strict=True))

    async def _queue_depth(self) -> dict[str, int] | None:
        try:
            async with asyncio.timeout(self.timeout):
                async with self.database.transaction(write=False) as session:
                    return await HealthRepository(session).queue_depth()
        except Exception as exc:  # reported as unknown; the database check says why
            log.warning("queue depth unavailable: %s", type(exc).__name__)
            return None

    async def _relay_lag(self) -> float | None:
        if not self.settings.rabbitmq_url:
            return None
        try:
            async with asyncio.timeout(self.timeout):
                async with self.database.transaction(write=False) as session:
                    return await relay_lag(RelayRepository(session))
        except Exception as exc:  # reported as unknown; the database check says why
            log.warning("relay lag unavailable: %s", type(exc).__name__)
            return None

    async def report(self) -> tuple[bool, HealthRead]:
        """Whether the service is ready, and the document /healthz and /readyz answer."""
        checks, depth, lag = await asyncio.gather(
            self.checks(), self._queue_depth(), self._relay_lag()
        )
        failed = sorted(name for name, result in checks.items() if not result.ok)
        in_window = self.slow.in_window()
        overloaded = in_window > self.slow.max_in_window
        reasons = [f"the {name} check failed" for name in failed]
        if overloaded:
            reasons.append(
                f"{in_window} requests slower than {self.settings.slow_request_ms:g} ms in the "
                f"last {self.slow.window_seconds:g} s (more than {self.slow.max_in_window})"
            )
        document: dict[str, Any] = {
            "status": "ok" if not reasons else "degraded",
            "checks": {name: result.document() for name, result in checks.items()},
            "queue_depth": None if depth is None else sum(depth.values()),
            "queue_depth_by_job_type": depth,
            "slow_requests": [entry.document() for entry in self.slow.recent()],
            "slow_request_policy": {
                "threshold_ms": self.settings.slow_request_ms,
                "max_in_window": self.slow.max_in_window,
                "window_seconds": self.slow.window_seconds,
                "in_window": in_window,
            },
            "reasons": reasons,
            "relay_lag_seconds": lag,
            "time": utcnow(),
        }
        return not reasons, HealthRead.model_validate(document)

    async def snapshot(self, *, service_types: Collection[str] = ()) -> Snapshot:
        """The database-derived gauges, read at most once per METRICS_CACHE_SECONDS.

        `service_types`: the job types that count against job quotas (the registry's).
        """
        async with self._lock:
            if (
                self._snapshot is not None
                and self.clock() - self._snapshot_at < self.settings.metrics_cache_seconds
            ):
                return self._snapshot
            try:
                async with asyncio.timeout(self.timeout):
                    snapshot = await self._read(service_types)
            except Exception as exc:  # a scrape still answers, with the process's metrics
                log.warning("metrics snapshot unavailable: %s", type(exc).__name__)
                return Snapshot(ok=False)
            self._snapshot, self._snapshot_at = snapshot, self.clock()
            return snapshot

    async def _read(self, service_types: Collection[str]) -> Snapshot:
        now = utcnow()
        day_start = datetime.combine(now.date(), day_time.min, tzinfo=UTC)
        async with self.database.transaction(write=False) as session:
            repository = HealthRepository(session)
            return Snapshot(
                queue_depth=await repository.queue_depth(),
                workspaces=await repository.workspaces_by_state(),
                quotas=await repository.quota_usage(
                    day_start=day_start, service_types=service_types
                ),
                relay_lag=(
                    await relay_lag(RelayRepository(session), now=now)
                    if self.settings.rabbitmq_url
                    else None
                ),
            )


async def relay_lag(repository: RelayRepository, *, now: datetime | None = None) -> float:
    """Seconds since the oldest unpublished outbox event was written; 0 when none waits."""
    oldest = await repository.oldest_unpublished_at()
    if oldest is None:
        return 0.0
    return max(0.0, ((now or utcnow()) - oldest).total_seconds())
