"""Dependency checks for /healthz and /readyz: each one timed, bounded and never raising."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from spawnpoint.db import Database
from spawnpoint.policy.engine import PolicyEngine

# An input no policy needs to allow: the engine only has to answer.
PROBE_INPUT: dict[str, Any] = {"action": "health-check"}


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    latency_ms: float
    error: str | None = None

    def document(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "status": "ok" if self.ok else "failed",
            "latency_ms": round(self.latency_ms, 3),
        }
        if self.error is not None:
            found["error"] = self.error
        return found


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


async def timed(probe: Callable[[], Awaitable[object]], *, within: float) -> CheckResult:
    """Run `probe` for at most `within` seconds; its failure is a result, not an exception."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(within):
            await probe()
    except TimeoutError:
        elapsed = (time.perf_counter() - started) * 1000
        return CheckResult(False, elapsed, f"no answer within {within:g} s")
    except Exception as exc:  # any failure of the dependency is "not ok"
        return CheckResult(False, (time.perf_counter() - started) * 1000, _describe(exc))
    return CheckResult(True, (time.perf_counter() - started) * 1000)


def database_probe(database: Database) -> Callable[[], Awaitable[object]]:
    return database.ping


def policy_probe(policy: PolicyEngine) -> Callable[[], Awaitable[object]]:
    async def probe() -> None:
        # Any decision, allow or deny, means the engine answers; PolicyUnavailable does not.
        await policy.evaluate(dict(PROBE_INPUT))

    return probe


def redis_probe(url: str, *, timeout: float) -> Callable[[], Awaitable[object]]:
    async def probe() -> None:
        from redis.asyncio import Redis

        client = Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            if not await client.ping():
                raise RuntimeError("PING was not answered with PONG")
        finally:
            await client.aclose()

    return probe


def rabbitmq_probe(url: str) -> Callable[[], Awaitable[object]]:
    async def probe() -> None:
        import aiormq

        # A full AMQP handshake: the broker is up and accepts these credentials. (aiormq is
        # aio-pika's protocol layer; a failed aio-pika connect leaves an unawaited close.)
        connection = await aiormq.connect(url)
        await connection.close()

    return probe
