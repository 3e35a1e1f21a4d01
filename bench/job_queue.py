"""Job queue benchmark on PostgreSQL: spawnpoint's durable queue against PgQueuer, one run.

    .venv/bin/python bench/job_queue.py [--jobs 10000] [--workers 2] [--concurrency 32,100]
        [--rounds 1] [--batch-sizes 10,100] [--api-jobs 10000] [--api-clients 16]
        [--rate 50] [--seconds 5] [--pgqueuer pgqueuer==1.6.0] [--skip-api]

Everything runs against scratch databases on the server named by SPAWNPOINT_BENCH_PG_URL
(else SPAWNPOINT_TEST_PG_URL, else postgresql://postgres@127.0.0.1:5432/postgres), dropped
at the end, also on failure or Ctrl-C. Per round, in this order:

1. PgQueuer at each `--batch-sizes` (10 is its default): PyPI's `pgqueuer` with asyncpg
   (the driver it recommends), installed by this script into a scratch venv outside the repo
   (`~/.cache/spawnpoint-bench/pgqueuer`, `--pgqueuer` names the requirement; never a
   project dependency); its schema in a fresh database; `--workers` processes of
   `bench/_pgqueuer_peer.py`, one QueueManager each with a `noop` entrypoint; `--jobs` jobs
   enqueued in one statement once the workers are idle; jobs/s = jobs / (the last
   `successful` log row's time - the enqueue's commit).
2. spawnpoint, direct, at each `--concurrency` (slots per worker: a claim takes up to that
   many jobs, as PgQueuer's batch_size): `--workers` `spawnpoint worker --concurrency N`
   processes drain `--jobs` `noop` jobs enqueued in one transaction
   (`jobs.queue.enqueue`); jobs/s = jobs / (last finished_at - the enqueue's commit). After
   the first, the latency phase: `--rate` jobs/s, each in its own transaction, for
   `--seconds`; enqueue-to-start p50 and p99.
3. spawnpoint through the API (once, after the rounds): `spawnpoint serve --no-worker` and
   the same workers (the first `--concurrency`); `--api-clients` keep-alive clients POST
   `--api-jobs` `{"job_type": "noop"}` to `/api/jobs` as a tenant member (a plan with quotas
   out of reach); the enqueue rate (202s per second) and the end-to-end rate (jobs / (last
   finished_at - first request)), the workers draining while the API enqueues. Each of
   these jobs is a tenant's service job: its enqueue writes the job, its
   `service_job_enqueued` event and its audit entry; its completion a `service_job_completed`
   event.

Each drain also records where the time goes: the SQL statements per job the measured
processes sent (counted in the processes: `bench/_counted.py` wraps spawnpoint's psycopg,
the PgQueuer peer its driver), transactions per job (pg_stat_database `xact_commit`), and
CPU milliseconds per job of the workers, the API and the database backends serving the
measured processes (from /proc; the backends of this script's own connections excluded), with
the load average beside each figure: the machine is shared, so compare the ratios taken in
one run, not absolute numbers across runs.

Prints a Markdown table (also written to bench/results/job_queue.md). Exit status: 0 when
spawnpoint's direct drain is at least PgQueuer's default rate in every round (the floor), 1
when not, 2 on error; the goal (ahead of PgQueuer's best setting) is reported beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg

from _common import (
    LOCALHOST,
    REPO,
    ScratchDatabase,
    background_process,
    clean_env,
    free_port,
    log_tail,
    markdown_table,
    percentile,
    process_cpu_seconds,
    raise_on_sigterm,
    run_checked,
    scratch_database,
    server_process,
    venv_command,
    write_result,
)
from spawnpoint.db import Database
from spawnpoint.jobs.queue import CHANNEL, enqueue

PGQUEUER = "pgqueuer==1.6.0"
PGQUEUER_VENV = Path.home() / ".cache" / "spawnpoint-bench" / "pgqueuer"
PEER = Path(__file__).resolve().parent / "_pgqueuer_peer.py"
COUNTED = Path(__file__).resolve().parent / "_counted.py"
JWT_SECRET = "bench-job-queue-secret-0123456789abcdef"
LATENCY_GOAL_MS = 10.0
WARMUP_JOBS = 20
POLL_SECONDS = 0.05
STATS_SETTLE_SECONDS = 10.5


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


# --------------------------------------------------------------------------- measurement


class BackendCpu:
    """CPU seconds of the PostgreSQL backends serving one database, sampled from /proc.

    Backends come and go, so a thread reads each one's CPU a few times a second and keeps
    its last reading (as bench/spawn.py's CpuMeter does); `excluded` backends (this
    script's own connections) are left out of the sums.
    """

    def __init__(self, dbname: str) -> None:
        self.dbname = dbname
        self.excluded: set[int] = set()
        self._cpu: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backend cpu", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        needle = f" {self.dbname} ".encode()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                title = Path(entry.path, "cmdline").read_bytes()
                if not (title.startswith(b"postgres: ") and needle in title):
                    continue
                cpu = process_cpu_seconds(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
            with self._lock:
                self._cpu[int(entry.name)] = cpu

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def seconds(self) -> float:
        self._sample()
        with self._lock:
            return sum(cpu for pid, cpu in self._cpu.items() if pid not in self.excluded)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


@dataclass
class Measured:
    """A process whose CPU and SQL statements are counted (its stats file: see _counted.py)."""

    role: str
    process: subprocess.Popen[bytes]
    stats: Path
    log: Path

    def check(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.role} exited with {self.process.returncode}:\n{log_tail(self.log)}"
            )


Counter = collections.Counter[str]


def statement_snapshot(processes: Sequence[Measured], timeout: float = 10.0) -> dict[str, Counter]:
    """Statement counts so far by role (asks each process with SIGUSR1 for a fresh file)."""
    total: dict[str, Counter] = collections.defaultdict(collections.Counter)
    for measured in processes:
        before = _read_stats(measured.stats).get("seq", 0)
        measured.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while (stats := _read_stats(measured.stats)).get("seq", 0) <= before:
            measured.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{measured.role} wrote no statement counts")
            time.sleep(0.02)
        total[measured.role].update(stats["statements"])
    return dict(total)


def _read_stats(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data


def commits(conn: psycopg.Connection[Any]) -> int:
    """Committed transactions in the connection's database (pg_stat_database), flushed."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    assert row is not None
    return int(row[0])


@dataclass
class Mark:
    at: float
    cpu: dict[str, float]
    statements: dict[str, Counter]  # by role
    commits: int


@dataclass
class Drain:
    label: str
    jobs: int
    seconds: float
    load: str
    cpu_ms: dict[str, float]  # per job, by role (and postgres)
    statements: dict[str, dict[str, float]]  # per job, by role and kind
    commits: float  # per job
    enqueue_rate: float | None = None
    latencies_ms: list[float] = field(default_factory=list)
    round: int | None = None  # None: compared with every round's PgQueuer figures

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def statements_per_job(self) -> float:
        return sum(
            v for kinds in self.statements.values() for k, v in kinds.items() if k != "COMMIT"
        )


class Meter:
    """Marks of CPU, statements and commits around one measured drain."""

    def __init__(self, db: ScratchDatabase, processes: Sequence[Measured]) -> None:
        self.processes = processes
        self.backends = BackendCpu(db.name)
        self.conn = psycopg.connect(db.url, autocommit=True)
        self.polls = 0
        self.exclude_backend(self.conn.info.backend_pid)

    def exclude_backend(self, pid: int) -> None:
        self.backends.excluded.add(pid)

    def mark(self) -> Mark:
        for measured in self.processes:
            measured.check()
        # A backend that published its statistics less than a second ago and then went idle
        # publishes the rest 10 s later (PostgreSQL's PGSTAT_IDLE_INTERVAL).
        time.sleep(STATS_SETTLE_SECONDS)
        counted = commits(self.conn)
        statements = statement_snapshot(self.processes)
        cpu: dict[str, float] = collections.defaultdict(float)
        for measured in self.processes:
            cpu[measured.role] += process_cpu_seconds(measured.process.pid)
        cpu["postgres"] = self.backends.seconds()
        # This script's own transactions (polls, marks) are not the queue's.
        return Mark(time.monotonic(), dict(cpu), statements, counted - self.polls)

    def poll(self, query: str, params: Sequence[Any] | None = None) -> Any:
        self.polls += 1
        row = self.conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    def wait_until_zero(self, query: str, *, within: float) -> None:
        deadline = time.monotonic() + within
        while self.poll(query):
            for measured in self.processes:
                measured.check()
            if time.monotonic() > deadline:
                raise RuntimeError("the jobs did not finish in time; see the worker logs")
            time.sleep(POLL_SECONDS)

    def close(self) -> None:
        self.backends.close()
        self.conn.close()


def per_job(
    before: Mark, after: Mark, jobs: int
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    cpu = {k: 1000 * (after.cpu[k] - before.cpu.get(k, 0.0)) / jobs for k in after.cpu}
    statements = {}
    for role, counts in after.statements.items():
        earlier = before.statements.get(role, collections.Counter())
        statements[role] = {k: (counts[k] - earlier[k]) / jobs for k in sorted(counts)}
    return cpu, statements


def wait_for_sessions(meter: Meter, count: int, *, listen: str | None, timeout: float = 60) -> None:
    """Until `count` sessions have LISTENed on `listen` (spawnpoint's LISTEN connections, whose
    last statement it stays), or with `listen` None until `count` other client sessions are
    open and a second has passed (a PgQueuer worker runs everything on one connection)."""
    deadline = time.monotonic() + timeout
    sessions = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    )
    while True:
        for measured in meter.processes:
            measured.check()
        if listen is None:
            found = meter.poll(sessions)
        else:
            found = meter.poll(sessions + " AND query = %s", (f"LISTEN {listen}",))
        if found >= count:
            if listen is None:
                time.sleep(1.0)
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers did not LISTEN within {timeout:.0f} s")
        time.sleep(0.1)


# --------------------------------------------------------------------------- PgQueuer


def pgqueuer_python(requirement: str) -> Path:
    """The scratch venv's interpreter, with `requirement` and asyncpg installed (once)."""
    python = PGQUEUER_VENV / "bin" / "python"
    marker = PGQUEUER_VENV / "installed.txt"
    if python.exists() and marker.exists() and marker.read_text() == requirement:
        return python
    uv = REPO / ".tools" / "bin" / "uv"
    uv_command = str(uv) if uv.exists() else shutil.which("uv")
    env = clean_env()
    env.pop("VIRTUAL_ENV", None)
    if uv_command is not None:
        run_checked(
            [uv_command, "venv", "-q", "--clear", str(PGQUEUER_VENV)],
            env=env,
            cwd=REPO,
            timeout=120,
        )
        install = [uv_command, "pip", "install", "-q", "--python", str(python)]
    else:
        run_checked(
            [sys.executable, "-m", "venv", "--clear", str(PGQUEUER_VENV)],
            env=env,
            cwd=REPO,
            timeout=120,
        )
        install = [str(python), "-m", "pip", "install", "-q"]
    print(f"installing {requirement} into {PGQUEUER_VENV}", flush=True)
    run_checked([*install, requirement, "asyncpg"], env=env, cwd=REPO, timeout=600)
    marker.write_text(requirement)
    return python


def pgqueuer_version(python: Path) -> str:
    return run_checked(
        [
            str(python),
            "-c",
            "import pgqueuer, asyncpg; print(pgqueuer.__version__, asyncpg.__version__)",
        ],
        env=clean_env(),
        cwd=REPO,
        timeout=60,
    ).strip()


def drain_pgqueuer(python: Path, batch_size: int, args: argparse.Namespace, workdir: Path) -> Drain:
    with scratch_database("spawnpoint_bench_pgqueuer") as db, contextlib.ExitStack() as stack:
        env = clean_env()
        run_checked([str(python), str(PEER), "install", db.url], env=env, cwd=workdir, timeout=60)
        processes = []
        for n in range(args.workers):
            stats = workdir / f"pgqueuer-{batch_size}-{n}.json"
            stats.unlink(missing_ok=True)  # an earlier round's counts would look current
            argv = [str(python), str(PEER), "work", db.url, "--batch-size", str(batch_size)]
            name = f"pgqueuer-{batch_size}-worker-{n}"
            process = stack.enter_context(
                background_process(name, [*argv, "--stats", str(stats)], env=env, cwd=workdir)
            )
            processes.append(Measured("workers", process, stats, workdir / f"{name}.log"))
        meter = Meter(db, processes)
        stack.callback(meter.close)
        wait_for_sessions(meter, args.workers, listen=None)

        def enqueue_jobs(count: int) -> float:
            output = run_checked(
                [str(python), str(PEER), "enqueue", db.url, str(count)],
                env=env,
                cwd=workdir,
                timeout=300,
            )
            return float(output.split()[0])

        remaining = "SELECT count(*) FROM pgqueuer"
        enqueue_jobs(WARMUP_JOBS)
        meter.wait_until_zero(remaining, within=120)
        before = meter.mark()
        committed = enqueue_jobs(args.jobs)
        meter.wait_until_zero(remaining, within=600)
        load = load_average()
        after = meter.mark()
        last = meter.poll(
            "SELECT extract(epoch FROM max(created)) FROM pgqueuer_log WHERE status = 'successful'"
        )
        cpu, statements = per_job(before, after, args.jobs)
        # The enqueue ran in a process of its own: its backend came and went in the window.
        cpu["postgres"] = max(0.0, cpu["postgres"])
        return Drain(
            label=f"PgQueuer, batch_size={batch_size}" + (" (default)" if batch_size == 10 else ""),
            jobs=args.jobs,
            seconds=float(last) - committed,
            load=load,
            cpu_ms=cpu,
            statements=statements,
            # The one enqueue transaction is not the queue's work.
            commits=(after.commits - before.commits - 1) / args.jobs,
        )


# --------------------------------------------------------------------------- spawnpoint


def spawnpoint_env(db: ScratchDatabase, workdir: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        DATABASE_URL=db.sqlalchemy_url,
        DATA_DIR=str(workdir / "data"),
        ENVIRONMENT="development",
        LOG_LEVEL="warning",
        JWT_SECRET=JWT_SECRET,
        HOST=LOCALHOST,
        **extra,
    )


def counted_command(stats: Path, *arguments: str) -> list[str]:
    return [sys.executable, str(COUNTED), str(stats), *arguments]


@contextlib.contextmanager
def spawnpoint_workers(
    stack: contextlib.ExitStack,
    db: ScratchDatabase,
    workdir: Path,
    args: argparse.Namespace,
    tag: str,
    concurrency: int,
) -> Iterator[list[Measured]]:
    env = spawnpoint_env(db, workdir)
    workers = []
    for n in range(args.workers):
        name = f"spawnpoint-{tag}-worker-{n}"
        stats = workdir / f"{name}.json"
        stats.unlink(missing_ok=True)  # an earlier round's counts would look current
        argv = counted_command(stats, "worker", "--concurrency", str(concurrency))
        process = stack.enter_context(background_process(name, argv, env=env, cwd=workdir))
        workers.append(Measured("workers", process, stats, workdir / f"{name}.log"))
    yield workers


async def enqueue_direct(url: str, count: int) -> tuple[float, int]:
    """`count` noop jobs in one transaction: (commit time as epoch seconds, backend pid)."""
    database = Database(url, pool_size=1)
    try:
        async with database.transaction(write=True) as session:
            pid = (await session.execute(_backend_pid())).scalar_one()
            for _ in range(count):
                await enqueue(session, job_type="noop", payload={}, tenant_id=None)
        return time.time(), int(pid)
    finally:
        await database.dispose()


def _backend_pid() -> Any:
    from sqlalchemy import func, select

    return select(func.pg_backend_pid())


async def enqueue_paced(url: str, rate: float, seconds: float) -> list[uuid.UUID]:
    """Jobs at `rate` per second for `seconds`, each in its own transaction (as a request)."""
    database = Database(url, pool_size=2)
    ids = []
    try:
        start = time.monotonic()
        for n in range(int(rate * seconds)):
            # Paced against the start, so the rate holds however long each enqueue takes.
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            async with database.transaction(write=True) as session:
                job = await enqueue(session, job_type="noop", payload={}, tenant_id=None)
                ids.append(job.id)
    finally:
        await database.dispose()
    return ids


UNFINISHED = "SELECT count(*) FROM jobs WHERE state <> 'succeeded'"
LAST_FINISHED = "SELECT extract(epoch FROM max(finished_at)) FROM jobs"


def drain_spawnpoint(
    template: str, args: argparse.Namespace, workdir: Path, n: int, concurrency: int
) -> Drain:
    with (
        scratch_database("spawnpoint_bench_queue", template=template) as db,
        contextlib.ExitStack() as stack,
    ):
        workers = stack.enter_context(
            spawnpoint_workers(stack, db, workdir, args, f"direct{n}-{concurrency}", concurrency)
        )
        meter = Meter(db, workers)
        stack.callback(meter.close)
        wait_for_sessions(meter, args.workers, listen=CHANNEL)
        asyncio.run(enqueue_direct(db.sqlalchemy_url, WARMUP_JOBS))
        meter.wait_until_zero(UNFINISHED, within=120)
        before = meter.mark()
        committed, pid = asyncio.run(enqueue_direct(db.sqlalchemy_url, args.jobs))
        meter.exclude_backend(pid)
        meter.wait_until_zero(UNFINISHED, within=600)
        load = load_average()
        after = meter.mark()
        last = float(meter.poll(LAST_FINISHED))
        cpu, statements = per_job(before, after, args.jobs)
        drain = Drain(
            label=f"spawnpoint, direct enqueue, {concurrency} slots",
            jobs=args.jobs,
            seconds=last - committed,
            load=load,
            cpu_ms=cpu,
            statements=statements,
            commits=(after.commits - before.commits - 1) / args.jobs,
        )
        if args.rate > 0 and args.seconds > 0 and concurrency == args.slots[0]:
            ids = asyncio.run(enqueue_paced(db.sqlalchemy_url, args.rate, args.seconds))
            meter.wait_until_zero(UNFINISHED, within=60)
            rows = meter.conn.execute(
                "SELECT extract(epoch FROM started_at - created_at) * 1000 FROM jobs"
                " WHERE id = ANY(%s)",
                (ids,),
            ).fetchall()
            drain.latencies_ms = [float(ms) for (ms,) in rows]
        return drain


def seed_tenant(db: ScratchDatabase) -> str:
    """A plan whose quotas are out of reach and a tenant on it with a member; their email."""
    now = datetime.now(UTC)
    plan_id, tenant_id, user_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    email = "member@bench-queue.test"
    with psycopg.connect(db.url) as conn:
        conn.execute(
            "INSERT INTO plans (id, name, description, max_workspaces, max_cpu, max_memory_mb,"
            " max_storage_gb, max_concurrent_jobs, max_jobs_per_day, monthly_budget,"
            " created_at, updated_at) VALUES (%s, 'bench-unlimited', 'bench/job_queue.py',"
            " 100000000, 99999999.99, 2000000000, 2000000000, 100000000, 2000000000,"
            " 999999999999.99, %s, %s)",
            (plan_id, now, now),
        )
        conn.execute(
            "INSERT INTO tenants (id, name, slug, plan_id, status, created_at, updated_at)"
            " VALUES (%s, 'Bench queue', 'bench-queue', %s, 'active', %s, %s)",
            (tenant_id, plan_id, now, now),
        )
        conn.execute(
            "INSERT INTO users (id, tenant_id, email, display_name, role, status,"
            " created_at, updated_at) VALUES (%s, %s, %s, 'bench', 'member', 'active', %s, %s)",
            (user_id, tenant_id, email, now, now),
        )
    return email


async def post_jobs(base_url: str, token: str, count: int, clients: int) -> tuple[float, float]:
    """POST `count` noop jobs from `clients` keep-alive connections: (first send, last answer)
    as epoch seconds. Any answer but 202 fails the run."""
    headers = {"Authorization": f"Bearer {token}"}
    body = {"job_type": "noop", "payload": {}}
    remaining = count
    failures: list[str] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits) as client:

        async def one_client() -> None:
            nonlocal remaining
            while remaining > 0 and not failures:
                remaining -= 1
                response = await client.post("/api/jobs", json=body, timeout=60)
                if response.status_code != 202:
                    failures.append(f"{response.status_code}: {response.text[:500]}")

        first = time.time()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        last = time.time()
    if failures:
        raise RuntimeError(f"POST /api/jobs answered {failures[0]}")
    return first, last


