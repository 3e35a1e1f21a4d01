"""Events in and out of RabbitMQ, each figure a ratio against a baseline of the same run.

    .venv/bin/python bench/events.py [--sections inbound,relay,status] [--rounds 3]
                                     [--backlog 20000] [--batch-size 500]
                                     [--backend postgres|sqlite]
                                     [--status-requests 2000] [--permits 200]
                                     [--inbound-count 500]

Sections (`--sections`, comma-separated; each a function that returns its table rows):

- **inbound** (`inbound_section`): `--inbound-count` `permit.approved` messages published to
  the permit queue's exchange until that many workspaces are running (dry-run driver), against
  as many `POST /api/spawn` to running, rounds alternating (bench/_permits_inbound.py's
  `measure_permits_inbound`, PostgreSQL). Measured twice: like for like, the consumer as its
  own process (`spawnpoint events consume`) beside one `spawnpoint worker`, as the API path is
  `spawnpoint serve --no-worker` beside the same worker (goal >= 0.8); and with the consumer
  inside that worker (its default with RABBITMQ_URL: one process consumes, spawns and
  provisions, against the API path's two), reported without a goal.
- **relay** (`relay_section`): the outbox relay draining a backlog of `--backlog` outbox rows
  (workspace lifecycle events: four per workspace, written in waves as spawns write them)
  to a durable queue through the topic exchange, from the first read to the last row marked
  published, against raw aio-pika publishing the same messages (same bodies, properties and
  routing keys) with publisher confirms, `--batch-size` at a time, every confirm awaited
  per batch. Both publish into the same vhost of this run's own (rabbitmqctl) and the same
  durable queue, purged between runs; rounds alternate raw, relay, relay, raw, ... and the
  ratio is taken per round (the machine's speed moves between rounds). Goal: >= 0.5.
- **status** (`status_section`): `GET /api/v1/workspaces/{permitId}/status` p50 and p99
  answered from Redis against the same server code answering from the database
  (bench/_status_read.py's `measure_status_reads`, PostgreSQL, Redis at `--redis-url`);
  reported as the latency ratio Redis / database, with no goal set.

Prints a Markdown table with the load average, writes bench/results/events.md. Exit status
0 when every goal is met, 1 when one is not, 2 on error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
from sqlalchemy import insert, update

from _common import markdown_table, median, scratch_database, scratch_vhost, write_result
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.events.outbox import workspace_event
from spawnpoint.events.relay import OutboxRelay
from spawnpoint.events.repository import PendingEvent, RelayRepository
from spawnpoint.kit.clock import utcnow
from spawnpoint.migrations import upgrade
from spawnpoint.models import OutboxEvent

EXCHANGE = "spawnpoint.events"
QUEUE = "bench.events"
GOAL_RELAY = 0.5
STATES = ("pending", "provisioning", "running", "stopping")
WAVE = 250  # workspaces whose events interleave, as a burst of spawns writes them


@dataclass
class Row:
    """One line of the table."""

    measurement: str
    baseline: str
    result: str
    ratio: float
    goal: float | None  # None: reported, no goal

    @property
    def met(self) -> bool:
        return self.goal is None or self.ratio >= self.goal


# --------------------------------------------------------------------------- the broker


@contextlib.asynccontextmanager
async def bound_queue(url: str) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """A durable queue bound to every event type: routed, persistent messages land here."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(QUEUE, durable=True)
        await queue.bind(exchange, "#")
        yield queue
    finally:
        await connection.close()


async def purge(queue: aio_pika.abc.AbstractQueue, expected: int) -> None:
    declared = await queue.declare()
    count = declared.message_count or 0
    if count != expected:
        raise RuntimeError(f"the queue holds {count} messages, expected {expected}")
    await queue.purge()


# --------------------------------------------------------------------------- the relay section


def backlog_rows(count: int) -> list[dict[str, Any]]:
    """`count` workspace events: waves of WAVE workspaces, each wave's events state by state."""
    rows: list[dict[str, Any]] = []
    tenant = uuid.uuid4()
    at = utcnow()
    while len(rows) < count:
        wave = [uuid.uuid4() for _ in range(WAVE)]
        previous: str | None = None
        for state in STATES:
            for workspace in wave:
                if len(rows) == count:
                    return rows
                rows.append(
                    workspace_event(
                        tenant_id=tenant,
                        workspace_id=workspace,
                        external_ref=f"permit-{workspace.hex[:8]}",
                        from_state=previous,
                        to_state=state,
                        actor="system",
                        actor_id=None,
                        reason="bench",
                        at=at,
                    )
                )
            previous = state
    return rows


