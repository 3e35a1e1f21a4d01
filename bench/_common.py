"""Helpers shared by the benchmark scripts in bench/.

- a scratch PostgreSQL database, created for one run and always dropped;
- server subprocesses on a free port of 127.0.0.1, started, awaited until they answer, stopped;
- HTTP load generation: `wrk` when it is installed, else a small asyncio keep-alive client;
- percentiles, medians and Markdown tables.

Only the standard library and the project's own dependencies (psycopg) are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

LOCALHOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


# --------------------------------------------------------------------------- process plumbing


def raise_on_sigterm(deadline: float | None = None) -> None:
    """Turn SIGTERM and SIGHUP into SystemExit, so `finally` blocks drop what we created.

    With `deadline` (seconds), a watchdog does the same when the run takes longer: a hung
    benchmark must not keep its scratch database (and the locks of DROP DATABASE WITH (FORCE)
    elsewhere on the server) waiting.
    """

    def _exit(signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGALRM:
            print(f"benchmark watchdog: over {deadline:.0f} s, stopping", file=sys.stderr)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGHUP, _exit)
    if deadline is not None:
        signal.signal(signal.SIGALRM, _exit)
        signal.alarm(max(1, math.ceil(deadline)))


def venv_command(name: str) -> list[str]:
    """The argv prefix of a console script installed next to this interpreter."""
    script = Path(sys.executable).with_name(name)
    if script.exists():
        return [str(script)]
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name!r} is neither next to {sys.executable} nor on PATH")
    return [found]


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment with `overrides`, minus spawnpoint settings that could leak in."""
    drop = {
        "DATABASE_URL",
        "DATABASE_POOL_SIZE",
        "HOST",
        "PORT",
        "JWT_SECRET",
        "JWT_AUDIENCE",
        "JWT_ISSUER",
        "ENVIRONMENT",
        "LOG_LEVEL",
        "DATA_DIR",
        "DEV_BYPASS_TOKEN",
    }
    env = {k: v for k, v in os.environ.items() if k.upper() not in drop}
    env.update(overrides)
    return env


def run_checked(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, timeout: float) -> str:
    """Run a command to completion; return its stdout, or raise with its output on failure."""
    done = subprocess.run(
        list(argv),
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} exited {done.returncode}\n"
            f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
        )
    return done.stdout


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used so far (Linux /proc)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; field 3 is fields[0]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- PostgreSQL


def admin_url() -> str:
    """Where the benchmarks create their databases: a libpq URL of an existing database."""
    return (
        os.environ.get("SPAWNPOINT_BENCH_PG_URL")
        or os.environ.get("SPAWNPOINT_TEST_PG_URL")
        or DEFAULT_PG_URL
    )


def libpq_url(url: str) -> str:
    """`postgresql+psycopg://...` -> `postgresql://...` (what psycopg.connect accepts)."""
    scheme, sep, rest = url.partition("://")
    return ("postgresql" if scheme.startswith("postgres") else scheme) + sep + rest


def with_database(url: str, name: str) -> str:
    parts = urlsplit(libpq_url(url))
    return parts._replace(path="/" + name).geturl()


@dataclass(frozen=True)
class ScratchDatabase:
    name: str
    url: str  # libpq form: postgresql://user@host:port/name

    @property
    def sqlalchemy_url(self) -> str:
        return "postgresql+psycopg://" + self.url.partition("://")[2]


@contextlib.contextmanager
def scratch_database(
    prefix: str = "spawnpoint_bench", *, template: str | None = None
) -> Iterator[ScratchDatabase]:
    """Create an empty database; drop it (forcing out connections) when the block exits.

    With `template` (a database name, e.g. another scratch database nobody is connected to),
    the new database starts as a copy of it instead of empty.
    """
    server = libpq_url(admin_url())
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        create = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
        conn.execute(create)
    try:
        yield ScratchDatabase(name=name, url=with_database(server, name))
    finally:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@dataclass
class Deployment:
    """A migrated scratch database, a work directory, and the environment to serve both."""

    workdir: Path
    db: ScratchDatabase
    env: dict[str, str]


def migrated_deployment(
    stack: contextlib.ExitStack,
    name: str,
    spawnpoint: Sequence[str],
    *,
    jwt_secret: str,
    pool_size: int,
    **settings: str,
) -> Deployment:
    """Create a scratch database and a work directory (both removed when `stack` closes),
    and run `spawnpoint migrate`; `settings` are extra environment variables.
    """
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=f"bench-{name}-")))
    db = stack.enter_context(scratch_database(f"spawnpoint_bench_{name.replace('-', '_')}"))
    env = clean_env(
        DATABASE_URL=db.sqlalchemy_url,
        DATABASE_POOL_SIZE=str(pool_size),
        ENVIRONMENT="development",
        JWT_SECRET=jwt_secret,
        LOG_LEVEL="warning",
        DATA_DIR=str(workdir / "data"),
        HOST=LOCALHOST,
        **settings,
    )
    print(f"database {db.name}: migrating", flush=True)
    run_checked([*spawnpoint, "migrate"], env=env, cwd=workdir, timeout=120)
    return Deployment(workdir=workdir, db=db, env=env)