def drain_api(template: str, args: argparse.Namespace, workdir: Path) -> Drain:
    with (
        scratch_database("spawnpoint_bench_queue_api", template=template) as db,
        contextlib.ExitStack() as stack,
    ):
        email = seed_tenant(db)
        env = spawnpoint_env(db, workdir)
        spawnpoint = venv_command("spawnpoint")
        token = run_checked(
            [*spawnpoint, "token", "create", "--user", email, "--ttl", "2h"],
            env=env,
            cwd=workdir,
            timeout=60,
        ).strip()
        port = free_port()
        stats = workdir / "spawnpoint-api.json"
        server = stack.enter_context(
            server_process(
                "spawnpoint-api",
                counted_command(stats, "serve", "--no-worker", "--port", str(port)),
                env=env,
                port=port,
                cwd=workdir,
                ready_path="/health",
            )
        )
        api = Measured("api", server.process, stats, server.log_path)
        workers = stack.enter_context(
            spawnpoint_workers(stack, db, workdir, args, "api", args.slots[0])
        )
        meter = Meter(db, [api, *workers])
        stack.callback(meter.close)
        wait_for_sessions(meter, args.workers, listen=CHANNEL)
        asyncio.run(post_jobs(server.base_url, token, WARMUP_JOBS, 4))
        meter.wait_until_zero(UNFINISHED, within=120)
        before = meter.mark()
        own_cpu = time.process_time()
        first, answered = asyncio.run(
            post_jobs(server.base_url, token, args.api_jobs, args.api_clients)
        )
        own_cpu = time.process_time() - own_cpu
        meter.wait_until_zero(UNFINISHED, within=900)
        load = load_average()
        after = meter.mark()
        last = float(meter.poll(LAST_FINISHED))
        cpu, statements = per_job(before, after, args.api_jobs)
        cpu["load generator"] = 1000 * own_cpu / args.api_jobs
        return Drain(
            label=f"spawnpoint, POST /api/jobs, {args.slots[0]} slots",
            jobs=args.api_jobs,
            seconds=last - first,
            load=load,
            cpu_ms=cpu,
            statements=statements,
            commits=(after.commits - before.commits) / args.api_jobs,
            enqueue_rate=args.api_jobs / (answered - first),
        )


