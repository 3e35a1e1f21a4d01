"""Costs benchmark on PostgreSQL: a month of cost records, GET /api/costs, metering passes.

    .venv/bin/python bench/costs.py [--workspaces 10000] [--projects 100] [--requests 30]
                                    [--running 1000]

1. creates a scratch database (SPAWNPOINT_BENCH_PG_URL, else SPAWNPOINT_TEST_PG_URL, else
   the local server) and migrates it;
2. writes a month (720 hours) of cost records for `--workspaces` always-on workspaces of the
   demo tenant, spread over `--projects` projects, one INSERT ... SELECT per day (the daily
   summary's triggers run on each, as on any write). With one record per workspace per hour
   (the roll-up spawnpoint meters, extended in place each 60-second interval) that is 7.2
   million rows for 10,000 workspaces, instead of the 432 million of one row per 60-second
   interval, and 300,000 summary rows; the amounts are exact to the cent either way;
3. times `GET /api/costs?group_by=project` for the month through the app in process (the
   dev token, an admin of the demo tenant) against the same aggregate as one SQL statement
   on the records table, alternating the two, and reports p50/p99 of each and their ratio;
   then the same request over a window cut inside its first and last days (the summary
   for the whole days, the records for the edges), and the month by user, workspace,
   template and day (a page of 200 groups each);
4. plants `--running` running workspaces (with their `running` events) and times metering
   passes at a controlled clock: the first (which writes their hour's records) and the
   following ones a minute apart (which extend them in place), per 1,000 workspaces, with
   the statements each pass sends;
5. prints a Markdown table, writes bench/results/costs.md and drops the database.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
from sqlalchemy import event, insert, text

from _common import markdown_table, percentile, scratch_database, write_result
from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.costs.metering import meter
from spawnpoint.db import Database
from spawnpoint.kit.ids import uuid7
from spawnpoint.kit.inserts import with_defaults
from spawnpoint.migrations import upgrade
from spawnpoint.models import Workspace, WorkspaceEvent

DEMO_TENANT = uuid.UUID("00000000-0000-0000-0000-000000000001")
DEMO_TEMPLATE = uuid.UUID("00000000-0000-0000-0000-000000000100")
MONTH = datetime(2024, 7, 1, tzinfo=UTC)
HOURS = 720

SEED_WORKSPACES = text(
    """
    CREATE TEMPORARY TABLE bench_workspaces ON COMMIT DROP AS
    SELECT gen_random_uuid() AS id,
           (CAST(:projects AS uuid[]))[1 + (n % cardinality(CAST(:projects AS uuid[])))]
               AS project_id,
           gen_random_uuid() AS user_id
    FROM generate_series(1, :workspaces) AS n
    """
)
SEED_DAY = text(
    """
    INSERT INTO cost_records (id, tenant_id, workspace_id, template_id, project_id, user_id,
                              period_start, period_end, amount, rate, currency, open, recorded_at)
    SELECT gen_random_uuid(), :tenant, w.id, :template, w.project_id, w.user_id,
           h, h + interval '1 hour', 0.12, 0.12, 'USD', false, h + interval '1 hour'
    FROM bench_workspaces AS w
    CROSS JOIN generate_series(CAST(:start AS timestamptz),
                               CAST(:start AS timestamptz) + (:hours - 1) * interval '1 hour',
                               interval '1 hour') AS h
    """
)
RAW = text(
    """
    SELECT project_id, sum(amount) FROM cost_records
    WHERE tenant_id = :tenant AND period_start >= :since AND period_start < :until
    GROUP BY project_id ORDER BY project_id LIMIT 201
    """
)


async def seed(database: Database, workspaces: int, projects: int) -> tuple[float, int]:
    """A month of records, a day per statement; returns the seconds and the summary rows."""
    started = time.perf_counter()
    project_ids = [uuid.uuid4() for _ in range(projects)]
    async with database.transaction(write=True) as session:
        await session.execute(SEED_WORKSPACES, {"projects": project_ids, "workspaces": workspaces})
        for day in range(HOURS // 24):
            await session.execute(
                SEED_DAY,
                {
                    "tenant": DEMO_TENANT,
                    "template": DEMO_TEMPLATE,
                    "start": MONTH + timedelta(days=day),
                    "hours": 24,
                },
            )
    async with database.transaction(write=True) as session:
        await session.execute(text("ANALYZE cost_records"))
        await session.execute(text("ANALYZE cost_days"))
        days = (await session.execute(text("SELECT count(*) FROM cost_days"))).scalar_one()
    return time.perf_counter() - started, int(days)


async def aggregates(
    settings: Settings, database: Database, requests: int
) -> tuple[list[float], list[float], list[float], dict[str, list[float]], str, int]:
    """(API latencies, the bare statement's, the API's over a window cut inside days, the
    API's for the month by each other grouping, the month's total, groups)."""
    app = create_app(settings, database=database)
    headers = {"Authorization": f"Bearer {settings.dev_bypass_token}"}
    month = {
        "group_by": "project",
        "since": "2024-07-01T00:00:00Z",
        "until": "2024-08-01T00:00:00Z",
        "limit": "200",
    }
    cut = {**month, "since": "2024-07-01T05:30:00Z", "until": "2024-07-30T18:15:00Z"}
    api: list[float] = []
    raw: list[float] = []
    edges: list[float] = []
    others: dict[str, list[float]] = {g: [] for g in ("user", "workspace", "template", "day")}
    total = ""
    groups = 0
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for i in range(requests + 2):
            started = time.perf_counter()
            response = await client.get("/api/costs", headers=headers, params=month)
            elapsed = time.perf_counter() - started
            response.raise_for_status()
            total, groups = response.json()["total"], len(response.json()["items"])
            started = time.perf_counter()
            async with database.transaction(write=False) as session:
                rows = (
                    await session.execute(
                        RAW,
                        {
                            "tenant": DEMO_TENANT,
                            "since": MONTH,
                            "until": datetime(2024, 8, 1, tzinfo=UTC),
                        },
                    )
                ).all()
            raw_elapsed = time.perf_counter() - started
            assert len(rows) == groups
            assert sum((row[1] for row in rows), Decimal(0)) == Decimal(total)
            started = time.perf_counter()
            response = await client.get("/api/costs", headers=headers, params=cut)
            edge_elapsed = time.perf_counter() - started
            response.raise_for_status()
            for grouping, timings in others.items():
                started = time.perf_counter()
                response = await client.get(
                    "/api/costs", headers=headers, params={**month, "group_by": grouping}
                )
                grouped = time.perf_counter() - started
                response.raise_for_status()
                assert response.json()["total"] == total
                if i >= 2:
                    timings.append(grouped)
            if i >= 2:  # the first two warm the caches
                api.append(elapsed)
                raw.append(raw_elapsed)
                edges.append(edge_elapsed)
    return api, raw, edges, others, total, groups


async def metering(database: Database, running: int, passes: int) -> tuple[float, list[float], int]:
    """(first pass, following passes, most statements a pass sent)."""
    start = MONTH + timedelta(days=40)
    workspaces = []
    events = []
    for i in range(running):
        workspace_id = uuid7()
        workspaces.append(
            with_defaults(
                Workspace,
                {
                    "id": workspace_id,
                    "tenant_id": DEMO_TENANT,
                    "template_id": DEMO_TEMPLATE,
                    "template_version": 1,
                    "provisioner": "dry-run",
                    "name": f"bench-{i}",
                    "state": "running",
                    "parameters": {},
                    "cpu": 0.01,
                    "memory_mb": 1,
                    "storage_gb": 0,
                    "driver_state": {},
                },
            )
        )
        events.append(
            with_defaults(
                WorkspaceEvent,
                {
                    "id": uuid7(),
                    "workspace_id": workspace_id,
                    "tenant_id": DEMO_TENANT,
                    "from_state": "starting",
                    "to_state": "running",
                    "actor": "system",
                    "reason": "bench",
                    "at": start,
                },
            )
        )
    async with database.transaction(write=True) as session:
        await session.execute(text("ALTER TABLE workspaces DISABLE TRIGGER USER"))
        await session.execute(insert(Workspace), workspaces)
        await session.execute(insert(WorkspaceEvent), events)
        await session.execute(text("ALTER TABLE workspaces ENABLE TRIGGER USER"))
    timings = []
    statements: list[int] = []
    sent = [0]

    def count(*_: object) -> None:
        sent[0] += 1

    event.listen(database.engine.sync_engine, "before_cursor_execute", count)
    try:
        for n in range(passes + 1):
            sent[0] = 0
            started = time.perf_counter()
            async with database.transaction(write=True) as session:
                await meter(session, start + timedelta(minutes=10 + n))
            timings.append(time.perf_counter() - started)
            statements.append(sent[0])
    finally:
        event.remove(database.engine.sync_engine, "before_cursor_execute", count)
    return timings[0], timings[1:], max(statements)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspaces", type=int, default=10_000)
    parser.add_argument("--projects", type=int, default=100)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--running", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    with scratch_database("spawnpoint_bench_costs") as scratch:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            database_url=scratch.sqlalchemy_url,
            data_dir=Path(tempfile.mkdtemp(prefix="spawnpoint-bench-costs-")),
            environment="development",
            rate_limit_per_minute=1_000_000_000,
            rate_limit_tenant_per_minute=1_000_000_000,
        )
        await asyncio.to_thread(upgrade, settings)
        database = Database(settings.sqlalchemy_url)
        try:
            seconds, days = await seed(database, args.workspaces, args.projects)
            api, raw, edges, others, total, groups = await aggregates(
                settings, database, args.requests
            )
            first, following, statements = await metering(database, args.running, args.passes)
        finally:
            await database.dispose()
    rows = args.workspaces * HOURS
    per_thousand = 1000 / args.running
    load = os.getloadavg()[0]
    table = markdown_table(
        ["measure", "value"],
        [
            ["cost records (a month, hourly roll-up)", f"{rows:,}"],
            ["rows one per 60 s interval would be", f"{args.workspaces * HOURS * 60:,}"],
            ["daily summary rows (cost_days)", f"{days:,}"],
            ["seeding (INSERT ... SELECT a day at a time, ANALYZE)", f"{seconds:.1f} s"],
            [
                f"GET /api/costs?group_by=project p50 ({groups} groups)",
                f"{percentile(api, 50) * 1000:.1f} ms",
            ],
            ["GET /api/costs?group_by=project p99", f"{percentile(api, 99) * 1000:.1f} ms"],
            ["one SQL statement on the table p50", f"{percentile(raw, 50) * 1000:.1f} ms"],
            ["one SQL statement on the table p99", f"{percentile(raw, 99) * 1000:.1f} ms"],
            [
                "API p50 / statement p50 (lower is better)",
                f"{percentile(api, 50) / percentile(raw, 50):.3f}",
            ],
            [
                "the same request cut inside its first and last days p50",
                f"{percentile(edges, 50) * 1000:.1f} ms",
            ],
            ["the same request cut inside days p99", f"{percentile(edges, 99) * 1000:.1f} ms"],
            *(
                [
                    f"the month by {grouping} (a page of 200) p50 / p99",
                    f"{percentile(timings, 50) * 1000:.1f} / "
                    f"{percentile(timings, 99) * 1000:.1f} ms",
                ]
                for grouping, timings in others.items()
            ),
            ["month total", total],
            ["first metering pass per 1,000 running", f"{first * per_thousand * 1000:.0f} ms"],
            [
                "following passes per 1,000 running (median)",
                f"{sorted(following)[len(following) // 2] * per_thousand * 1000:.0f} ms",
            ],
            ["statements per metering pass (at most)", f"{statements}"],
            ["load average (1 min) at the start", f"{load_start:.1f}"],
            ["load average (1 min) at the end", f"{load:.1f}"],
        ],
    )
    print(table)
    write_result("costs.md", table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
