"""Job queue benchmark on PostgreSQL, as ratios to the database's own TPC-B rate.

    .venv/bin/python bench/job_queue.py [--jobs 10000] [--workers 2] [--concurrency 32]

Everything runs against scratch databases on the server named by SPAWNPOINT_BENCH_PG_URL
(else SPAWNPOINT_TEST_PG_URL, else postgresql://postgres@127.0.0.1:5432/postgres), dropped
at the end, also on failure or Ctrl-C.

1. Baseline: `pgbench -i -s 10`, then `pgbench -c 2 -j 2 -T 15` -> TPS.
2. Throughput: `--workers` `spawnpoint worker` processes drain `--jobs` `noop` jobs,
   enqueued in one transaction once the workers are idle; jobs/s = jobs / (last
   finished_at - commit of the enqueue).
3. Latency: `--rate` jobs/s, each enqueued in its own transaction (as an API request does),
   for `--seconds`; latency = started_at - created_at, reported as p50 and p99.

Prints a Markdown table (also written to bench/results/queue.md). Exit status: 0 when
jobs/s / TPS >= 0.5 and the p50 latency <= 10 ms, 1 when not, 2 on error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select

from _common import (
    background_process,
    clean_env,
    markdown_table,
    percentile,
    raise_on_sigterm,
    run_checked,
    scratch_database,
    venv_command,
    write_result,
)
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.queue import enqueue
from spawnpoint.kit.clock import utcnow
from spawnpoint.migrations import upgrade
from spawnpoint.models import Job

THROUGHPUT_GOAL = 0.5
LATENCY_GOAL_MS = 10.0


def pgbench_tps(seconds: int, workdir: Path) -> float:
    pgbench = venv_command("pgbench")  # falls back to PATH
    with scratch_database("spawnpoint_bench_pgbench") as scratch:
        env = clean_env()
        run_checked(
            [*pgbench, "-i", "-s", "10", "-q", scratch.url], env=env, cwd=workdir, timeout=300
        )
        output = run_checked(
            [*pgbench, "-c", "2", "-j", "2", "-T", str(seconds), scratch.url],
            env=env,
            cwd=workdir,
            timeout=seconds + 120,
        )
    match = re.search(r"tps = ([\d.]+)", output)
    if match is None:
        raise RuntimeError(f"could not read pgbench's output:\n{output}")
    return float(match[1])


async def count_unfinished(database: Database) -> int:
    async with database.transaction(write=False) as session:
        statement = select(func.count()).select_from(Job).where(Job.state != "succeeded")
        return (await session.execute(statement)).scalar_one()


async def wait_until_drained(database: Database, *, within: float) -> None:
    deadline = time.monotonic() + within
    while await count_unfinished(database):
        if time.monotonic() > deadline:
            raise RuntimeError("the jobs did not finish in time; see the worker logs")
        await asyncio.sleep(0.05)


async def enqueue_batch(database: Database, count: int) -> datetime:
    async with database.transaction(write=True) as session:
        for _ in range(count):
            await enqueue(session, job_type="noop", payload={}, tenant_id=None)
    return utcnow()


async def throughput(database: Database, jobs: int) -> float:
    await enqueue_batch(database, 20)  # warm-up: afterwards both workers are up and idle
    await wait_until_drained(database, within=120)
    committed = await enqueue_batch(database, jobs)
    await wait_until_drained(database, within=600)
    async with database.transaction(write=False) as session:
        last = (await session.execute(select(func.max(Job.finished_at)))).scalar_one()
    return jobs / (last - committed).total_seconds()


async def latencies_ms(database: Database, rate: float, seconds: float) -> list[float]:
    ids = []
    start = time.monotonic()
    for n in range(int(rate * seconds)):
        # Paced against the start, so the rate holds however long each enqueue takes.
        await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
        async with database.transaction(write=True) as session:
            ids.append((await enqueue(session, job_type="noop", payload={}, tenant_id=None)).id)
    await wait_until_drained(database, within=60)
    async with database.transaction(write=False) as session:
        rows = await session.execute(select(Job.created_at, Job.started_at).where(Job.id.in_(ids)))
        return [(started - created).total_seconds() * 1000 for created, started in rows]


async def measure_queue(database: Database, args: argparse.Namespace) -> tuple[float, list[float]]:
    try:
        return await throughput(database, args.jobs), await latencies_ms(
            database, args.rate, args.seconds
        )
    finally:
        await database.dispose()


def queue_figures(args: argparse.Namespace, workdir: Path) -> tuple[float, list[float]]:
    with scratch_database("spawnpoint_bench_queue") as scratch:
        env = clean_env(
            DATABASE_URL=scratch.sqlalchemy_url,
            DATA_DIR=str(workdir),
            ENVIRONMENT="development",
            LOG_LEVEL="warning",
        )
        settings = Settings(_env_file=None, database_url=scratch.sqlalchemy_url, data_dir=workdir)  # type: ignore[call-arg]
        upgrade(settings)
        argv = [*venv_command("spawnpoint"), "worker", "--concurrency", str(args.concurrency)]
        with contextlib.ExitStack() as workers:
            for n in range(args.workers):
                workers.enter_context(background_process(f"worker-{n}", argv, env=env, cwd=workdir))
            database = Database(scratch.sqlalchemy_url, pool_size=4)
            return asyncio.run(measure_queue(database, args))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32, help="slots per worker")
    parser.add_argument("--rate", type=float, default=50.0, help="latency phase, jobs/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency phase length")
    parser.add_argument("--pgbench-seconds", type=int, default=15)
    args = parser.parse_args()
    raise_on_sigterm(deadline=900)

    with tempfile.TemporaryDirectory(prefix="spawnpoint-bench-queue-") as tmp:
        workdir = Path(tmp)
        try:
            tps = pgbench_tps(args.pgbench_seconds, workdir)
            jobs_per_second, latencies = queue_figures(args, workdir)
        except (RuntimeError, OSError) as exc:
            print(f"bench/job_queue.py: {exc}", file=sys.stderr)
            return 2

    ratio = jobs_per_second / tps
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    met = ratio >= THROUGHPUT_GOAL and p50 <= LATENCY_GOAL_MS
    table = markdown_table(
        ["figure", "value", "goal"],
        [
            ["pgbench TPC-B -c 2 -j 2 (TPS)", f"{tps:,.0f}", ""],
            ["queue throughput (jobs/s)", f"{jobs_per_second:,.0f}", ""],
            ["jobs/s ÷ TPS", f"{ratio:.2f}", f"≥ {THROUGHPUT_GOAL}"],
            [
                f"enqueue-to-start p50 at {args.rate:g} jobs/s (ms)",
                f"{p50:.1f}",
                f"≤ {LATENCY_GOAL_MS:g}",
            ],
            [f"enqueue-to-start p99 at {args.rate:g} jobs/s (ms)", f"{p99:.1f}", ""],
            ["enqueue-to-start mean (ms)", f"{statistics.fmean(latencies):.1f}", ""],
        ],
    )
    report = (
        f"## Job queue on PostgreSQL: {args.workers} workers x {args.concurrency} slots, "
        f"{args.jobs:,} noop jobs\n\n{table}\n\ngoals {'met' if met else 'NOT met'}\n"
    )
    print(report)
    write_result("queue.md", report)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
