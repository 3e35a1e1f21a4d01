"""Prometheus metrics shared by the API and worker processes.

Defined once, at import, in the default registry, which `GET /metrics` exposes. When
`PROMETHEUS_MULTIPROC_DIR` is set (several API or worker processes on one host), every
process writes its values to files there and `/metrics` adds up the files of all of them
(`exposition`); the variable must be set before the process starts, and the directory
emptied when the deployment restarts, as prometheus-client requires.

Labels carry bounded values only: methods, route templates (never raw paths), status codes,
job types (the registered handlers), outcomes and reason classes. Gauges read from the
database at scrape time (`health/service.py`) are added by the scraping process alone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "exposition"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"

SWEEP_ROW_ERRORS = Counter(
    "spawnpoint_sweep_row_errors",
    "Rows a periodic sweep could not process: logged, skipped, and tried again next tick.",
    ["task"],
)

UNAUTHENTICATED_WRITES = Counter(
    "spawnpoint_unauthenticated_writes",
    "Mutating API requests refused before the caller was known (no tenant chain to log to).",
)

HTTP_REQUESTS = Counter(
    "spawnpoint_http_requests",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)

HTTP_DURATION = Histogram(
    "spawnpoint_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by method, route template "
    "and status code.",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)

JOB_DURATION = Histogram(
    "service_job_duration_ms",
    "How long one job attempt's handler ran, in milliseconds, by job type and outcome "
    "(succeeded, retry, failed, cancelled, released).",
    ["job_type", "outcome"],
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000),
)

JOB_RETRIES = Counter(
    "service_job_retries",
    "Job attempts that failed and were put back in the queue for another try, by job type.",
    ["job_type"],
)

SLOW_REQUESTS = Counter(
    "spawnpoint_slow_requests",
    "Requests that took longer than SLOW_REQUEST_MS to start their response, by method and "
    "route template (what /healthz lists and /readyz counts).",
    ["method", "route"],
)

SPAWN_REFUSALS = Counter(
    "spawnpoint_spawn_refusals",
    "Spawns refused, by reason class: quota (a plan limit), policy (the policy denied), "
    "policy_unavailable (the engine could not answer).",
    ["reason"],
)

RATE_LIMIT_FALLBACKS = Counter(
    "spawnpoint_rate_limit_fallbacks",
    "Times Redis failed or was too slow to count rate limits or login attempts, after which "
    "this process counted in its own memory for a second.",
)

EVENTS_PUBLISHED = Counter(
    "spawnpoint_events_published",
    "Outbox events the relay published and the broker confirmed, by outcome: routed, or "
    "unroutable (returned: no queue bound for the type; marked, not retried).",
    ["outcome"],
)

EVENTS_PUBLISH_FAILURES = Counter(
    "spawnpoint_events_publish_failures",
    "Outbox publications that failed and will be retried, by reason: refused (the broker "
    "nacked the event) or connection (the connection broke or a confirm never came).",
    ["reason"],
)

# (method, route, status) -> the two children; label lookups are the costly part of an
# observation, and the key space is bounded by the route table.
_request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request and its duration."""
    if method not in KNOWN_METHODS:
        method = "other"  # before the cache key: a client may send any token as a method
    key = (method, route, status)
    children = _request_children.get(key)
    if children is None:
        code = str(status) if 100 <= status <= 599 else "other"
        children = (
            HTTP_REQUESTS.labels(method, route, code),
            HTTP_DURATION.labels(method, route, code),
        )
        _request_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


def process_registry() -> CollectorRegistry:
    """This process's metrics (every process's, in multiprocess mode), as one registry."""
    directory = multiprocess_dir()
    if directory is None:
        return REGISTRY
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def serve_metrics(port: int, host: str) -> None:
    """Serve `process_registry()` over HTTP on `host:port`, from a daemon thread.

    For `spawnpoint worker --metrics-port`: a worker on a host without an API process (or
    without PROMETHEUS_MULTIPROC_DIR) exposes its own job metrics.
    """
    start_http_server(port, addr=host, registry=process_registry())


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def exposition(extra: Iterable[Collector] = ()) -> bytes:
    """The text format of this process's metrics (of every process's, in multiprocess mode),
    followed by `extra` collectors."""
    directory = multiprocess_dir()
    if directory is None and not extra:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry(auto_describe=False)
    if directory is not None:
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Forward(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


class _Forward(Collector):
    """The default registry's metrics, as one collector of another registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()