async def write_backlog(database: Database, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), 1000):
        async with database.transaction(write=True) as session:
            await session.execute(insert(OutboxEvent), rows[start : start + 1000])


async def unpublish_all(database: Database) -> None:
    async with database.transaction(write=True) as session:
        await session.execute(update(OutboxEvent).values(published_at=None, attempts=0))


async def read_all(database: Database, count: int) -> list[PendingEvent]:
    async with database.transaction(write=False) as session:
        events = await RelayRepository(session).unpublished(limit=count)
    if len(events) != count:
        raise RuntimeError(f"read {len(events)} unpublished events, expected {count}")
    return events


async def raw_publish(url: str, events: list[PendingEvent], batch_size: int) -> float:
    """Seconds to publish `events` with plain aio-pika: confirms, a batch at a time."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        started = time.perf_counter()
        for start in range(0, len(events), batch_size):
            batch = events[start : start + batch_size]
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            event.body,
                            message_id=str(event.id),
                            content_type="application/json",
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                            timestamp=event.created_at,
                            type=event.type,
                            headers={"key": event.key, "tenant_id": str(event.tenant_id)},
                        ),
                        routing_key=event.type,
                        mandatory=True,
                    )
                    for event in batch
                )
            )
        return time.perf_counter() - started
    finally:
        await connection.close()


async def relay_drain(
    database: Database, settings: Settings, url: str, count: int, batch_size: int
) -> float:
    """Seconds for the relay's own loop (`step`) to publish and mark the whole backlog."""
    relay = OutboxRelay(database, settings, url=url, batch_size=batch_size, poll_interval=0.5)
    try:
        await relay.contend()
        await relay.connect()
        started = time.perf_counter()
        while await relay.step() == 0:
            pass
        seconds = time.perf_counter() - started
        async with database.transaction(write=False) as session:
            left = await RelayRepository(session).oldest_unpublished_at()
        if left is not None or not relay.connected:
            raise RuntimeError("the relay stopped before the backlog was published")
        return seconds
    finally:
        await relay.disconnect()
        await relay.release()


@contextlib.contextmanager
def bench_database(backend: str) -> Iterator[Settings]:
    with contextlib.ExitStack() as stack:
        data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="events-bench-")))
        if backend == "sqlite":
            url = f"sqlite+aiosqlite:///{data_dir / 'events.db'}"
        else:
            scratch = stack.enter_context(scratch_database("spawnpoint_bench_events"))
            url = scratch.url
        settings = Settings(
            _env_file=None, database_url=url, data_dir=data_dir, environment="development"
        )
        upgrade(settings)
        yield settings


def relay_section(
    *, backlog: int, rounds: int, batch_size: int, backend: str, log: Callable[[str], None]
) -> list[Row]:
    with bench_database(backend) as settings, scratch_vhost() as url:
        raw_rates, relay_rates = asyncio.run(
            relay_rounds(
                settings, url, backlog=backlog, rounds=rounds, batch_size=batch_size, log=log
            )
        )
    ratios = [relay / raw for relay, raw in zip(relay_rates, raw_rates, strict=True)]
    return [
        Row(
            measurement=f"outbox relay, backlog of {backlog:,} events, batches of {batch_size}, "
            f"{backend} (median of {rounds} rounds; per-round ratios "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + ")",
            baseline=f"raw aio-pika with confirms: {median(raw_rates):,.0f} events/s",
            result=f"relay, read + publish + mark: {median(relay_rates):,.0f} events/s",
            ratio=median(ratios),
            goal=GOAL_RELAY,
        )
    ]


async def relay_rounds(
    settings: Settings,
    url: str,
    *,
    backlog: int,
    rounds: int,
    batch_size: int,
    log: Callable[[str], None],
) -> tuple[list[float], list[float]]:
    """Events per second of raw publishing and of the relay, one of each per round."""
    database = Database(settings.sqlalchemy_url, pool_size=4)
    raw_rates: list[float] = []
    relay_rates: list[float] = []
    try:
        await write_backlog(database, backlog_rows(backlog))
        events = await read_all(database, backlog)
        async with bound_queue(url) as queue:
            for n in range(rounds):
                order = ("raw", "relay") if n % 2 == 0 else ("relay", "raw")
                rates: dict[str, float] = {}
                for what in order:
                    if what == "raw":
                        seconds = await raw_publish(url, events, batch_size)
                    else:
                        await unpublish_all(database)
                        seconds = await relay_drain(database, settings, url, backlog, batch_size)
                    await purge(queue, backlog)
                    rates[what] = backlog / seconds
                    log(f"round {n + 1}: {what} {rates[what]:,.0f} events/s")
                raw_rates.append(rates["raw"])
                relay_rates.append(rates["relay"])
    finally:
        await database.dispose()
    return raw_rates, relay_rates


