"""Job queue benchmark on PostgreSQL, as ratios to the database's own TPC-B rate.

    .venv/bin/python bench/queue.py [--jobs 10000] [--workers 2] [--concurrency 32]

Creates its own database on the server at SPAWNPOINT_BENCH_PG_URL (default: the test
server), migrates it, and drops it at the end; `pgbench` gets a scratch database too.

1. Baseline: `pgbench -i -s 10`, then `pgbench -c 2 -j 2 -T 15` -> TPS.
2. Throughput: `--workers` `spawnpoint worker` processes drain `--jobs` queued `noop` jobs,
   enqueued in one transaction once the workers are idle. jobs/s is measured from the
   database's own timestamps: jobs / (last finished_at - commit of the enqueue).
3. Latency: `--rate` jobs/s, each enqueued in its own transaction (as an API request does),
   for `--seconds`; latency = started_at - created_at, reported as p50 and p99.

Goals: throughput / TPS >= 0.5 and p50 enqueue-to-start <= 10 ms.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python bench/queue.py`, this folder leads sys.path, and this file would shadow
# the standard library's `queue` (which psycopg and asyncio import).
sys.path.remove(str(Path(__file__).resolve().parent))

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from datetime import datetime

import psycopg
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.queue import enqueue
from spawnpoint.kit.clock import utcnow
from spawnpoint.migrations import upgrade
from spawnpoint.models import Job

SERVER_URL = os.environ.get(
    "SPAWNPOINT_BENCH_PG_URL",
    os.environ.get("SPAWNPOINT_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
)
THROUGHPUT_GOAL = 0.5
LATENCY_GOAL_MS = 10.0


def conninfo(url: str, database: str | None = None) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


class ScratchDatabase:
    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.url = make_url(SERVER_URL).set(database=self.name).render_as_string(False)

    def __enter__(self) -> ScratchDatabase:
        with psycopg.connect(conninfo(SERVER_URL), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        return self

    def __exit__(self, *_: object) -> None:
        with psycopg.connect(conninfo(SERVER_URL), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def pgbench_tps(seconds: int) -> float:
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        sys.exit("pgbench is not installed (postgresql-client)")
    with ScratchDatabase("spawnpoint_bench_pgbench") as scratch:
        url = make_url(scratch.url)
        target = ["-h", url.host or "127.0.0.1", "-p", str(url.port or 5432)]
        target += ["-U", url.username or "postgres", scratch.name]
        env = {**os.environ, **({"PGPASSWORD": url.password} if url.password else {})}
        subprocess.run(
            [pgbench, "-i", "-s", "10", "-q", *target], env=env, check=True, capture_output=True
        )
        run = subprocess.run(
            [pgbench, "-c", "2", "-j", "2", "-T", str(seconds), *target],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
    match = re.search(r"tps = ([\d.]+)", run.stdout)
    if match is None:
        sys.exit(f"could not read pgbench output:\n{run.stdout}")
    return float(match[1])


def start_workers(
    settings: Settings, count: int, concurrency: int, logs: Path
) -> list[subprocess.Popen[bytes]]:
    executable = Path(sys.executable).with_name("spawnpoint")
    env = {
        **os.environ,
        "DATABASE_URL": settings.sqlalchemy_url,
        "DATA_DIR": str(settings.data_dir),
        "ENVIRONMENT": "development",
        "LOG_LEVEL": "warning",
    }
    workers = []
    for n in range(count):
        log = (logs / f"worker-{n}.log").open("wb")
        workers.append(
            subprocess.Popen(
                [str(executable), "worker", "--concurrency", str(concurrency)],
                env=env,
                cwd=logs,
                stdout=log,
                stderr=log,
            )
        )
    return workers


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    for worker in workers:
        worker.wait(timeout=60)


async def count_unfinished(database: Database) -> int:
    async with database.transaction(write=False) as session:
        statement = select(func.count()).select_from(Job).where(Job.state != "succeeded")
        return (await session.execute(statement)).scalar_one()


async def wait_until_drained(database: Database, *, within: float) -> None:
    deadline = time.monotonic() + within
    while await count_unfinished(database):
        if time.monotonic() > deadline:
            sys.exit("jobs did not finish in time; see the worker logs")
        await asyncio.sleep(0.05)


async def enqueue_batch(database: Database, count: int) -> datetime:
    async with database.transaction(write=True) as session:
        for _ in range(count):
            await enqueue(session, job_type="noop", payload={}, tenant_id=None)
    return utcnow()


async def throughput(database: Database, jobs: int) -> float:
    await enqueue_batch(database, 20)  # warm-up: both workers are up and idle afterwards
    await wait_until_drained(database, within=60)
    committed = await enqueue_batch(database, jobs)
    await wait_until_drained(database, within=600)
    async with database.transaction(write=False) as session:
        last = (await session.execute(select(func.max(Job.finished_at)))).scalar_one()
    return jobs / (last - committed).total_seconds()


async def latency(database: Database, rate: float, seconds: float) -> list[float]:
    ids = []
    interval = 1 / rate
    start = time.monotonic()
    for n in range(int(rate * seconds)):
        # Paced against the start, so the rate holds however long each enqueue takes.
        await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
        async with database.transaction(write=True) as session:
            ids.append((await enqueue(session, job_type="noop", payload={}, tenant_id=None)).id)
    await wait_until_drained(database, within=60)
    async with database.transaction(write=False) as session:
        rows = await session.execute(select(Job.created_at, Job.started_at).where(Job.id.in_(ids)))
        return [(started - created).total_seconds() * 1000 for created, started in rows]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def queue_figures(
    settings: Settings, args: argparse.Namespace, logs: Path
) -> tuple[float, list[float]]:
    database = Database(settings.sqlalchemy_url, pool_size=4)
    workers = start_workers(settings, args.workers, args.concurrency, logs)
    try:
        jobs_per_second = await throughput(database, args.jobs)
        latencies = await latency(database, args.rate, args.seconds)
    finally:
        stop_workers(workers)
        await database.dispose()
    return jobs_per_second, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rate", type=float, default=50.0, help="latency phase, jobs/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency phase length")
    parser.add_argument("--pgbench-seconds", type=int, default=15)
    args = parser.parse_args()

    tps = pgbench_tps(args.pgbench_seconds)
    with (
        tempfile.TemporaryDirectory(prefix="spawnpoint-bench-") as tmp,
        ScratchDatabase("spawnpoint_bench_queue") as scratch,
    ):
        settings = Settings(_env_file=None, database_url=scratch.url, data_dir=Path(tmp))  # type: ignore[call-arg]
        upgrade(settings)
        jobs_per_second, latencies = asyncio.run(queue_figures(settings, args, Path(tmp)))

    ratio = jobs_per_second / tps
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    rows = [
        ("pgbench TPC-B -c 2 -j 2 (TPS)", f"{tps:,.0f}", ""),
        ("queue throughput (jobs/s)", f"{jobs_per_second:,.0f}", ""),
        ("jobs/s ÷ TPS", f"{ratio:.2f}", verdict(ratio >= THROUGHPUT_GOAL, f"≥ {THROUGHPUT_GOAL}")),
        (
            f"enqueue-to-start p50 at {args.rate:g} jobs/s (ms)",
            f"{p50:.1f}",
            verdict(p50 <= LATENCY_GOAL_MS, f"≤ {LATENCY_GOAL_MS:g}"),
        ),
        (f"enqueue-to-start p99 at {args.rate:g} jobs/s (ms)", f"{p99:.1f}", ""),
        ("latency samples (mean ms)", f"{len(latencies)} ({statistics.fmean(latencies):.1f})", ""),
    ]
    print(f"\n## Job queue on PostgreSQL: {args.workers} workers x {args.concurrency} slots\n")
    print("| figure | value | goal |")
    print("| --- | ---: | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def verdict(met: bool, goal: str) -> str:
    return f"{goal} {'met' if met else 'NOT met'}"


if __name__ == "__main__":
    main()
