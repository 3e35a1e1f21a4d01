"""Spawn throughput and request-to-running latency: POST /api/spawn through to `running`.

    .venv/bin/python bench/spawn.py [--rounds 3] [--seconds 15] [--warmup 3] [--clients 32]
                                    [--rate 100] [--paced-seconds 6] [--paced-warmup 1]
                                    [--workers 2] [--concurrency 16] [--profile DIR]

What it does, all on 127.0.0.1 and in under 3 minutes with the defaults (about 2):

1. creates a scratch PostgreSQL database (SPAWNPOINT_BENCH_PG_URL, else SPAWNPOINT_TEST_PG_URL,
   else postgresql://postgres@127.0.0.1:5432/postgres names the server), runs
   `spawnpoint migrate`, and adds a plan with very large quotas and tenants on it, each with a
   `member` user and a `dry-run` template (spec {"image": "bench:1", "cpu": 0.01,
   "memory_mb": 16, "storage_gb": 0}): a fresh tenant per round keeps the rounds comparable
   (each round's tenant starts with no workspaces). Each member of a measured
   tenant gets a JWT from `spawnpoint token create`;
2. the baseline, `--baseline-seconds` per round in a second scratch database (a copy of the
   first): the spawn transaction's statements in raw SQL on `--clients` concurrent psycopg
   connections -- look the user up, lock the tenant row FOR UPDATE (as spawnpoint does), read
   template + current version and the tenant's usage counters, insert the workspace (which
   fires the usage trigger), its first event, its job and the job's `job_states` entry,
   pg_notify, commit -- with no HTTP,
   ORM, policy engine or workers; then the same without FOR UPDATE. It runs before
   spawnpoint's processes start, whose connection pools would otherwise hold the slots it
   needs on a shared server;
3. starts `spawnpoint serve --no-worker` (ENVIRONMENT=development, JWT_SECRET set, LOG_LEVEL
   warning, uvloop + httptools) and `--workers` x `spawnpoint worker --concurrency N`, and
   waits until every worker LISTENs;
4. per round: `--clients` keep-alive connections POST /api/spawn in a closed loop (a small
   asyncio + uvloop HTTP/1.1 client in this process, recording each request's wall-clock send
   time and the workspace id it got) for `--warmup` discarded + `--seconds` measured seconds,
   then waits (at most `--drain` seconds) for every accepted workspace to reach `running`.
   Request-to-running = `workspace_events.at` of the workspace's provisioning -> running event
   minus the client's send time (same machine clock). Then, on a second fresh tenant, the same
   clients send at a steady `--rate` spawns/s (default: the goal, 100/s) for `--paced-warmup`
   + `--paced-seconds`; there a request's latency counts from its scheduled send time, so a
   request that had to wait for a free client is not reported faster than it was. The closed
   loop measures how many spawns/s the system can take; the paced run measures the latency a
   user sees at the goal's rate. (In the closed loop the 32 clients keep 32 spawns in flight,
   so its latency is 32 / throughput by construction -- queueing in front of the tenant lock,
   not the work of a spawn.) Also recorded over the measured window:
   CPU seconds of the API, the workers, this load generator and the database backends serving
   the bench database (per spawn: the number least disturbed by other load on the machine);
   pg_stat_database counters; and pg_stat_activity sampled every 20 ms (each process connects
   with its own application_name), which shows what the sessions wait for;
5. prints a Markdown table of the medians over the rounds, writes it to bench/results/spawn.md,
   and drops both databases (also on failure, Ctrl-C or the 3-minute watchdog).

With `--profile DIR` (py-spy on PATH, or `--py-spy` naming it), the first round is also
profiled: DIR/api.txt and DIR/worker-N.txt hold collapsed stacks (flamegraph.pl / speedscope
input) of the API and worker processes. `--spawnpoint CMD` benchmarks another command (say, a
wrapper that applies a candidate change) in place of the venv's `spawnpoint`.

Exit status: 0 when the goals (>= 100 spawns/s in the closed loop; at the paced rate at least
95% of it accepted and request-to-running p99 <= 250 ms; nothing left unfinished after either
drain, no failed job, no error answer) are met, 1 when they are not, 2 on error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LOCALHOST,
    REPO,
    ScratchDatabase,
    Server,
    background_process,
    free_port,
    log_tail,
    markdown_table,
    median,
    migrated_deployment,
    percentile,
    process_cpu_seconds,
    raise_on_sigterm,
    run_checked,
    scratch_database,
    server_process,
    system_cpu_seconds,
    venv_command,
    write_result,
)

T = TypeVar("T")
JWT_SECRET = "bench-spawn-" + "s" * 40
API_POOL_SIZE = 10  # spawnpoint's default DATABASE_POOL_SIZE
WATCHDOG_SECONDS = 178  # the whole run, set-up and clean-up included, stays under 3 minutes
SETUP_SECONDS = 25  # migrate, tokens, process start-up, as budgeted up front
GOAL_SPAWNS_PER_SECOND = 100.0
GOAL_P99_MS = 250.0
SPEC = {"image": "bench:1", "cpu": 0.01, "memory_mb": 16, "storage_gb": 0}
LISTEN_QUERY = "LISTEN spawnpoint_jobs"
ACTIVITY_ROWS = 14


# --------------------------------------------------------------------------- seeding


@dataclass(frozen=True)
class TenantSeed:
    """One round's tenant: its member user, template and (later) the member's token."""

    tenant_id: uuid.UUID
    user_id: uuid.UUID
    email: str
    template_id: uuid.UUID


def seed(db: ScratchDatabase, rounds: int) -> list[TenantSeed]:
    """A plan with very large quotas; `rounds` tenants on it, each a member + dry-run template."""
    now = datetime.now(UTC)
    plan_id = uuid.uuid4()
    tenants = [
        TenantSeed(uuid.uuid4(), uuid.uuid4(), f"member-{n}@bench.test", uuid.uuid4())
        for n in range(rounds)
    ]
    with psycopg.connect(db.url) as conn:
        conn.execute(
            "INSERT INTO plans (id, name, description, max_workspaces, max_cpu, max_memory_mb,"
            " max_storage_gb, max_concurrent_jobs, max_jobs_per_day, monthly_budget,"
            " created_at, updated_at) VALUES (%s, 'bench-unlimited', 'bench/spawn.py',"
            " 100000000, 99999999.99, 2000000000, 2000000000, 1000000, 2000000000,"
            " 999999999999.99, %s, %s)",
            (plan_id, now, now),
        )
        for n, t in enumerate(tenants):
            conn.execute(
                "INSERT INTO tenants (id, name, slug, plan_id, status, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, 'active', %s, %s)",
                (t.tenant_id, f"Bench spawn {n}", f"bench-spawn-{n}", plan_id, now, now),
            )
            conn.execute(
                "INSERT INTO users (id, tenant_id, email, display_name, role, status,"
                " created_at, updated_at) VALUES (%s, %s, %s, 'bench', 'member', 'active', %s, %s)",
                (t.user_id, t.tenant_id, t.email, now, now),
            )
            conn.execute(
                "INSERT INTO templates (id, tenant_id, name, description, provisioner,"
                " current_version, created_at, updated_at)"
                " VALUES (%s, %s, 'bench-dry-run', '', 'dry-run', 1, %s, %s)",
                (t.template_id, t.tenant_id, now, now),
            )
            conn.execute(
                "INSERT INTO template_versions (template_id, tenant_id, version, provisioner,"
                " spec, created_by, created_at) VALUES (%s, %s, 1, 'dry-run', %s, NULL, %s)",
                (t.template_id, t.tenant_id, json.dumps(SPEC), now),
            )
        conn.commit()
    with psycopg.connect(db.url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return tenants


# --------------------------------------------------------------------------- CPU accounting


class CpuMeter:
    """CPU seconds of named processes and of the database's backends, between two marks.

    PostgreSQL backends come and go (pools close overflow connections), so a thread samples
    every backend serving `dbname` (its title is "postgres: ... USER DBNAME HOST(PORT) ...")
    a few times a second and keeps each one's last reading.
    """

    def __init__(self, dbname: str, pids: dict[str, Sequence[int]]) -> None:
        self.dbname = dbname
        self.pids = pids
        self._backend_cpu: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu meter", daemon=True)
        self._thread.start()

    def _backends(self) -> list[int]:
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                title = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            if title.startswith(b"postgres: ") and f" {self.dbname} ".encode() in title:
                found.append(int(entry.name))
        return found

    def _sample(self) -> None:
        for pid in self._backends():
            try:
                cpu = process_cpu_seconds(pid)
            except (OSError, ValueError, IndexError):
                continue
            with self._lock:
                self._backend_cpu[pid] = cpu

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            self._sample()

    def mark(self) -> dict[str, float]:
        self._sample()
        reading: dict[str, float] = {}
        for name, pids in self.pids.items():
            reading[name] = sum(process_cpu_seconds(pid) for pid in pids)
        with self._lock:
            reading["postgres"] = sum(self._backend_cpu.values())
        busy, total = system_cpu_seconds()
        reading["machine"], reading["machine_total"] = busy, total
        return reading

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}


QUERY_KINDS = (
    ("FOR UPDATE OF tenants", "spawn: lock tenant row"),
    ("JOIN tenants ON tenants.id = users.tenant_id", "auth: user lookup"),
    ("FROM templates JOIN template_versions", "spawn: template + version"),
    ("FROM tenant_usage", "spawn: usage counters"),
    ("INSERT INTO workspaces", "spawn: insert workspace"),
    ("INSERT INTO workspace_events", "insert event"),
    ("INSERT INTO jobs", "spawn: insert job"),
    ("pg_notify", "pg_notify"),
    ("WITH due AS", "worker: claim"),
    ("SELECT jobs.id", "worker: lease check FOR UPDATE"),
    ("FROM workspaces", "worker: workspace FOR UPDATE"),
    ("FROM template_versions", "worker: template version"),
    ("UPDATE workspaces", "worker: update workspace"),
    ("INSERT INTO job_logs", "worker: job logs"),
    ("UPDATE jobs SET state", "worker: complete job"),
    ("UPDATE jobs SET lease_expires_at", "worker: heartbeat"),
    ("LISTEN", "worker: LISTEN"),
    ("leader_leases", "scheduler"),
)


def query_kind(query: str) -> str:
    for needle, kind in QUERY_KINDS:
        if needle in query:
            return kind
    return " ".join(query.split())[:40]


class ActivitySampler:
    """Samples pg_stat_activity of the bench database every 20 ms while running.

    Each process connects with its own application_name (PGAPPNAME), so the average number of
    sessions per (process, state, wait event, last statement) shows where transactions spend
    their time: waiting on a lock, waiting for the client (`idle in transaction`), working.
    """

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        # An autocommit connection opened before spawnpoint's processes start: a shared server
        # may have no connection slot to spare once their pools have filled.
        self._conn = conn
        self.counts: dict[tuple[str, str, str, str], int] = {}
        self.samples = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="activity sampler", daemon=True)

    def __enter__(self) -> ActivitySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            self._sample_until_stopped()
        except psycopg.Error as exc:  # the database went away (the run is being torn down)
            self.error = str(exc)

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(0.02):
            rows = self._conn.execute(
                "SELECT application_name, state, coalesce(wait_event_type || ':' ||"
                " wait_event, 'CPU'), query FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND application_name LIKE 'spawnpoint-%%' AND state <> 'idle'"
            ).fetchall()
            self.samples += 1
            for app, state, wait, query in rows:
                role = app.removeprefix("spawnpoint-").rstrip("0123456789").rstrip("-")
                key = (role, state, wait, query_kind(query or ""))
                self.counts[key] = self.counts.get(key, 0) + 1

    def average(self) -> dict[tuple[str, str, str, str], float]:
        """Average sessions in each (process, state, wait, statement) over the samples."""
        return {k: v / max(1, self.samples) for k, v in self.counts.items()}


# --------------------------------------------------------------------------- the spawn load


@dataclass
class Sample:
    sent_wall: float  # time.time() just before the request was written
    latency: float  # seconds until the whole response was read
    status: int
    workspace_id: uuid.UUID | None
    measured: bool  # sent after the warm-up and answered before the end


@dataclass
class LoadRun:
    samples: list[Sample]
    measure_from_wall: float
    stop_at_wall: float
    seconds: float
    errors: list[str]
    cpu: dict[str, float]


async def _spawn_load(
    port: int,
    token: str,
    body: bytes,
    clients: int,
    warmup: float,
    seconds: float,
    meter: CpuMeter,
    activity: ActivitySampler,
    rate: float = 0.0,
) -> LoadRun:
    """`clients` keep-alive connections POSTing `body`; records every request.

    In a closed loop (each client sends its next request when it has the answer), or with
    `rate` > 0 on a fixed schedule of `rate` requests per second shared by the clients: a
    request's latency then counts from its scheduled time, so a request that waited for a
    free client is not reported as faster than it was (no coordinated omission).
    `meter` is read and `activity` sampled over the measured part only.
    """
    head = (
        f"POST /api/spawn HTTP/1.1\r\nHost: {LOCALHOST}:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    request = head + body
    samples: list[Sample] = []
    errors: list[str] = []
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    wall_offset = time.time() - time.perf_counter()
    schedule = itertools.count()

    async def client() -> None:
        reader, writer = await asyncio.open_connection(LOCALHOST, port)
        try:
            while True:
                sent = time.perf_counter()
                if rate > 0:
                    sent = start + next(schedule) / rate
                    await asyncio.sleep(max(0.0, sent - time.perf_counter()))
                if sent >= stop_at:
                    return
                sent_wall = sent + wall_offset
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                payload = await reader.readexactly(length)
                done = time.perf_counter()
                status = int(status_line.split()[1]) if status_line else 0
                workspace_id = None
                if status == 202:
                    workspace_id = uuid.UUID(json.loads(payload)["workspace"]["id"])
                elif len(errors) < 5:
                    errors.append(f"{status}: {payload[:300]!r}")
                samples.append(
                    Sample(
                        sent_wall=sent_wall,
                        latency=done - sent,
                        status=status,
                        workspace_id=workspace_id,
                        measured=sent >= measure_from and done <= stop_at,
                    )
                )
        finally:
            writer.close()

    cpu: list[dict[str, float]] = []

    async def sample_cpu() -> None:
        for at in (measure_from, stop_at):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            cpu.append(await asyncio.to_thread(meter.mark))
            if at == measure_from:
                activity.__enter__()
        activity.__exit__()

    sampler = asyncio.create_task(sample_cpu())
    results = await asyncio.gather(*(client() for _ in range(clients)), return_exceptions=True)
    await sampler
    failures = [r for r in results if isinstance(r, BaseException)]
    errors.extend(f"connection failed: {f!r}" for f in failures[:3])
    if len(failures) == len(results):
        raise RuntimeError(f"every load connection failed: {failures[0]!r}")
    return LoadRun(
        samples=samples,
        measure_from_wall=measure_from + wall_offset,
        stop_at_wall=stop_at + wall_offset,
        seconds=seconds,
        errors=errors,
        cpu=cpu_delta(cpu[0], cpu[1]),
    )


def run_spawn_load(
    port: int,
    token: str,
    body: bytes,
    *,
    clients: int,
    warmup: float,
    seconds: float,
    meter: CpuMeter,
    activity: ActivitySampler,
    rate: float = 0.0,
) -> LoadRun:
    return run_async(
        _spawn_load(port, token, body, clients, warmup, seconds, meter, activity, rate)
    )


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on uvloop when it is installed (as the servers do), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


# --------------------------------------------------------------------------- after the load


@dataclass
class Timeline:
    provisioning: dict[uuid.UUID, float]  # workspace -> wall time of pending -> provisioning
    running: dict[uuid.UUID, float]  # workspace -> wall time of provisioning -> running


TABLE_READS = "rows read: "
TABLE_ROWS = 8  # the busiest tables shown


def db_rows(rounds: Sequence[SpawnRound]) -> list[str]:
    """The database-wide counters, then the tables read most per spawn."""
    names = list(rounds[0].db_per_spawn)
    tables = sorted(
        (n for n in names if n.startswith(TABLE_READS)),
        key=lambda n: median([r.db_per_spawn.get(n, 0.0) for r in rounds]),
        reverse=True,
    )
    return [n for n in names if not n.startswith(TABLE_READS)] + tables[:TABLE_ROWS]


def db_counters(conn: psycopg.Connection[Any]) -> dict[str, float]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted,"
        " tup_returned, tup_fetched FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    keys = ("commits", "rollbacks", "inserted", "updated", "deleted", "returned", "fetched")
    counters = {k: float(v) for k, v in zip(keys, row, strict=True)}
    # Per table: rows read by sequential scans and fetched through indexes (a scan that
    # should have been an index lookup shows up here).
    for relname, seq_read, idx_fetch in conn.execute(
        "SELECT relname, seq_tup_read, coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables"
    ).fetchall():
        counters[f"{TABLE_READS}{relname} (seq)"] = float(seq_read)
        counters[f"{TABLE_READS}{relname} (index)"] = float(idx_fetch)
    return counters


def drain(
    conn: psycopg.Connection[Any], tenant_id: uuid.UUID, limit: float
) -> tuple[int, float, int]:
    """Wait until no workspace of the tenant is short of `running`.

    Returns (workspaces left over, seconds waited, queries sent).
    """
    started = time.monotonic()
    polls = 0
    while True:
        polls += 1
        row = conn.execute(
            "SELECT count(*) FROM workspaces WHERE tenant_id = %s AND state <> 'running'",
            (tenant_id,),
        ).fetchone()
        left = int(row[0]) if row else -1
        waited = time.monotonic() - started
        if left == 0 or waited >= limit:
            return left, waited, polls
        time.sleep(0.1)


def timeline(conn: psycopg.Connection[Any], tenant_id: uuid.UUID) -> Timeline:
    rows = conn.execute(
        "SELECT workspace_id, to_state, extract(epoch FROM at)::float8 FROM workspace_events"
        " WHERE tenant_id = %s AND to_state IN ('provisioning', 'running')",
        (tenant_id,),
    ).fetchall()
    provisioning: dict[uuid.UUID, float] = {}
    running: dict[uuid.UUID, float] = {}
    for workspace_id, to_state, at in rows:
        target = running if to_state == "running" else provisioning
        # The first event of each kind: a retried provision moves once only anyway.
        target[workspace_id] = min(at, target.get(workspace_id, at))
    return Timeline(provisioning, running)


def job_counts(conn: psycopg.Connection[Any], tenant_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE state = 'failed'),"
        " count(*) FILTER (WHERE attempts > 1),"
        " count(*) FILTER (WHERE state NOT IN ('succeeded', 'failed', 'cancelled')),"
        " count(*) FILTER (WHERE state = 'succeeded'), count(*)"
        " FROM jobs WHERE tenant_id = %s",
        (tenant_id,),
    ).fetchone()
    assert row is not None
    failed, retried, unfinished, succeeded, total = (int(v) for v in row)
    # Failed attempts leave a line in the job's log even when a retry then succeeded.
    attempts = conn.execute(
        "SELECT count(*), min(l.line) FROM job_logs l JOIN jobs j ON j.id = l.job_id"
        " WHERE j.tenant_id = %s AND l.line LIKE 'attempt %% failed%%'",
        (tenant_id,),
    ).fetchone()
    assert attempts is not None
    return {
        "failed": failed,
        "retried": retried,
        "unfinished": unfinished,
        "succeeded": succeeded,
        "total": total,
        "failed_attempts": int(attempts[0]),
        "first_failure": (attempts[1] or "")[-600:],
    }


@dataclass
class SpawnRound:
    accepted: int  # 202s in the measured window
    rejected: int  # other statuses in the measured window
    rps: float
    api_p50_ms: float
    api_p99_ms: float
    r2r_p50_ms: float
    r2r_p99_ms: float
    r2r_max_ms: float
    not_running_at_end: int
    not_running_after_drain: int
    drain_seconds: float
    jobs: dict[str, Any]
    segments: dict[str, tuple[float, float]]  # name -> (p50 ms, p99 ms)
    cpu_ms_per_spawn: dict[str, float]
    machine_busy: float  # fraction of all cores busy during the measured window
    db_per_spawn: dict[str, float]
    activity: dict[tuple[str, str, str, str], float]
    errors: list[str] = field(default_factory=list)


def analyse(
    run: LoadRun,
    line: Timeline,
    *,
    left_after_drain: int,
    drain_seconds: float,
    jobs: dict[str, Any],
    db_delta: dict[str, float],
    activity: dict[tuple[str, str, str, str], float],
) -> SpawnRound:
    measured = [s for s in run.samples if s.measured]
    ok = [s for s in measured if s.status == 202 and s.workspace_id is not None]
    r2r, api, to_claim, handler = [], [], [], []
    not_running = 0
    for s in ok:
        assert s.workspace_id is not None
        api.append(s.latency)
        ran = line.running.get(s.workspace_id)
        if ran is None or ran > run.stop_at_wall:
            not_running += 1
        if ran is not None:
            r2r.append(ran - s.sent_wall)
        prov = line.provisioning.get(s.workspace_id)
        if prov is not None:
            to_claim.append(prov - (s.sent_wall + s.latency))
            if ran is not None:
                handler.append(ran - prov)
    # Work done by the workers inside the measured window, for their CPU per spawn.
    ran_in_window = sum(
        1 for at in line.running.values() if run.measure_from_wall <= at <= run.stop_at_wall
    )
    all_accepted = sum(1 for s in run.samples if s.status == 202)
    cpu = run.cpu
    per_spawn = {
        "api": 1000 * cpu["api"] / max(1, len(ok)),
        "workers": 1000 * cpu["workers"] / max(1, ran_in_window),
        "postgres": 1000 * cpu["postgres"] / max(1, len(ok)),
        "load generator": 1000 * cpu["loadgen"] / max(1, len(ok)),
        "machine": 1000 * cpu["machine"] / max(1, len(ok)),
    }

    def ms(values: list[float], q: float) -> float:
        return 1000 * percentile(values, q)

    return SpawnRound(
        accepted=len(ok),
        rejected=len(measured) - len(ok),
        rps=len(ok) / run.seconds,
        api_p50_ms=ms(api, 50),
        api_p99_ms=ms(api, 99),
        r2r_p50_ms=ms(r2r, 50),
        r2r_p99_ms=ms(r2r, 99),
        r2r_max_ms=1000 * max(r2r) if r2r else float("nan"),
        not_running_at_end=not_running,
        not_running_after_drain=left_after_drain,
        drain_seconds=drain_seconds,
        jobs=jobs,
        segments={
            "API: send -> 202 read": (ms(api, 50), ms(api, 99)),
            "queue: 202 read -> provisioning": (ms(to_claim, 50), ms(to_claim, 99)),
            "handler: provisioning -> running": (ms(handler, 50), ms(handler, 99)),
        },
        cpu_ms_per_spawn=per_spawn,
        machine_busy=cpu["machine"] / cpu["machine_total"] if cpu["machine_total"] else 0.0,
        db_per_spawn={k: v / max(1, all_accepted) for k, v in db_delta.items()},
        activity=activity,
        errors=run.errors,
    )


# --------------------------------------------------------------------------- the baseline


BASELINE_AUTH = (
    "SELECT u.tenant_id, u.role, u.status, t.status FROM users u"
    " JOIN tenants t ON t.id = u.tenant_id WHERE u.id = %s"
)
BASELINE_TENANT = (
    "SELECT t.id, t.name, t.slug, t.status, p.id, p.name, p.max_workspaces, p.max_cpu,"
    " p.max_memory_mb, p.max_storage_gb, p.monthly_budget FROM tenants t"
    " JOIN plans p ON p.id = t.plan_id WHERE t.id = %s"
)
BASELINE_LOCK = BASELINE_TENANT + " FOR UPDATE OF t"
BASELINE_TEMPLATE = (
    "SELECT tp.id, tp.name, v.version, v.provisioner, v.spec FROM templates tp"
    " JOIN template_versions v ON v.template_id = tp.id AND v.version = tp.current_version"
    " WHERE tp.id = %s AND (tp.tenant_id = %s OR tp.tenant_id IS NULL)"
)
BASELINE_USAGE = (
    "SELECT workspaces, cpu, memory_mb, storage_gb FROM tenant_usage WHERE tenant_id = %(tenant)s"
)
BASELINE_WORKSPACE = (
    "INSERT INTO workspaces (id, tenant_id, project_id, owner_id, template_id, template_version,"
    " provisioner, name, state, external_ref, parameters, cpu, memory_mb, storage_gb,"
    " idle_timeout_minutes, connection, driver_state, error, started_at, last_activity_at,"
    " expires_at, created_at, updated_at) VALUES (%s, %s, NULL, %s, %s, %s, %s, %s, 'pending',"
    " NULL, '{}', %s, %s, %s, NULL, NULL, '{}', NULL, NULL, %s, NULL, %s, %s)"
)
BASELINE_EVENT = (
    "INSERT INTO workspace_events (id, workspace_id, tenant_id, from_state, to_state, actor,"
    " actor_id, reason, at) VALUES (%s, %s, %s, NULL, 'pending', 'user', %s, 'spawned', %s)"
)
BASELINE_JOB = (
    "INSERT INTO jobs (id, type, payload, tenant_id, project_id, actor_id, state, attempts,"
    " max_attempts, run_after, lease_owner, lease_expires_at, fencing_token, cancel_requested,"
    " idempotency_key, result, error, started_at, finished_at, created_at, updated_at)"
    " VALUES (%s, 'bench.baseline', %s, %s, NULL, %s, 'queued', 0, 5, %s, NULL, NULL, 0, false,"
    " NULL, NULL, NULL, NULL, NULL, %s, %s)"
)
# A job's entry in the queue's narrow table, written with it (as `queue.enqueue_with` does).
BASELINE_JOB_STATE = (
    "INSERT INTO job_states (job_id, tenant_id, type, state, run_after)"
    " VALUES (%s, %s, 'bench.baseline', 'queued', %s)"
)


@dataclass
class BaselineRound:
    connections: int
    commits: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_spawn: dict[str, float]

    @property
    def rps(self) -> float:
        return self.commits / self.seconds


async def _baseline(
    url: str,
    tenant: TenantSeed,
    connections: int,
    warmup: float,
    seconds: float,
    meter: CpuMeter,
    lock: bool,
) -> BaselineRound:
    conns = [await psycopg.AsyncConnection.connect(url) for _ in range(connections)]
    latencies: list[float] = []
    commits = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds
    usage_params = {"tenant": tenant.tenant_id}
    tenant_query = BASELINE_LOCK if lock else BASELINE_TENANT

    async def spawner(conn: psycopg.AsyncConnection[Any]) -> None:
        nonlocal commits
        while (sent := time.perf_counter()) < stop_at:
            now = datetime.now(UTC)
            workspace_id, event_id, job_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
            async with conn.transaction():
                await (await conn.execute(BASELINE_AUTH, (tenant.user_id,))).fetchone()
                await (await conn.execute(tenant_query, (tenant.tenant_id,))).fetchone()
                template = await (
                    await conn.execute(BASELINE_TEMPLATE, (tenant.template_id, tenant.tenant_id))
                ).fetchone()
                assert template is not None
                await (await conn.execute(BASELINE_USAGE, usage_params)).fetchone()
                spec = template[4]
                await conn.execute(
                    BASELINE_WORKSPACE,
                    (
                        workspace_id,
                        tenant.tenant_id,
                        tenant.user_id,
                        tenant.template_id,
                        template[2],
                        template[3],
                        template[1],
                        spec["cpu"],
                        spec["memory_mb"],
                        spec["storage_gb"],
                        now,
                        now,
                        now,
                    ),
                )
                await conn.execute(
                    BASELINE_EVENT, (event_id, workspace_id, tenant.tenant_id, tenant.user_id, now)
                )
                await conn.execute(
                    BASELINE_JOB,
                    (
                        job_id,
                        json.dumps({"workspace_id": str(workspace_id)}),
                        tenant.tenant_id,
                        tenant.user_id,
                        now,
                        now,
                        now,
                    ),
                )
                await conn.execute(BASELINE_JOB_STATE, (job_id, tenant.tenant_id, now))
                await conn.execute("SELECT pg_notify('spawnpoint_jobs', '')")
            done = time.perf_counter()
            if sent >= measure_from and done <= stop_at:
                commits += 1
                latencies.append(done - sent)

    cpu: list[dict[str, float]] = []

    async def sample_cpu() -> None:
        for at in (measure_from, stop_at):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            cpu.append(await asyncio.to_thread(meter.mark))

    try:
        sampler = asyncio.create_task(sample_cpu())
        await asyncio.gather(*(spawner(c) for c in conns))
        await sampler
    finally:
        for conn in conns:
            await conn.close()
    used = cpu_delta(cpu[0], cpu[1])
    return BaselineRound(
        connections=connections,
        commits=commits,
        seconds=seconds,
        p50_ms=1000 * percentile(latencies, 50),
        p99_ms=1000 * percentile(latencies, 99),
        cpu_ms_per_spawn={
            "load generator": 1000 * used["loadgen"] / max(1, commits),
            "postgres": 1000 * used["postgres"] / max(1, commits),
            "machine": 1000 * used["machine"] / max(1, commits),
        },
    )


def connection_headroom(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('max_connections')::int"
            " - current_setting('superuser_reserved_connections')::int"
            " - (SELECT count(*) FROM pg_stat_activity)"
        ).fetchone()
    return int(row[0]) if row else 0


def run_baseline(
    db: ScratchDatabase,
    tenant: TenantSeed,
    *,
    connections: int,
    warmup: float,
    seconds: float,
    lock: bool = True,
) -> BaselineRound:
    """The spawn transaction's statements in raw SQL; `lock=False` leaves out FOR UPDATE."""
    # The server is shared: never take the last connection slots from other users.
    usable = min(connections, connection_headroom(db.url) - 10)
    if usable < 1:
        raise RuntimeError("the PostgreSQL server has no free connection slots for the baseline")
    meter = CpuMeter(db.name, {"loadgen": [os.getpid()]})
    try:
        return run_async(_baseline(db.url, tenant, usable, warmup, seconds, meter, lock))
    finally:
        meter.close()


