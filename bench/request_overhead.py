"""What the request middleware (kit/telemetry.py) adds to each request, measured in process.

    .venv/bin/python bench/request_overhead.py [--requests 50000] [--rounds 3]

A trivial ASGI app answers the same request bare and wrapped by `RequestTelemetry` (request
id, metrics, slow-request tracking), without and with the JSON access log (rendered into a
discarding stream), alternating so drift cancels out. Prints the median microseconds per
request of each and the middleware's cost; no server, no database.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from spawnpoint.config import Settings
from spawnpoint.health.slow import SlowRequestTracker
from spawnpoint.kit.telemetry import RequestTelemetry
from spawnpoint.logs import configure_logging

App = Callable[[dict[str, Any], Any, Any], Awaitable[None]]
HEADERS = [
    (b"host", b"spawnpoint.test"),
    (b"authorization", b"Bearer x"),
    (b"accept", b"application/json"),
    (b"x-request-id", b"bench-1"),
]


async def bare(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"a", b"b")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b""}


async def discard(message: Any) -> None:
    return None


async def per_request(app: App, requests: int) -> float:
    started = time.perf_counter()
    for _ in range(requests):
        scope = {"type": "http", "method": "GET", "path": "/api/templates", "headers": HEADERS}
        await app(scope, receive, discard)
    return (time.perf_counter() - started) / requests * 1e6


def wrapped(*, log_requests: bool) -> RequestTelemetry:
    slow = SlowRequestTracker(threshold_ms=500, max_in_window=5, window_seconds=60)
    return RequestTelemetry(bare, slow=slow, log_requests=log_requests, upload_bytes=1 << 20)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    settings = Settings(_env_file=None, jwt_secret="x" * 40)  # type: ignore[call-arg]
    configure_logging(settings, stream=io.StringIO())
    sink = logging.getLogger().handlers[0]
    assert isinstance(sink, logging.StreamHandler)
    runs: dict[str, list[float]] = {"bare": [], "middleware": [], "middleware + access log": []}
    quiet, logged = wrapped(log_requests=False), wrapped(log_requests=True)
    for _ in range(args.rounds):
        runs["bare"].append(await per_request(bare, args.requests))
        runs["middleware"].append(await per_request(quiet, args.requests))
        sink.setStream(io.StringIO())
        runs["middleware + access log"].append(await per_request(logged, args.requests // 5))
    base = statistics.median(runs["bare"])
    print("| variant | µs per request | added by the middleware |")
    print("| --- | ---: | ---: |")
    for name, values in runs.items():
        value = statistics.median(values)
        print(f"| {name} | {value:.2f} | {value - base:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
