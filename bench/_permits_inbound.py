"""Inbound permit events to running workspaces, against POST /api/spawn in the same run.

    .venv/bin/python bench/_permits_inbound.py [--count 500] [--rounds 3] [--clients 16]
                                               [--concurrency 16] [--consumer worker|process]

One scratch PostgreSQL database and one RabbitMQ vhost of this run's own (rabbitmqctl), both
dropped at the end; `spawnpoint serve --no-worker` for the API and one `spawnpoint worker`
with RABBITMQ_URL set, so the same process runs the permit consumer, the job worker (the
dry-run driver: WPS_DISABLE_PULUMI=true) and the outbox relay for both measurements
(`--consumer process`: the consumer runs as `spawnpoint events consume` beside a worker
without RABBITMQ_URL instead, as the API runs beside it). Each round, in alternating order:

- **api**: `--count` POST /api/spawn (a dry-run template, an `external_ref` each) from
  `--clients` keep-alive connections;
- **permits**: `--count` `permit.approved` messages for the same template published to the
  permits exchange with publisher confirms (all in flight at once);

each timed from the first request (or publication) until the database holds `--count`
running workspaces of that round's prefix (polled every 20 ms). The ratio is permits/s over
spawns/s, per round (the machine's speed moves between rounds); goal >= 0.8.

`measure_permits_inbound(...)` is the measurement for another script (bench/events.py);
`main` prints the table and writes bench/results/permits_inbound.md. Exit status 0 when the
goal is met, 1 when it is not, 2 on error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aio_pika
import psycopg

from _common import (
    LOCALHOST,
    Server,
    background_process,
    free_port,
    markdown_table,
    median,
    migrated_deployment,
    raise_on_sigterm,
    scratch_vhost,
    server_process,
    venv_command,
    write_result,
)

JWT_SECRET = "bench-permits-inbound-" + "x" * 40
DEV_TOKEN = "bench-permits-inbound-dev-token"
HEADERS = {"Authorization": f"Bearer {DEV_TOKEN}", "Content-Type": "application/json"}
DEMO_PLAN_ID = "00000000-0000-0000-0000-000000000010"
DEMO_TENANT_ID = "00000000-0000-0000-0000-000000000001"
EXCHANGE = "spe.permits"
QUEUE = "spe.workspace.events"
GOAL = 0.8
DRAIN_SECONDS = 120.0


@dataclass
class InboundResult:
    count: int
    api_rates: list[float] = field(default_factory=list)
    permit_rates: list[float] = field(default_factory=list)
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def ratios(self) -> list[float]:
        return [p / a for p, a in zip(self.permit_rates, self.api_rates, strict=True)]

    @property
    def ratio(self) -> float:
        return median(self.ratios)

    @property
    def met(self) -> bool:
        return self.ratio >= GOAL

    def table(self) -> str:
        ratios = ", ".join(f"{r:.2f}" for r in self.ratios)
        return markdown_table(
            ["measurement", "baseline (same run)", "spawnpoint", "ratio", "goal"],
            [
                [
                    f"{self.count} permit.approved to running, dry-run (median of "
                    f"{len(self.ratios)} rounds; per-round ratios {ratios})",
                    f"POST /api/spawn to running: {median(self.api_rates):,.1f} workspaces/s",
                    f"permit events to running: {median(self.permit_rates):,.1f} workspaces/s",
                    f"**{self.ratio:.2f}**",
                    f">= {GOAL} " + ("✔" if self.met else "✘"),
                ]
            ],
        )


def _post(conn: http.client.HTTPConnection, path: str, body: dict[str, object]) -> bytes:
    conn.request("POST", path, body=json.dumps(body).encode(), headers=HEADERS)
    response = conn.getresponse()
    answer = response.read()
    if response.status not in (201, 202):
        raise RuntimeError(f"POST {path} answered {response.status}: {answer[:300]!r}")
    return answer


def _make_template(server: Server) -> str:
    conn = http.client.HTTPConnection(LOCALHOST, server.port, timeout=30)
    try:
        answer = _post(
            conn,
            "/api/templates",
            {
                "name": f"bench-dry-{uuid.uuid4().hex[:6]}",
                "provisioner": "dry-run",
                "spec": {"image": "bench:1", "cpu": 0.01, "memory_mb": 16, "storage_gb": 0},
            },
        )
    finally:
        conn.close()
    return str(json.loads(answer)["id"])


def _wait_running(db_url: str, prefix: str, count: int) -> float:
    """Poll until `count` workspaces of `prefix` run; the monotonic time they all did."""
    deadline = time.monotonic() + DRAIN_SECONDS
    with psycopg.connect(db_url, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM workspaces WHERE external_ref LIKE %s AND state = 'running'",
                (prefix + "%",),
            ).fetchone()
            now = time.monotonic()
            if row is not None and int(row[0]) >= count:
                return now
            if now > deadline:
                raise RuntimeError(f"only {row[0] if row else 0} of {count} {prefix} ran")
            time.sleep(0.02)


def _api_round(
    server: Server, db_url: str, template: str, prefix: str, count: int, clients: int
) -> float:
    """Workspaces per second from the first POST /api/spawn to the last one running."""
    refs = [f"{prefix}{i}" for i in range(count)]
    shares = [refs[i::clients] for i in range(clients)]

    def send(share: list[str]) -> None:
        conn = http.client.HTTPConnection(LOCALHOST, server.port, timeout=60)
        try:
            for ref in share:
                _post(conn, "/api/spawn", {"template_id": template, "external_ref": ref})
        finally:
            conn.close()

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        for done in [pool.submit(send, share) for share in shares]:
            done.result()
    finished = _wait_running(db_url, prefix, count)
    return count / (finished - started)


async def _publish_all(url: str, template: str, prefix: str, count: int) -> float:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(EXCHANGE)
        occurred = datetime.now(UTC).isoformat()
        bodies = [
            json.dumps(
                {
                    "type": "permit.approved",
                    "permit_id": f"{prefix}{i}",
                    "tenant_id": DEMO_TENANT_ID,
                    "template_id": template,
                    "occurred_at": occurred,
                }
            ).encode()
            for i in range(count)
        ]
        started = time.monotonic()
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        body,
                        message_id=uuid.uuid4().hex,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key="permit.approved",
                )
                for body in bodies
            )
        )
        return started
    finally:
        await connection.close()


def _permits_round(url: str, db_url: str, template: str, prefix: str, count: int) -> float:
    """Workspaces per second from the first publication to the last one running."""
    started = asyncio.run(_publish_all(url, template, prefix, count))
    finished = _wait_running(db_url, prefix, count)
    return count / (finished - started)


async def _consumer_ready(url: str, within: float = 60.0) -> None:
    """Wait until the worker's consumer has declared the exchange and the queue."""
    deadline = time.monotonic() + within
    connection = await aio_pika.connect(url)
    try:
        while True:
            channel = await connection.channel()
            try:
                await channel.declare_queue(QUEUE, passive=True)
                await channel.get_exchange(EXCHANGE, ensure=True)
                return
            except aio_pika.exceptions.ChannelClosed:
                if time.monotonic() > deadline:
                    raise RuntimeError("the permit consumer never declared its queue") from None
                await asyncio.sleep(0.2)
    finally:
        await connection.close()