# --------------------------------------------------------------------------- processes


def wait_for_workers(
    db: ScratchDatabase,
    workers: Sequence[subprocess.Popen[bytes]],
    logs: Sequence[Path],
    timeout: float = 30.0,
) -> None:
    """Until every worker has its LISTEN connection open (it then claims at once when woken)."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(db.url, autocommit=True) as conn:
        while True:
            for process, log in zip(workers, logs, strict=True):
                if process.poll() is not None:
                    raise RuntimeError(
                        f"a worker exited with {process.returncode}:\n{log_tail(log)}"
                    )
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND query = %s",
                (LISTEN_QUERY,),
            ).fetchone()
            if row and row[0] >= len(workers):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the workers did not LISTEN within {timeout:.0f} s")
            time.sleep(0.1)


@contextlib.contextmanager
def profiling(
    py_spy: list[str] | None, out: Path | None, pids: dict[str, int], seconds: float
) -> Iterator[None]:
    """py-spy record each process for `seconds` (collapsed stacks to OUT/NAME.txt)."""
    if py_spy is None or out is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    recorders = [
        subprocess.Popen(
            [
                *py_spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(max(1, round(seconds))),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(out / f"{name}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=(out / f"{name}.py-spy.log").open("wb"),
        )
        for name, pid in pids.items()
    ]
    try:
        yield
    finally:
        for recorder in recorders:
            try:
                recorder.wait(timeout=seconds + 20)
            except subprocess.TimeoutExpired:
                recorder.kill()


def spawn_round(
    n: int,
    tenant: TenantSeed,
    token: str,
    args: argparse.Namespace,
    *,
    api: Server,
    workers: Sequence[subprocess.Popen[bytes]],
    worker_logs: Sequence[Path],
    meter: CpuMeter,
    control: psycopg.Connection[Any],
    monitor: psycopg.Connection[Any],
    py_spy: list[str] | None,
    rate: float = 0.0,
) -> SpawnRound:
    """One measured round on `tenant`: load, drain, then read the timeline from the database.

    With `rate`, the load is paced at that many spawns per second (`--paced-*` timings).
    """
    body = json.dumps({"template_id": str(tenant.template_id)}).encode()
    counters_before = db_counters(control)
    profiled = {
        "api": api.process.pid,
        **{log.stem: w.pid for w, log in zip(workers, worker_logs, strict=True)},
    }
    activity = ActivitySampler(monitor)
    warmup, seconds = (
        (args.paced_warmup, args.paced_seconds) if rate else (args.warmup, args.seconds)
    )
    with profiling(py_spy, args.profile, profiled, warmup + seconds):
        run = run_spawn_load(
            api.port,
            token,
            body,
            clients=args.clients,
            warmup=warmup,
            seconds=seconds,
            meter=meter,
            activity=activity,
            rate=rate,
        )
    for process, log in [(api.process, api.log_path), *zip(workers, worker_logs, strict=True)]:
        if process.poll() is not None:
            raise RuntimeError(f"{log.stem} died under load:\n{log_tail(log)}")
    left, waited, polls = drain(control, tenant.tenant_id, args.drain)
    time.sleep(1.2)  # backends flush their statistics at most once a second
    counters = cpu_delta(counters_before, db_counters(control))
    # Not spawnpoint's work: each sample, poll and the first reading was one transaction.
    counters["commits"] -= activity.samples + polls + 2
    result = analyse(
        run,
        timeline(control, tenant.tenant_id),
        left_after_drain=left,
        drain_seconds=waited,
        jobs=job_counts(control, tenant.tenant_id),
        db_delta=counters,
        activity=activity.average(),
    )
    print(
        f"round {n + 1} spawnpoint{f' at {rate:g}/s' if rate else ''}: "
        f"{result.rps:7.1f} spawns/s   API p50 "
        f"{result.api_p50_ms:6.1f} ms  p99 {result.api_p99_ms:6.1f} ms   "
        f"request-to-running p50 {result.r2r_p50_ms:6.1f} ms  p99 "
        f"{result.r2r_p99_ms:7.1f} ms   unfinished at end {result.not_running_at_end}"
        f", after {result.drain_seconds:.1f} s drain {result.not_running_after_drain}"
        f"   jobs failed {result.jobs['failed']}   CPU ms/spawn: "
        + ", ".join(f"{k} {v:.1f}" for k, v in result.cpu_ms_per_spawn.items()),
        flush=True,
    )
    for error in result.errors:
        print(f"  error: {error}", flush=True)
    if result.jobs["failed_attempts"]:
        print(
            f"  {result.jobs['failed_attempts']} failed job attempts, e.g.\n"
            f"{result.jobs['first_failure']}",
            flush=True,
        )
    return result


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds per round")
    parser.add_argument("--warmup", type=float, default=3, help="discarded seconds per round")
    parser.add_argument(
        "--drain",
        type=float,
        default=15,
        help="longest wait after the load for every spawn to reach running",
    )
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients")
    parser.add_argument("--workers", type=int, default=2, help="`spawnpoint worker` processes")
    parser.add_argument("--concurrency", type=int, default=16, help="--concurrency per worker")
    parser.add_argument(
        "--rate",
        type=float,
        default=GOAL_SPAWNS_PER_SECOND,
        help="after each closed-loop round, load a fresh tenant at this steady rate (spawns/s) "
        "and measure request-to-running there (0: skip)",
    )
    parser.add_argument("--paced-seconds", type=float, default=6, help="measured paced seconds")
    parser.add_argument("--paced-warmup", type=float, default=1, help="discarded paced seconds")
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=3,
        help="measured seconds of the baseline per round (0: no baseline)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the API and workers during round 1, into this directory",
    )
    parser.add_argument(
        "--py-spy",
        default=None,
        help="py-spy command (default: py-spy on PATH), e.g. 'uv tool run py-spy'",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="also write the medians (the table's figures) to this JSON file",
    )
    parser.add_argument(
        "--result-name",
        default="spawn.md",
        help="the file under bench/results/ the table goes to (default spawn.md)",
    )
    parser.add_argument(
        "--spawnpoint",
        default=None,
        help="the spawnpoint command to benchmark (default: the one next to this Python), "
        "e.g. a wrapper that applies a candidate change",
    )
    args = parser.parse_args()
    per_round = (
        args.warmup
        + args.seconds
        + 4
        + (2 * (args.baseline_seconds + 1.5) if args.baseline_seconds else 0)
        + (args.paced_warmup + args.paced_seconds + 2.5 if args.rate else 0)
    )
    budget = SETUP_SECONDS + args.rounds * per_round + args.drain
    if budget > WATCHDOG_SECONDS - 10:
        parser.error(f"about {budget:.0f} s is over the 3-minute budget; lower --rounds/--seconds")
    return args


@dataclass
class Rounds:
    spawn: list[SpawnRound] = field(default_factory=list)
    paced: list[SpawnRound] = field(default_factory=list)
    baseline: list[BaselineRound] = field(default_factory=list)
    baseline_unlocked: list[BaselineRound] = field(default_factory=list)


def main() -> int:
    args = parse_args()
    raise_on_sigterm(deadline=WATCHDOG_SECONDS)
    started = time.monotonic()
    spawnpoint = shlex.split(args.spawnpoint) if args.spawnpoint else venv_command("spawnpoint")
    py_spy: list[str] | None = None
    if args.profile is not None:
        py_spy = (
            shlex.split(args.py_spy)
            if args.py_spy
            else ([found] if (found := shutil.which("py-spy")) else None)
        )
        if py_spy is None:
            raise RuntimeError("--profile needs py-spy on PATH or --py-spy")
    results = Rounds()
    with contextlib.ExitStack() as stack:
        deployment = migrated_deployment(
            stack,
            "spawn",
            spawnpoint,
            jwt_secret=JWT_SECRET,
            pool_size=API_POOL_SIZE,
            PROVISIONER="dry-run",
        )
        workdir, db, env = deployment.workdir, deployment.db, deployment.env
        # Two tenants per spawnpoint round (closed loop, paced); two more for the baselines.
        tenants = seed(db, 4 * args.rounds)
        paced_tenants = tenants[3 * args.rounds :]
        unlocked_tenants = tenants[2 * args.rounds : 3 * args.rounds]
        tenants, locked_tenants = tenants[: args.rounds], tenants[args.rounds : 2 * args.rounds]
        base_db = None
        if args.baseline_seconds > 0:
            # A copy taken now: the same schema, plan, tenants and templates, none of the load.
            base_db = stack.enter_context(
                scratch_database("spawnpoint_bench_spawn_base", template=db.name)
            )
        # Opened now (after the copy, which needs the source database to itself), before
        # spawnpoint's pools fill a shared server's connection slots.
        control = stack.enter_context(psycopg.connect(db.url, autocommit=True))
        monitor = stack.enter_context(psycopg.connect(db.url, autocommit=True))
        if base_db is not None:
            # Before spawnpoint's processes start: their pools keep up to ~50 idle connections,
            # and the server (shared with other users) may not have 32 more to spare.
            for n in range(args.rounds):
                for lock, tenant, kept in (
                    (True, locked_tenants[n], results.baseline),
                    (False, unlocked_tenants[n], results.baseline_unlocked),
                ):
                    base = run_baseline(
                        base_db,
                        tenant,
                        connections=args.clients,
                        warmup=1.0,
                        seconds=args.baseline_seconds,
                        lock=lock,
                    )
                    kept.append(base)
                    print(
                        f"round {n + 1} baseline{'' if lock else ' without tenant lock'}: "
                        f"{base.rps:7.1f} spawn txns/s   p50 {base.p50_ms:6.1f} ms  p99 "
                        f"{base.p99_ms:6.1f} ms  ({base.connections} connections)",
                        flush=True,
                    )
        tokens = [
            run_checked(
                [*spawnpoint, "token", "create", "--user", t.email, "--ttl", "1h"],
                env=env,
                cwd=workdir,
                timeout=60,
            ).strip()
            for t in [*tenants, *paced_tenants]
        ]
        # The most connections spawnpoint's pools may open (pool + overflow; workers size
        # theirs to concurrency + 2, plus a LISTEN connection each).
        wanted = 2 * API_POOL_SIZE + args.workers * (2 * (args.concurrency + 2) + 1)
        headroom = connection_headroom(db.url)
        if headroom < wanted:
            print(
                f"warning: the PostgreSQL server has {headroom} free connection slots and "
                f"spawnpoint may open up to {wanted}: expect 'too many clients' errors",
                flush=True,
            )
        port = free_port()
        api: Server = stack.enter_context(
            server_process(
                "api",
                [
                    *spawnpoint,
                    "serve",
                    "--no-worker",
                    "--no-migrate",
                    "--host",
                    LOCALHOST,
                    "--port",
                    str(port),
                ],
                env={**env, "PORT": str(port), "PGAPPNAME": "spawnpoint-api"},
                port=port,
                cwd=workdir,
                ready_path="/health",
            )
        )
        workers = [
            stack.enter_context(
                background_process(
                    f"worker-{n}",
                    [*spawnpoint, "worker", "--concurrency", str(args.concurrency)],
                    env={**env, "PGAPPNAME": f"spawnpoint-worker-{n}"},
                    cwd=workdir,
                )
            )
            for n in range(args.workers)
        ]
        worker_logs = [workdir / f"worker-{n}.log" for n in range(args.workers)]
        wait_for_workers(db, workers, worker_logs)
        meter = CpuMeter(
            db.name,
            {
                "api": [api.process.pid],
                "workers": [w.pid for w in workers],
                "loadgen": [os.getpid()],
            },
        )
        stack.callback(meter.close)
        print(
            f"load: python-asyncio (uvloop), {args.clients} clients, {args.warmup:g} s warm-up + "
            f"{args.seconds:g} s per round; {args.workers} workers x concurrency "
            f"{args.concurrency}; set-up took {time.monotonic() - started:.0f} s",
            flush=True,
        )
        for n, tenant in enumerate(tenants):
            if time.monotonic() - started > WATCHDOG_SECONDS - 10 - (
                args.warmup
                + args.seconds
                + args.drain
                + args.baseline_seconds
                + 5
                + (args.paced_warmup + args.paced_seconds + 2.5 if args.rate else 0)
            ):
                print(f"stopping after {n} rounds to stay within the time budget", flush=True)
                break
            runs = [(tenant, tokens[n], 0.0, results.spawn)]
            if args.rate > 0:
                runs.append((paced_tenants[n], tokens[args.rounds + n], args.rate, results.paced))
            for run_tenant, token, rate, into in runs:
                into.append(
                    spawn_round(
                        n,
                        run_tenant,
                        token,
                        args,
                        api=api,
                        workers=workers,
                        worker_logs=worker_logs,
                        meter=meter,
                        control=control,
                        monitor=monitor,
                        py_spy=py_spy if n == 0 and not rate else None,
                        rate=rate,
                    )
                )
    if not results.spawn:
        raise RuntimeError("no round completed")
    report = render(results, args, code_version(spawnpoint))
    if args.json is not None:
        args.json.write_text(json.dumps({**summary(results), "goals_met": goals_met(results)}))
    path = write_result(args.result_name, report)
    print()
    print(report)
    print(f"written to {path}")
    print(f"total {time.monotonic() - started:.0f} s")
    return 0 if goals_met(results) else 1


def summary(results: Rounds) -> dict[str, float]:
    s = results.spawn
    return {
        "rps": median([r.rps for r in s]),
        "api_p50": median([r.api_p50_ms for r in s]),
        "api_p99": median([r.api_p99_ms for r in s]),
        "r2r_p50": median([r.r2r_p50_ms for r in s]),
        "r2r_p99": median([r.r2r_p99_ms for r in s]),
        "not_running_end": median([r.not_running_at_end for r in s]),
        "left": max(r.not_running_after_drain for r in s),
        "failed": max(r.jobs["failed"] for r in s),
        "retried": max(r.jobs["retried"] for r in s),
        "rejected": max(r.rejected for r in s),
        # spawnpoint's own processes and their database backends, per spawn
        "cpu_ms": median(
            [sum(r.cpu_ms_per_spawn[k] for k in ("api", "workers", "postgres")) for r in s]
        ),
        **(
            {
                "paced_rps": median([r.rps for r in results.paced]),
                "paced_r2r_p50": median([r.r2r_p50_ms for r in results.paced]),
                "paced_r2r_p99": median([r.r2r_p99_ms for r in results.paced]),
                "paced_left": max(r.not_running_after_drain for r in results.paced),
                "paced_failed": max(r.jobs["failed"] for r in results.paced),
                "paced_rejected": max(r.rejected for r in results.paced),
            }
            if results.paced
            else {}
        ),
    }


def goals_met(results: Rounds) -> bool:
    m = summary(results)
    # The latency goal is judged at the goal's rate: in the closed loop, 32 clients keep 32
    # spawns in flight, so latency there is 32 / throughput by construction (Little's law).
    return (
        m["rps"] >= GOAL_SPAWNS_PER_SECOND
        and "paced_r2r_p99" in m
        and m["paced_r2r_p99"] <= GOAL_P99_MS
        and m["paced_rps"] >= 0.95 * GOAL_SPAWNS_PER_SECOND
        and max(m["left"], m["paced_left"], m["failed"], m["paced_failed"]) == 0
        and max(m["rejected"], m["paced_rejected"]) == 0
    )


def code_version(command: Sequence[str]) -> str:
    """What was measured: the command, and the repository's HEAD and whether src/ differs."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except OSError:
        head, dirty = "", ""
    state = f"repository HEAD {head or '?'}" + (", src/ has uncommitted changes" if dirty else "")
    return f"`{shlex.join(command)}` ({state})"


