"""`GET /api/v1/workspaces/{permitId}/status` latency: answered from Redis vs from the database.

    .venv/bin/python bench/_status_read.py [--rounds 3] [--requests 2000] [--permits 200]

Two `spawnpoint serve` processes (no in-process worker) on one scratch PostgreSQL database:
one with REDIS_URL (the permit status cache, under a key prefix of this run's own, deleted
after), one without (every read is a database read). `--permits` workspaces with a permit id
are spawned through the cached server, so their documents are written through to Redis; both
servers must then answer the same bytes for each permit. Each round sends `--requests`
sequential GETs over one keep-alive connection to each server in turn (A B / B A ...),
cycling through the permits, and records each request's latency; the table shows the medians
over rounds of each round's p50 and p99, and the cached server's hit count from /metrics (a
run whose reads did not come from Redis is an error).

`measure_status_reads(...)` is the same measurement for another script (bench/events.py);
`main` prints the table and writes bench/results/status_read.md. Exit status 0, 2 on error.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
import redis

from _common import (
    LOCALHOST,
    Server,
    free_port,
    markdown_table,
    median,
    migrated_deployment,
    percentile,
    raise_on_sigterm,
    server_process,
    venv_command,
    write_result,
)

JWT_SECRET = "bench-status-read-" + "x" * 40
DEV_TOKEN = "bench-status-read-dev-token"
AUTH = {"Authorization": f"Bearer {DEV_TOKEN}"}
DEMO_PLAN_ID = "00000000-0000-0000-0000-000000000010"
DEMO_TEMPLATE_ID = "00000000-0000-0000-0000-000000000100"
POOL_SIZE = 10
WARMUP_REQUESTS = 200
HITS = re.compile(rb'^spawnpoint_status_cache_reads_total\{outcome="hit"\} ([0-9.e+]+)$', re.M)


@dataclass
class StatusReadResult:
    """Per-round p50 and p99 (ms) of each server, and what the cached one served from Redis."""

    requests: int
    permits: int
    redis_p50: list[float] = field(default_factory=list)
    redis_p99: list[float] = field(default_factory=list)
    database_p50: list[float] = field(default_factory=list)
    database_p99: list[float] = field(default_factory=list)
    hits: int = 0
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def summary(self) -> dict[str, Any]:
        redis_p50, database_p50 = median(self.redis_p50), median(self.database_p50)
        redis_p99, database_p99 = median(self.redis_p99), median(self.database_p99)
        return {
            "redis_p50_ms": round(redis_p50, 3),
            "redis_p99_ms": round(redis_p99, 3),
            "database_p50_ms": round(database_p50, 3),
            "database_p99_ms": round(database_p99, 3),
            "p50_ratio": round(redis_p50 / database_p50, 3),
            "p99_ratio": round(redis_p99 / database_p99, 3),
            "hits": self.hits,
            "load_average": self.load_average,
        }

    def table(self) -> str:
        s = self.summary()
        return markdown_table(
            ["/status answered from", "p50 ms", "p99 ms"],
            [
                ["Redis (REDIS_URL)", f"{s['redis_p50_ms']:.3f}", f"{s['redis_p99_ms']:.3f}"],
                ["database", f"{s['database_p50_ms']:.3f}", f"{s['database_p99_ms']:.3f}"],
                ["Redis / database", f"{s['p50_ratio']:.2f}", f"{s['p99_ratio']:.2f}"],
            ],
        )


def _request(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    headers = dict(AUTH)
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, response.read()


def _spawn_permits(server: Server, count: int) -> list[str]:
    permits = [f"bench-permit-{i}-{uuid.uuid4().hex[:8]}" for i in range(count)]
    conn = http.client.HTTPConnection(LOCALHOST, server.port, timeout=30)
    try:
        for permit in permits:
            body = f'{{"template_id": "{DEMO_TEMPLATE_ID}", "external_ref": "{permit}"}}'.encode()
            status, answer = _request(conn, "POST", "/api/spawn", body)
            if status != 202:
                raise RuntimeError(f"spawn answered {status}: {answer[:500]!r}")
    finally:
        conn.close()
    return permits


def _latencies(server: Server, permits: list[str], requests: int) -> list[float]:
    """Sequential GETs over one keep-alive connection; each one's latency in ms."""
    conn = http.client.HTTPConnection(LOCALHOST, server.port, timeout=30)
    try:
        for i in range(WARMUP_REQUESTS):
            _request(conn, "GET", f"/api/v1/workspaces/{permits[i % len(permits)]}/status")
        measured = []
        for i in range(requests):
            path = f"/api/v1/workspaces/{permits[i % len(permits)]}/status"
            started = time.perf_counter()
            status, body = _request(conn, "GET", path)
            measured.append((time.perf_counter() - started) * 1000)
            if status != 200:
                raise RuntimeError(f"{server.name} answered {status} for {path}: {body[:300]!r}")
        return measured
    finally:
        conn.close()