def measure_permits_inbound(
    *,
    count: int = 500,
    rounds: int = 3,
    clients: int = 16,
    concurrency: int = 16,
    consumer: str = "worker",
) -> InboundResult:
    """Run the measurement (see the module's docstring); needs PostgreSQL and RabbitMQ."""
    spawnpoint = venv_command("spawnpoint")
    result = InboundResult(count=count)
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(scratch_vhost("spawnpoint-bench-permits"))
        deployment = migrated_deployment(
            stack,
            "permits-inbound",
            spawnpoint,
            jwt_secret=JWT_SECRET,
            pool_size=20,
            DEV_BYPASS_TOKEN=DEV_TOKEN,
            RATE_LIMIT_PER_MINUTE="0",
            RATE_LIMIT_TENANT_PER_MINUTE="0",
            ACCESS_LOG="false",
            WPS_DISABLE_PULUMI="true",
            REDIS_URL="",
            WPS_REDIS__URL="",
            RABBITMQ_URL="",
            WPS_RABBITMQ__URL="",
        )
        db_url = deployment.db.url
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "UPDATE plans SET max_workspaces = 10000000, max_cpu = 10000000, "
                "max_memory_mb = 2000000000, max_storage_gb = 2000000000, "
                "max_jobs_per_day = 100000000, max_concurrent_jobs = 10000000 WHERE id = %s",
                (DEMO_PLAN_ID,),
            )
        port = free_port()
        server = stack.enter_context(
            server_process(
                "api",
                [*spawnpoint, "serve", "--no-migrate", "--no-worker", "--port", str(port)],
                env={**deployment.env, "PORT": str(port)},
                port=port,
                cwd=deployment.workdir,
                ready_path="/health",
            )
        )
        # `process`: the consumer in a process of its own, as the API is in the other mode;
        # `worker`: inside the job worker's process (every worker consumes with RABBITMQ_URL).
        inside = consumer == "worker"
        worker_argv = [*spawnpoint, "worker", "--concurrency", str(concurrency)]
        worker = stack.enter_context(
            background_process(
                "worker",
                [*worker_argv, "--poll-interval", "0.2"],
                env={**deployment.env, "RABBITMQ_URL": url if inside else ""},
                cwd=deployment.workdir,
            )
        )
        processes = [worker]
        if not inside:
            processes.append(
                stack.enter_context(
                    background_process(
                        "consumer",
                        [*spawnpoint, "events", "consume"],
                        env={**deployment.env, "RABBITMQ_URL": url},
                        cwd=deployment.workdir,
                    )
                )
            )
        asyncio.run(_consumer_ready(url))
        template = _make_template(server)
        for number in range(rounds):
            order = ("api", "permits") if number % 2 == 0 else ("permits", "api")
            for mode in order:
                if any(p.poll() is not None for p in processes):
                    raise RuntimeError("the worker or the consumer exited")
                prefix = f"r{number}-{mode}-"
                if mode == "api":
                    rate = _api_round(server, db_url, template, prefix, count, clients)
                    result.api_rates.append(rate)
                else:
                    rate = _permits_round(url, db_url, template, prefix, count)
                    result.permit_rates.append(rate)
                print(f"round {number + 1} {mode}: {rate:,.1f} workspaces/s", flush=True)
        result.load_average = os.getloadavg()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=500, help="workspaces per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16, help="POST /api/spawn connections")
    parser.add_argument("--concurrency", type=int, default=16, help="the worker's job slots")
    parser.add_argument(
        "--consumer",
        choices=("worker", "process"),
        default="worker",
        help="the worker's own consumer, or `spawnpoint events consume` beside the worker",
    )
    args = parser.parse_args()
    raise_on_sigterm(deadline=900)
    load_before = os.getloadavg()
    try:
        result = measure_permits_inbound(
            count=args.count,
            rounds=args.rounds,
            clients=args.clients,
            concurrency=args.concurrency,
            consumer=args.consumer,
        )
    except (RuntimeError, OSError, psycopg.Error, subprocess.SubprocessError) as exc:
        print(f"permits inbound benchmark failed: {exc}", file=sys.stderr)
        return 2
    before = ", ".join(f"{v:.2f}" for v in load_before)
    after = ", ".join(f"{v:.2f}" for v in result.load_average)
    text = (
        f"{result.table()}\n\nLoad average (1, 5, 15 min) at the start {before}, at the end "
        f"{after}; {os.cpu_count()} CPUs.\n"
    )
    print(text)
    write_result("permits_inbound.md", text)
    return 0 if result.met else 1


if __name__ == "__main__":
    sys.exit(main())