# --------------------------------------------------------------------------- RabbitMQ


@contextlib.contextmanager
def scratch_vhost(prefix: str = "spawnpoint-bench") -> Iterator[str]:
    """A RabbitMQ vhost of this run's own (rabbitmqctl; guest may use it); its AMQP URL.
    Deleted afterwards, with everything declared in it."""
    name = f"{prefix}-{uuid.uuid4().hex[:10]}"

    def ctl(*args: str) -> None:
        subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)

    ctl("add_vhost", name)
    try:
        ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{LOCALHOST}:5672/{name}"
    finally:
        ctl("delete_vhost", name)


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def http_get(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, bytes]:
    """One GET over a fresh connection: (status, body). Plain http only."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"http_get wants an http:// URL, not {url!r}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        path = parts.path or "/"
        conn.request(
            "GET", path + (f"?{parts.query}" if parts.query else ""), headers=headers or {}
        )
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM (graceful for uvicorn), then SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


@contextlib.contextmanager
def server_process(
    name: str,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    port: int,
    cwd: Path,
    ready_path: str = "/",
    ready_headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Iterator[Server]:
    """Start a server; yield once GET `ready_path` answers with any HTTP status; always stop it.

    The server's stdout and stderr go to a log file under `cwd`, shown if it dies or hangs.
    """
    log_path = cwd / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(name=name, port=port, process=process, log_path=log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{name} exited with {process.returncode} while starting:\n{server.log_tail()}"
                )
            try:
                http_get(server.base_url + ready_path, ready_headers, timeout=2.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{name} did not answer on port {port} within {timeout:.0f} s:\n"
                        f"{server.log_tail()}"
                    ) from None
                time.sleep(0.1)
        yield server
    finally:
        stop_process(process)


@contextlib.contextmanager
def background_process(
    name: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a process that serves no port (a job worker, say); always stop it.

    Its stdout and stderr go to `cwd/NAME.log`; check `process.poll()` to see it is alive.
    """
    log_path = cwd / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield process
    finally:
        stop_process(process)


def log_tail(path: Path, chars: int = 4000) -> str:
    """The end of a log file, or "" when it cannot be read."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def system_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores (Linux /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / ticks, total / ticks


# --------------------------------------------------------------------------- statistics, tables


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; numbers are right-aligned, text left-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    numeric = [
        bool(rows) and all(isinstance(r[i], int | float) or _looks_numeric(str(r[i])) for r in rows)
        for i in range(len(headers))
    ]

    def line(values: Sequence[str]) -> str:
        padded = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else (":" + "-" * (w + 1))
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(list(headers)), rule, *(line(r) for r in cells)])


def _looks_numeric(text: str) -> bool:
    try:
        float(text.replace(",", "").rstrip("x%"))
    except ValueError:
        return False
    return True


def write_result(name: str, text: str) -> Path:
    """Write bench/results/NAME (git-ignored) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- load generation


@dataclass
class LoadResult:
    """One measured load run."""

    tool: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int  # socket errors, timeouts and non-2xx/3xx responses
    server_cpu_seconds: float | None = None  # CPU the server process used while measured
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_request(self) -> float:
        """Server CPU per request: unlike requests/s, barely moved by other load on the box."""
        if self.server_cpu_seconds is None or not self.requests:
            return math.nan
        return 1000 * self.server_cpu_seconds / self.requests