def _med(rounds: Sequence[Any], attr: str) -> float:
    return median([getattr(r, attr) for r in rounds]) if rounds else float("nan")


def render(results: Rounds, args: argparse.Namespace, code: str) -> str:
    m = summary(results)
    spawn = results.spawn
    b, bu = results.baseline, results.baseline_unlocked

    def verdict(ok: bool) -> str:
        return "yes" if ok else "**no**"

    def f1(value: float) -> str:
        return "" if value != value else f"{value:.1f}"  # NaN: no baseline

    main_table = markdown_table(
        ["metric", "spawnpoint", "baseline: raw SQL", "... without tenant lock", "goal", "met"],
        [
            (
                "accepted spawns/s (202)",
                f"{m['rps']:.1f}",
                f1(_med(b, "rps")),
                f1(_med(bu, "rps")),
                f">= {GOAL_SPAWNS_PER_SECOND:g}",
                verdict(m["rps"] >= GOAL_SPAWNS_PER_SECOND),
            ),
            (
                "API latency p50 ms (baselines: transaction)",
                f"{m['api_p50']:.1f}",
                f1(_med(b, "p50_ms")),
                f1(_med(bu, "p50_ms")),
                "",
                "",
            ),
            (
                "API latency p99 ms (baselines: transaction)",
                f"{m['api_p99']:.1f}",
                f1(_med(b, "p99_ms")),
                f1(_med(bu, "p99_ms")),
                "",
                "",
            ),
            ("request-to-running p50 ms (closed loop)", f"{m['r2r_p50']:.1f}", "", "", "", ""),
            ("request-to-running p99 ms (closed loop)", f"{m['r2r_p99']:.1f}", "", "", "", ""),
            *(
                [
                    (
                        f"paced at {args.rate:g}/s: accepted spawns/s",
                        f"{m['paced_rps']:.1f}",
                        "",
                        "",
                        f">= {0.95 * args.rate:g}",
                        verdict(m["paced_rps"] >= 0.95 * GOAL_SPAWNS_PER_SECOND),
                    ),
                    (
                        f"paced at {args.rate:g}/s: request-to-running p50 ms",
                        f"{m['paced_r2r_p50']:.1f}",
                        "",
                        "",
                        "",
                        "",
                    ),
                    (
                        f"paced at {args.rate:g}/s: request-to-running p99 ms",
                        f"{m['paced_r2r_p99']:.1f}",
                        "",
                        "",
                        f"<= {GOAL_P99_MS:g}",
                        verdict(m["paced_r2r_p99"] <= GOAL_P99_MS),
                    ),
                ]
                if "paced_r2r_p99" in m
                else []
            ),
            (
                "spawns not yet running when the load ended",
                f"{m['not_running_end']:.0f}",
                "",
                "",
                "",
                "",
            ),
            (
                "spawns not running after the drain (max)",
                f"{m['left']:.0f}",
                "",
                "",
                "0",
                verdict(m["left"] == 0),
            ),
            ("jobs failed (max)", f"{m['failed']:.0f}", "", "", "0", verdict(m["failed"] == 0)),
            ("jobs retried (max)", f"{m['retried']:.0f}", "", "", "", ""),
            (
                "non-202 answers (max)",
                f"{m['rejected']:.0f}",
                "",
                "",
                "0",
                verdict(m["rejected"] == 0),
            ),
        ],
    )
    ratio = m["rps"] / _med(b, "rps") if b else float("nan")
    seg_table = markdown_table(
        ["segment of request-to-running", "p50 ms", "p99 ms"],
        [
            (
                name,
                f"{median([r.segments[name][0] for r in spawn]):.1f}",
                f"{median([r.segments[name][1] for r in spawn]):.1f}",
            )
            for name in spawn[0].segments
        ],
    )

    def cpu(rounds: Sequence[Any], name: str) -> str:
        values = [r.cpu_ms_per_spawn[name] for r in rounds if name in r.cpu_ms_per_spawn]
        return f"{median(values):.2f}" if values else ""

    cpu_table = markdown_table(
        ["process", "spawnpoint CPU ms/spawn", "baseline CPU ms/txn"],
        [(name, cpu(spawn, name), cpu(b, name)) for name in spawn[0].cpu_ms_per_spawn],
    )
    own = sum(
        median([r.cpu_ms_per_spawn[k] for r in spawn])
        for k in ("api", "workers", "postgres", "load generator")
    )
    api_ms = median([r.cpu_ms_per_spawn["api"] for r in spawn])
    cores = os.cpu_count() or 1
    db_table = markdown_table(
        ["database counter", "per accepted spawn"],
        [(name, f"{median([r.db_per_spawn[name] for r in spawn]):.1f}") for name in db_rows(spawn)],
    )
    keys = {k for r in spawn for k in r.activity}
    busiest = sorted(
        ((median([r.activity.get(k, 0.0) for r in spawn]), k) for k in keys),
        reverse=True,
    )[:ACTIVITY_ROWS]
    activity_table = markdown_table(
        ["process", "session state", "wait event", "last statement", "avg sessions"],
        [(*k, f"{v:.2f}") for v, k in busiest] or [("(no samples)", "", "", "", "")],
    )
    per_round = markdown_table(
        [
            "round",
            "spawns/s",
            "API p50",
            "API p99",
            "r2r p50",
            "r2r p99",
            "r2r max",
            "unfinished at end",
            "after drain",
            "drain s",
            "jobs failed",
            "machine busy",
            "baseline txns/s",
            "unlocked txns/s",
        ],
        [
            (
                n + 1,
                f"{r.rps:.1f}",
                f"{r.api_p50_ms:.1f}",
                f"{r.api_p99_ms:.1f}",
                f"{r.r2r_p50_ms:.1f}",
                f"{r.r2r_p99_ms:.1f}",
                f"{r.r2r_max_ms:.1f}",
                r.not_running_at_end,
                r.not_running_after_drain,
                f"{r.drain_seconds:.1f}",
                r.jobs["failed"],
                f"{100 * r.machine_busy:.0f}%",
                f"{b[n].rps:.1f}" if n < len(b) else "",
                f"{bu[n].rps:.1f}" if n < len(bu) else "",
            )
            for n, r in enumerate(spawn)
        ],
    )
    met = "MEETS" if goals_met(results) else "does NOT meet"
    base_conns = b[0].connections if b else 0
    paced = (
        f"; then, on another fresh tenant, the same clients at a steady {args.rate:g} spawns/s "
        f"for {args.paced_warmup:g} + {args.paced_seconds:g} s, latency counted from each "
        "request's scheduled time. "
        if args.rate > 0
        else ". "
    )
    return (
        f"# POST /api/spawn -> running: throughput and request-to-running latency\n\n"
        f"Median of {len(spawn)} rounds; load generator **python-asyncio (uvloop)**, "
        f"{args.clients} keep-alive clients in a closed loop, {args.warmup:g} s warm-up + "
        f"{args.seconds:g} s measured per round; 1 API process (`spawnpoint serve --no-worker`, "
        f"DATABASE_POOL_SIZE {API_POOL_SIZE}), {args.workers} x `spawnpoint worker "
        f"--concurrency {args.concurrency}`, `dry-run` template, one tenant (fresh per round)"
        f"{paced}"
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cores} CPUs, Python "
        f"{platform.python_version()}. Measured: {code}.\n\n"
        f"{main_table}\n\n"
        f"spawnpoint **{met}** the goals (>= {GOAL_SPAWNS_PER_SECOND:g} spawns/s, "
        f"request-to-running p99 <= {GOAL_P99_MS:g} ms at {args.rate:g} spawns/s, everything "
        f"running after the drain, no failed job, no error). In the closed loop, {args.clients} "
        f"clients keep {args.clients} spawns in flight, so request-to-running there is about "
        f"{args.clients} / throughput by construction: queueing in front of the tenant lock.\n\n"
        f"**spawnpoint / baseline throughput = {ratio:.2f}**. Baseline: the spawn transaction's "
        f"statements in raw SQL (user lookup, tenant row FOR UPDATE, template + version, usage "
        f"counters, insert workspace + event + job (the usage trigger fires), pg_notify, "
        f"commit) on {base_conns} "
        f"concurrent psycopg connections, no HTTP, ORM, policy or workers, "
        f"{args.baseline_seconds:g} s per round in a copy of the database, run before "
        f"spawnpoint's processes start "
        f"(connection slots); the last column is the same without FOR UPDATE.\n\n"
        f"CPU is the stable number on a shared machine: spawnpoint used **{own:.1f} ms of CPU "
        f"per spawn** (API + workers + its database backends + load generator), so even with all "
        f"{cores} cores to itself it could not exceed **{1000 * cores / own:.0f} spawns/s**; the "
        f"single API process alone caps at {1000 / api_ms:.0f} spawns/s. 100 spawns/s on "
        f"{cores} cores needs <= {10 * cores:.0f} ms per spawn in all.\n\n"
        f"Where the time goes (wall clock: client send/receive and `workspace_events.at`):\n\n"
        f"{seg_table}\n\n"
        f"CPU per spawn over the measured window (api and load generator per accepted spawn, "
        f"workers per workspace that reached running in the window, postgres = the backends "
        f"serving the bench database; machine = every process on every core, other users' "
        f"included):\n\n{cpu_table}\n\n"
        f"Database work per accepted spawn (pg_stat_database, warm-up to drain, this "
        f"script's own monitoring transactions subtracted; commits include read-only "
        f"transactions):\n\n"
        f"{db_table}\n\n"
        f"Database sessions of spawnpoint's processes during the measured window, sampled "
        f"every 20 ms from pg_stat_activity (non-idle sessions; `idle in transaction` = the "
        f"transaction waits for its process to send the next statement; wait event CPU = "
        f"running or runnable):\n\n{activity_table}\n\n"
        f"<details><summary>every round</summary>\n\n{per_round}\n\n</details>\n"
    )


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (RuntimeError, OSError, psycopg.Error) as exc:
        print(f"spawn: {exc}", file=sys.stderr)
        sys.exit(2)