def _hits(server: Server) -> int:
    conn = http.client.HTTPConnection(LOCALHOST, server.port, timeout=30)
    try:
        _, body = _request(conn, "GET", "/metrics")
    finally:
        conn.close()
    found = HITS.search(body)
    return int(float(found.group(1))) if found else 0


def _check_same_answers(cached: Server, plain: Server, permits: list[str]) -> None:
    for permit in permits[:20]:
        answers = []
        for server in (cached, plain):
            conn = http.client.HTTPConnection(LOCALHOST, server.port, timeout=30)
            try:
                answers.append(_request(conn, "GET", f"/api/v1/workspaces/{permit}/status"))
            finally:
                conn.close()
        if answers[0] != answers[1]:
            raise RuntimeError(f"the servers disagree on {permit}: {answers}")


def measure_status_reads(
    *, redis_url: str, requests: int = 2000, rounds: int = 3, permits: int = 200
) -> StatusReadResult:
    """Spawn `permits` permit workspaces, then time /status from Redis and from the database.

    Needs PostgreSQL (as bench/_common.py finds it) and Redis at `redis_url`.
    """
    spawnpoint = venv_command("spawnpoint")
    prefix = f"spawnpoint-bench-status-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(redis_url)
    client.ping()
    result = StatusReadResult(requests=requests, permits=permits)
    with contextlib.ExitStack() as stack:

        def drop_keys() -> None:
            keys = list(client.scan_iter(match=f"{prefix}:*"))
            if keys:
                client.delete(*keys)
            client.close()

        stack.callback(drop_keys)
        deployment = migrated_deployment(
            stack,
            "status-read",
            spawnpoint,
            jwt_secret=JWT_SECRET,
            pool_size=POOL_SIZE,
            DEV_BYPASS_TOKEN=DEV_TOKEN,
            RATE_LIMIT_PER_MINUTE="0",
            RATE_LIMIT_TENANT_PER_MINUTE="0",
            ACCESS_LOG="false",
            REDIS_URL="",
            WPS_REDIS__URL="",
        )
        with psycopg.connect(deployment.db.url, autocommit=True) as conn:
            conn.execute(
                "UPDATE plans SET max_workspaces = 1000000, max_cpu = 1000000, "
                "max_memory_mb = 1000000000, max_storage_gb = 1000000000, "
                "max_jobs_per_day = 1000000, max_concurrent_jobs = 1000000 WHERE id = %s",
                (DEMO_PLAN_ID,),
            )
        servers = []
        for name, extra in (
            ("cached", {"REDIS_URL": redis_url, "STATUS_CACHE_PREFIX": prefix}),
            ("database", {}),
        ):
            port = free_port()
            servers.append(
                stack.enter_context(
                    server_process(
                        name,
                        [*spawnpoint, "serve", "--no-migrate", "--no-worker", "--port", str(port)],
                        env={**deployment.env, **extra, "PORT": str(port)},
                        port=port,
                        cwd=deployment.workdir,
                        ready_path="/health",
                    )
                )
            )
        cached, plain = servers
        names = _spawn_permits(cached, permits)
        _check_same_answers(cached, plain, names)
        hits_before = _hits(cached)
        for round_number in range(rounds):
            order = (cached, plain) if round_number % 2 == 0 else (plain, cached)
            for server in order:
                measured = _latencies(server, names, requests)
                p50, p99 = percentile(measured, 50), percentile(measured, 99)
                if server is cached:
                    result.redis_p50.append(p50)
                    result.redis_p99.append(p99)
                else:
                    result.database_p50.append(p50)
                    result.database_p99.append(p99)
                print(f"round {round_number + 1} {server.name}: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
        result.hits = _hits(cached) - hits_before
        expected = rounds * (requests + WARMUP_REQUESTS)
        if result.hits < expected:
            raise RuntimeError(f"only {result.hits} of {expected} reads came from Redis")
        result.load_average = os.getloadavg()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="measured GETs per run")
    parser.add_argument("--permits", type=int, default=200, help="permit workspaces spawned")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("SPAWNPOINT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    args = parser.parse_args()
    raise_on_sigterm(deadline=600)
    try:
        result = measure_status_reads(
            redis_url=args.redis_url,
            requests=args.requests,
            rounds=args.rounds,
            permits=args.permits,
        )
    except (RuntimeError, OSError, psycopg.Error, redis.RedisError) as exc:
        print(f"status read benchmark failed: {exc}", file=sys.stderr)
        return 2
    load = ", ".join(f"{v:.2f}" for v in result.load_average)
    text = (
        f"{result.table()}\n\n{args.rounds} rounds of {args.requests} sequential GETs over "
        f"{args.permits} permits; {result.hits} reads from Redis; load average {load}\n"
    )
    print(text)
    write_result("status_read.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