WRK_REPORT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_JSON {\\"requests\\": %d, \\"duration_us\\": %d, \\"p50_us\\": %.1f, "
    .. "\\"p90_us\\": %.1f, \\"p99_us\\": %.1f, \\"mean_us\\": %.1f, \\"connect\\": %d, "
    .. "\\"read\\": %d, \\"write\\": %d, \\"status\\": %d, \\"timeout\\": %d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def load_tool() -> str:
    """`wrk` if installed (preferred: C, one thread, precise), else the asyncio client."""
    return "wrk" if shutil.which("wrk") else "python-asyncio"


def run_load(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    connections: int = 32,
    seconds: float = 10.0,
    warmup: float = 2.0,
    tool: str | None = None,
    workdir: Path | None = None,
    server_pid: int | None = None,
) -> LoadResult:
    """Hold `connections` keep-alive connections busy with GET `url` for `seconds`.

    A warm-up of `warmup` seconds with the same load runs first and is discarded. With
    `server_pid`, the server's CPU time over the measured part is recorded too.
    """
    tool = tool or load_tool()
    if urlsplit(url).hostname not in {LOCALHOST, "localhost"}:
        raise ValueError(f"benchmarks only send traffic to {LOCALHOST}, not to {url!r}")
    if tool == "wrk":
        return _run_wrk(url, headers or {}, connections, seconds, warmup, workdir, server_pid)
    return _run_asyncio(url, headers or {}, connections, seconds, warmup, server_pid)


def _run_wrk(
    url: str,
    headers: Mapping[str, str],
    connections: int,
    seconds: float,
    warmup: float,
    workdir: Path | None,
    server_pid: int | None,
) -> LoadResult:
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        script = Path(tmp) / "report.lua"
        script.write_text(WRK_REPORT)
        base = ["wrk", "-t1", f"-c{connections}", "--timeout", "5s", "-s", str(script)]
        for key, value in headers.items():
            base += ["-H", f"{key}: {value}"]

        def once(duration: float) -> dict[str, float]:
            out = subprocess.run(
                [*base, f"-d{max(1, round(duration))}s", url],
                capture_output=True,
                text=True,
                timeout=duration + 30,
                check=True,
            ).stdout
            for line in out.splitlines():
                if line.startswith("BENCH_JSON "):
                    parsed: dict[str, float] = json.loads(line.removeprefix("BENCH_JSON "))
                    return parsed
            raise RuntimeError(f"wrk printed no report:\n{out}")

        if warmup > 0:
            once(warmup)
        cpu_before = process_cpu_seconds(server_pid) if server_pid else 0.0
        report = once(seconds)
        cpu = process_cpu_seconds(server_pid) - cpu_before if server_pid else None
    errors = sum(int(report[k]) for k in ("connect", "read", "write", "status", "timeout"))
    return LoadResult(
        tool="wrk",
        requests=int(report["requests"]),
        seconds=report["duration_us"] / 1e6,
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        errors=errors,
        server_cpu_seconds=cpu,
        extra={"p90_ms": report["p90_us"] / 1000, "mean_ms": report["mean_us"] / 1000},
    )


def _run_asyncio(
    url: str,
    headers: Mapping[str, str],
    connections: int,
    seconds: float,
    warmup: float,
    server_pid: int | None,
) -> LoadResult:
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    return runner(_asyncio_load(url, headers, connections, seconds, warmup, server_pid))


async def _asyncio_load(
    url: str,
    headers: Mapping[str, str],
    connections: int,
    seconds: float,
    warmup: float,
    server_pid: int | None,
) -> LoadResult:
    """A minimal HTTP/1.1 keep-alive client: far cheaper per request than httpx."""
    parts = urlsplit(url)
    host, port = parts.hostname or LOCALHOST, parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (head + "\r\n").encode("latin-1")

    latencies: list[float] = []
    counts = {"ok": 0, "errors": 0}
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                writer.write(request)
                status_line = await reader.readline()
                length, chunked = 0, False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    lowered = name.strip().lower()
                    if lowered == b"content-length":
                        length = int(value)
                    elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                        chunked = True
                if chunked:
                    while size := int((await reader.readline()).strip() or b"0", 16):
                        await reader.readexactly(size + 2)
                    await reader.readline()
                else:
                    await reader.readexactly(length)
                done = time.perf_counter()
                if sent >= measure_from and done <= stop_at:
                    status = int(status_line.split()[1]) if status_line else 0
                    if 200 <= status < 400:
                        counts["ok"] += 1
                        latencies.append(done - sent)
                    else:
                        counts["errors"] += 1
        finally:
            writer.close()

    cpu: list[float] = []

    async def sample_cpu() -> None:
        for at in (measure_from, stop_at):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            cpu.append(process_cpu_seconds(server_pid) if server_pid else 0.0)

    sampler = asyncio.create_task(sample_cpu())
    results = await asyncio.gather(*(worker() for _ in range(connections)), return_exceptions=True)
    await sampler
    failures = [r for r in results if isinstance(r, BaseException)]
    if len(failures) == len(results):
        raise RuntimeError(f"every load connection failed: {failures[0]!r}")
    return LoadResult(
        tool="python-asyncio",
        requests=counts["ok"],
        seconds=seconds,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        errors=counts["errors"] + len(failures),
        server_cpu_seconds=cpu[1] - cpu[0] if server_pid else None,
        extra={"p90_ms": percentile(latencies, 90) * 1000},
    )