def migrated_template(workdir: Path) -> contextlib.AbstractContextManager[ScratchDatabase]:
    """A migrated scratch database (copied for each spawnpoint measurement), dropped after."""

    @contextlib.contextmanager
    def template() -> Iterator[ScratchDatabase]:
        with scratch_database("spawnpoint_bench_queue_template") as db:
            env = spawnpoint_env(db, workdir)
            run_checked([*venv_command("spawnpoint"), "migrate"], env=env, cwd=workdir, timeout=300)
            yield db

    return template()


# --------------------------------------------------------------------------- report


def ms(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def peer_rates(drains: Sequence[Drain], round_: int | None) -> tuple[float, float]:
    """PgQueuer's best and default rates in `round_` (None: best of all, median default)."""
    peers = [
        d
        for d in drains
        if d.label.startswith("PgQueuer") and (round_ is None or d.round == round_)
    ]
    default = [d.rate for d in peers if "(default)" in d.label]
    best_rate = max((d.rate for d in peers), default=float("nan"))
    return best_rate, statistics.median(default) if default else float("nan")


def floor_met(drains: Sequence[Drain]) -> list[bool]:
    """Per round: spawnpoint's best direct drain >= PgQueuer's default in that round."""
    met = []
    for round_ in sorted({d.round for d in drains if d.round is not None}):
        direct = [
            d.rate for d in drains if d.round == round_ and d.label.startswith("spawnpoint, direct")
        ]
        _, default_rate = peer_rates(drains, round_)
        if direct and default_rate == default_rate:  # not NaN: PgQueuer ran
            met.append(max(direct) >= default_rate)
    return met


def render(drains: Sequence[Drain], args: argparse.Namespace, versions: str) -> str:
    rows = []
    for d in drains:
        # Ratios to the same round's PgQueuer: the machine's speed moves between rounds.
        best_rate, default_rate = peer_rates(drains, d.round)
        cpu_workers = d.cpu_ms.get("workers")
        rows.append(
            [
                d.label,
                f"{d.rate:,.0f}",
                f"{d.rate / best_rate:.2f}",
                f"{d.rate / default_rate:.2f}",
                "" if d.enqueue_rate is None else f"{d.enqueue_rate:,.0f}",
                f"{d.statements_per_job:.2f}",
                f"{d.commits:.3f}",
                ms(cpu_workers),
                ms(d.cpu_ms.get("api")),
                ms(d.cpu_ms.get("postgres")),
                d.load,
            ]
        )
    table = markdown_table(
        [
            "run",
            "jobs/s",
            "÷ PgQueuer best",
            "÷ PgQueuer default",
            "enqueued/s",
            "statements/job",
            "transactions/job",
            "worker CPU ms/job",
            "API CPU ms/job",
            "postgres CPU ms/job",
            "load 1/5 min",
        ],
        rows,
    )
    kinds = sorted(
        {k for d in drains for counts in d.statements.values() for k, v in counts.items() if v}
    )
    breakdown = markdown_table(
        ["run", "process", *kinds],
        [
            [d.label, role, *(f"{counts.get(k, 0):.3f}" for k in kinds)]
            for d in drains
            for role, counts in d.statements.items()
        ],
    )
    lines = [
        f"## Job queue on PostgreSQL: {args.workers} worker processes, {args.jobs:,} no-op jobs",
        "",
        f"spawnpoint workers: `--concurrency` {args.concurrency}; PgQueuer {versions}; "
        f"{args.rounds} round(s); {os.cpu_count()} cores; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        table,
        "",
        "Statements per job by kind (COMMIT counted apart from the statements):",
        "",
        breakdown,
    ]
    direct = [d for d in drains if d.label.startswith("spawnpoint, direct")]
    latencies = [ms for d in direct for ms in d.latencies_ms]
    if latencies:
        lines += [
            "",
            f"spawnpoint enqueue-to-start at {args.rate:g} jobs/s: p50 "
            f"{percentile(latencies, 50):.1f} ms, p99 {percentile(latencies, 99):.1f} ms "
            f"(goal p50 ≤ {LATENCY_GOAL_MS:g} ms).",
        ]
    met = floor_met(drains)
    goal = []
    for round_ in sorted({d.round for d in direct if d.round is not None}):
        best_rate, _ = peer_rates(drains, round_)
        goal.append(max(d.rate for d in direct if d.round == round_) >= best_rate)
    lines += [
        "",
        "Ratios are to the same round's PgQueuer runs (the API run: to every round's). "
        f"Floor (spawnpoint direct ≥ PgQueuer default) met in {sum(met)} of {len(met)} "
        f"round(s); goal (≥ PgQueuer best) met in {sum(goal)} of {len(goal)}.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--concurrency", default="32,100", help="slots per worker, comma-separated: one run each"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-sizes", default="10,100", help="PgQueuer's, comma-separated")
    parser.add_argument("--api-jobs", type=int, default=10_000)
    parser.add_argument("--api-clients", type=int, default=16)
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--skip-pgqueuer", action="store_true")
    parser.add_argument("--rate", type=float, default=50.0, help="latency phase, jobs/s")
    parser.add_argument("--seconds", type=float, default=5.0, help="latency phase length")
    parser.add_argument("--pgqueuer", default=PGQUEUER, help="the peer's pip requirement")
    args = parser.parse_args()
    batch_sizes = [int(size) for size in args.batch_sizes.split(",") if size]
    args.slots = [int(slots) for slots in args.concurrency.split(",") if slots]
    raise_on_sigterm(deadline=1800)

    drains: list[Drain] = []
    with tempfile.TemporaryDirectory(prefix="spawnpoint-bench-queue-") as tmp:
        workdir = Path(tmp)
        try:
            python = pgqueuer_python(args.pgqueuer) if not args.skip_pgqueuer else None
            versions = "(skipped)" if python is None else pgqueuer_version(python)
            with migrated_template(workdir) as template:
                for n in range(args.rounds):
                    runs: list[Any] = []
                    if python is not None:
                        runs += [("pgqueuer", size) for size in batch_sizes]
                    # Interleaved: PgQueuer, spawnpoint, PgQueuer, spawnpoint...
                    spawnpoints = [("spawnpoint", slots) for slots in args.slots]
                    order: list[Any] = []
                    for pair in itertools.zip_longest(runs, spawnpoints):
                        order += [run for run in pair if run is not None]
                    for kind, value in order:
                        if kind == "pgqueuer":
                            assert python is not None
                            drain = drain_pgqueuer(python, value, args, workdir)
                        else:
                            drain = drain_spawnpoint(template.name, args, workdir, n, value)
                        drain.round = n + 1
                        drains.append(drain)
                        print(
                            f"round {n + 1}: {drain.label}: {drain.rate:,.0f} jobs/s, "
                            f"{drain.statements_per_job:.2f} statements/job, "
                            f"CPU ms/job {drain.cpu_ms}, load {drain.load}",
                            flush=True,
                        )
                if not args.skip_api:
                    drain = drain_api(template.name, args, workdir)
                    drains.append(drain)
                    print(
                        f"{drain.label}: {drain.enqueue_rate:,.0f} enqueued/s, "
                        f"{drain.rate:,.0f} jobs/s end to end, load {drain.load}",
                        flush=True,
                    )
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            print(f"bench/job_queue.py: {exc}", file=sys.stderr)
            return 2

    report = render(drains, args, versions)
    print(report)
    write_result("job_queue.md", report)
    met = floor_met(drains)
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