# --------------------------------------------------------------------------- the status section


def status_section(
    *, redis_url: str, requests: int, rounds: int, permits: int, log: Callable[[str], None]
) -> list[Row]:
    from _status_read import measure_status_reads

    log(f"status: {rounds} rounds of {requests} GETs over {permits} permits")
    summary = measure_status_reads(
        redis_url=redis_url, requests=requests, rounds=rounds, permits=permits
    ).summary()
    return [
        Row(
            measurement=f"GET /api/v1/workspaces/{{permitId}}/status, {requests} sequential GETs "
            f"over {permits} permits, PostgreSQL (median of {rounds} rounds; "
            f"{summary['hits']} reads from Redis); ratio = Redis / database p50 "
            f"(p99: {summary['p99_ratio']:.2f})",
            baseline=f"from the database: p50 {summary['database_p50_ms']:.2f} ms, "
            f"p99 {summary['database_p99_ms']:.2f} ms",
            result=f"from Redis: p50 {summary['redis_p50_ms']:.2f} ms, "
            f"p99 {summary['redis_p99_ms']:.2f} ms",
            ratio=summary["p50_ratio"],
            goal=None,
        )
    ]


# --------------------------------------------------------------------------- the inbound section


def inbound_section(*, count: int, rounds: int, log: Callable[[str], None]) -> list[Row]:
    from _permits_inbound import GOAL, measure_permits_inbound

    rows = []
    for consumer, what, goal in (
        ("process", "`spawnpoint events consume` beside a worker, as the API beside it", GOAL),
        ("worker", "the consumer inside the worker (one process against the API path's two)", None),
    ):
        log(f"inbound ({consumer}): {rounds} rounds of {count} permit.approved / POST /api/spawn")
        result = measure_permits_inbound(count=count, rounds=rounds, consumer=consumer)
        ratios = ", ".join(f"{r:.2f}" for r in result.ratios)
        rows.append(
            Row(
                measurement=f"{count} permit.approved messages to running workspaces, dry-run, "
                f"PostgreSQL, {what} (median of {rounds} rounds; per round {ratios})",
                baseline=f"POST /api/spawn to running: {median(result.api_rates):,.1f}/s",
                result=f"permit events to running: {median(result.permit_rates):,.1f}/s",
                ratio=result.ratio,
                goal=goal,
            )
        )
    return rows


# --------------------------------------------------------------------------- the report


def report(rows: list[Row]) -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    table = markdown_table(
        ["measurement", "baseline (same run)", "spawnpoint", "ratio", "goal"],
        [
            [
                r.measurement,
                r.baseline,
                r.result,
                f"**{r.ratio:.2f}**",
                goal_cell(r),
            ]
            for r in rows
        ],
    )
    return f"{table}\n\nLoad average at the end (1, 5, 15 min): {load}; {os.cpu_count()} CPUs.\n"


def goal_cell(row: Row) -> str:
    if row.goal is None:
        return "(none)"
    return f">= {row.goal} " + ("✔" if row.met else "✘")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sections",
        default="inbound,relay,status",
        help="comma-separated: inbound, relay, status",
    )
    parser.add_argument("--inbound-count", type=int, default=500)
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--backend", choices=("postgres", "sqlite"), default="postgres")
    parser.add_argument("--status-requests", type=int, default=2000)
    parser.add_argument("--permits", type=int, default=200)
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("SPAWNPOINT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    args = parser.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - {"inbound", "relay", "status"}
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")

    def log(line: str) -> None:
        print(line, flush=True)

    rows: list[Row] = []
    try:
        if "inbound" in sections:
            rows += inbound_section(count=args.inbound_count, rounds=args.rounds, log=log)
        if "relay" in sections:
            rows += relay_section(
                backlog=args.backlog,
                rounds=args.rounds,
                batch_size=args.batch_size,
                backend=args.backend,
                log=log,
            )
        if "status" in sections:
            rows += status_section(
                redis_url=args.redis_url,
                requests=args.status_requests,
                rounds=args.rounds,
                permits=args.permits,
                log=log,
            )
    except Exception as exc:
        print(f"bench/events.py failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    text = report(rows)
    print(text)
    write_result("events.md", text)
    return 0 if all(r.met for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
