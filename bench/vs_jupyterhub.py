"""spawnpoint's embedded default side by side with JupyterHub's, under the same load.

    .venv/bin/python bench/vs_jupyterhub.py [--n 200] [--concurrency 10 --concurrency 32]
        [--scenario noop|local|both|none] [--burst 300] [--burst-quota Q] [--poll-ms 50]
        [--jupyterhub-via proxy|hub] [--json PATH] [--cache-dir DIR] [--spawnpoint CMD]

What it does, all on 127.0.0.1 (about 2-3 minutes with the defaults on an idle 2-core machine):

1. installs JupyterHub (PyPI: 6.1.1, else the newest 6.x, else 5.x) into its own venv and
   configurable-http-proxy (npm: 5.3.0, else the newest 5.x) with `npm install --prefix`, both
   under a cache directory outside the repository (`--cache-dir`, default
   $SPAWNPOINT_BENCH_CACHE or ~/.cache/spawnpoint-bench/jupyterhub); later runs reuse it;
2. for each scenario and each concurrency C, starts each system on its embedded default with a
   fresh database in a temporary directory, one after the other (the order alternates between
   runs), and drives it with the same load:
   - JupyterHub: `jupyterhub -f bench/_jupyterhub_config.py`, sqlite, the configurable-http-proxy
     the hub starts, the null authenticator, a service `bench` whose API token has the
     `admin:users` and `admin:servers` scopes; the N users are created in one
     `POST /hub/api/users` before the clock starts;
   - spawnpoint: `spawnpoint serve` (SQLite in DATA_DIR, migrations, the in-process worker and
     scheduler), the dev token, every setting at its default (its rate limits leave room for
     32 clients polling every 50 ms; `--spawnpoint-env NAME=VALUE` sets any setting); before
     the clock starts, one plan with quotas no run reaches, assigned to the demo tenant, and
     one template;
   - the load: N spawns with C in flight (C client tasks, each on its own keep-alive
     connection); each client sends its spawn, then polls every `--poll-ms` until it is ready:
     spawnpoint `POST /api/spawn`, then `GET /api/workspaces/{id}` until `state == running`;
     JupyterHub `POST /hub/api/users/{name}/server` (a 201 means ready already, as JupyterHub
     waits up to 10 s for the spawn inside the request), then `GET /hub/api/users/{name}`
     until its server is `ready`. Then all N are stopped the same way: spawnpoint
     `POST /api/workspaces/{id}/stop` and poll until `stopped`; JupyterHub
     `DELETE /hub/api/users/{name}/server` (204 means stopped) and poll until the server is gone;
3. scenarios: **noop** -- JupyterHub's `NoopSpawner` (in the config file) returns the URL of one
   shared tiny HTTP server (`bench/_tiny_server.py`), which the hub still waits for and adds to
   the proxy; spawnpoint's `dry-run` driver. **local** -- JupyterHub's `SimpleLocalProcessSpawner`
   and spawnpoint's `local` driver, both running `python -I -S bench/_tiny_server.py` (a process
   per spawn, ready when its port answers HTTP, stopped by signal);
4. reports per run: spawns/s (N / first spawn sent to last ready), request -> ready p50 / p99
   (client clock, spawn sent to the poll that saw it ready, so up to one poll interval late for
   both systems), the spawn request's own p99, stops/s (likewise), the CPU seconds of each
   server's processes over both phases (/proc: spawnpoint's one process; JupyterHub's hub plus
   its proxy; the workspaces' own processes are not counted for either) and of this load
   generator, and the ratios spawnpoint / JupyterHub;
5. with `--burst N` (N=300: the 9 a.m. class), on a fresh spawnpoint: N spawns of one dry-run
   template sent within one second, each on its own new connection, each then polling its
   workspace every `--poll-ms`: counts of 202 / 429 / 5xx / other answers / no answer, time
   from the first request until all accepted workspaces are `running` (client clock, and the
   server's own event times), and that each accepted spawn made exactly one workspace that
   reached `running` exactly once and each refused one none (the tenant's workspace list,
   each workspace's events). `--burst-quota Q` gives the plan room for Q workspaces (default:
   more than N), so the answers past it must be 429s;
6. prints Markdown tables and goal rows, writes them to bench/results/vs_jupyterhub.md, and the
   figures to `--json PATH` when asked. Every process it started is stopped on exit, error,
   Ctrl-C, SIGTERM and the watchdog (process groups; workspace processes found by this run's
   own copy of the tiny server's path).

Goals (issue 9; the exit status is 0 when all rows hold, 1 when one does not, 2 on error): no-op
spawns/s >= 3x JupyterHub's at every C (the floor; the issue's target is 10x); no-op request ->
ready p99 <= 100 ms at C=10; local spawns/s >= 1x JupyterHub's at every C (target 2x); no error,
every spawn ready and every stop done in both systems; with --burst: no 5xx or unanswered
request, only 202 and 429, 202s = min(N, quota), all running within 10 s, each exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import functools
import itertools
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    LOCALHOST,
    REPO,
    clean_env,
    free_port,
    http_get,
    log_tail,
    markdown_table,
    percentile,
    process_cpu_seconds,
    raise_on_sigterm,
    run_checked,
    system_cpu_seconds,
    venv_command,
    write_result,
)

BENCH = Path(__file__).resolve().parent
TINY_SERVER = BENCH / "_tiny_server.py"
JH_CONFIG = BENCH / "_jupyterhub_config.py"
DEV_TOKEN = "DEV-LOCAL-TOKEN"  # spawnpoint's dev bypass (development, loopback)
DEMO_TENANT_ID = "00000000-0000-0000-0000-000000000001"
JUPYTERHUB_SPECS = ("jupyterhub==6.1.1", "jupyterhub>=6,<7", "jupyterhub>=5,<6")
CHP_SPECS = ("configurable-http-proxy@5.3.0", "configurable-http-proxy@5")
SPEC_LIMITS = {"cpu": 0.01, "memory_mb": 16, "storage_gb": 0}
# spawnpoint runs on its defaults (its rate limits, 60,000 a minute per principal, leave room
# for 32 clients polling every 50 ms: 38,400 a minute); `--spawnpoint-env` changes any.
SPAWNPOINT_SETTINGS: dict[str, str] = {}
READY_TIMEOUT_SECONDS = 60.0  # per spawn or stop; JupyterHub's own start_timeout is 60 s
START_TIMEOUT_SECONDS = 60.0  # a server answering after start-up
WATCHDOG_SECONDS = 900
GOAL_NOOP_FLOOR, GOAL_NOOP_TARGET = 3.0, 10.0
GOAL_LOCAL_FLOOR, GOAL_LOCAL_TARGET = 1.0, 2.0
GOAL_P99_MS = 100.0
GOAL_READ_P99_MS = 10.0  # status reads under the polling of 32 clients (issue 9, item 3)
GOAL_P99_CONCURRENCY = 10
GOAL_BURST_SECONDS = 10.0
BURST_DRAIN_SECONDS = 30.0  # how long the exactly-once check waits for stragglers
MAX_ERRORS_KEPT = 5


def num(value: float, digits: int) -> float | None:
    """A figure for JSON: rounded, and null when not finite (nothing measured, never done)."""
    return round(value, digits) if math.isfinite(value) else None


class BenchError(Exception):
    """An answer the benchmark did not expect; counted as an error of its phase."""


# --------------------------------------------------------------------------- HTTP client


class Connection:
    """One HTTP/1.1 keep-alive connection to 127.0.0.1, far cheaper per request than httpx.

    A connection idle for over a second is reopened before the next request (uvicorn closes
    idle ones after 5 s, and a spawn must never be sent twice, so a request is only retried
    when it is a GET).
    """

    IDLE_SECONDS = 1.0

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used_at = 0.0

    async def close(self) -> None:
        writer, self.reader, self.writer = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """Send one request; return (status, parsed JSON body or None)."""
        payload = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {LOCALHOST}:{self.port}\r\n{self.head}"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        head += f"Content-Length: {len(payload)}\r\n\r\n"
        message = head.encode("latin-1") + payload
        for attempt in range(2):
            if self.writer is not None and time.monotonic() - self.used_at > self.IDLE_SECONDS:
                await self.close()
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(LOCALHOST, self.port)
            assert self.reader is not None
            try:
                self.writer.write(message)
                status, data, keep = await self._response(self.reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt or method != "GET":
                    raise
                continue
            self.used_at = time.monotonic()
            if not keep:
                await self.close()
            return status, (json.loads(data) if data[:1] in (b"{", b"[") else None)
        raise AssertionError("unreachable")

    @staticmethod
    async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
        status_line = await reader.readline()
        if not status_line:
            raise ConnectionResetError("connection closed before the response")
        status = int(status_line.split()[1])
        length: int | None = None
        chunked, keep = False, True
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif lowered == b"connection" and b"close" in value.lower():
                keep = False
        if status in (204, 304) or 100 <= status < 200:
            return status, b"", keep
        if chunked:
            parts = []
            while size := int((await reader.readline()).split(b";")[0].strip() or b"0", 16):
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            return status, b"".join(parts), keep
        if length is None:
            return status, await reader.read(), False
        return status, await reader.readexactly(length), keep


async def expect(
    conn: Connection, method: str, path: str, body: object = None, *, ok: Sequence[int]
) -> tuple[int, Any]:
    status, data = await conn.request(method, path, body)
    if status not in ok:
        raise BenchError(f"{method} {path} answered {status}: {json.dumps(data)[:300]}")
    return status, data


# --------------------------------------------------------------------------- the two systems


class System:
    """What the load shape needs of a system: spawn, ready?, stop, stopped?"""

    name: str
    port: int
    headers: dict[str, str]

    def connection(self) -> Connection:
        return Connection(self.port, self.headers)

    async def spawn(self, conn: Connection, n: int) -> tuple[str, bool]:
        """Ask for spawn number n; return its handle and whether it is ready already."""
        raise NotImplementedError

    async def ready(self, conn: Connection, handle: str) -> bool:
        raise NotImplementedError

    async def stop(self, conn: Connection, handle: str) -> bool:
        """Ask to stop it; return whether it is stopped already."""
        raise NotImplementedError

    async def stopped(self, conn: Connection, handle: str) -> bool:
        raise NotImplementedError


class SpawnpointSystem(System):
    name = "spawnpoint"

    def __init__(self, port: int, template_id: str) -> None:
        self.port = port
        self.template_id = template_id
        self.headers = {"Authorization": f"Bearer {DEV_TOKEN}"}

    async def spawn(self, conn: Connection, n: int) -> tuple[str, bool]:
        _, data = await expect(
            conn, "POST", "/api/spawn", {"template_id": self.template_id}, ok=(202,)
        )
        workspace = data["workspace"]
        return str(workspace["id"]), workspace["state"] == "running"

    async def _state(self, conn: Connection, handle: str) -> str:
        _, data = await expect(conn, "GET", f"/api/workspaces/{handle}", ok=(200,))
        state: str = data["state"]
        if state == "failed":
            raise BenchError(f"workspace {handle} failed: {data.get('error')}")
        return state

    async def ready(self, conn: Connection, handle: str) -> bool:
        return await self._state(conn, handle) == "running"

    async def stop(self, conn: Connection, handle: str) -> bool:
        _, data = await expect(conn, "POST", f"/api/workspaces/{handle}/stop", ok=(202,))
        return bool(data["workspace"]["state"] == "stopped")

    async def stopped(self, conn: Connection, handle: str) -> bool:
        return await self._state(conn, handle) == "stopped"


class JupyterHubSystem(System):
    name = "JupyterHub"

    def __init__(self, port: int, token: str, users: Sequence[str]) -> None:
        self.port = port
        self.users = list(users)
        self.headers = {"Authorization": f"token {token}"}

    async def spawn(self, conn: Connection, n: int) -> tuple[str, bool]:
        user = self.users[n]
        status, _ = await expect(conn, "POST", f"/hub/api/users/{user}/server", ok=(201, 202))
        return user, status == 201

    async def _server(self, conn: Connection, user: str) -> dict[str, Any] | None:
        _, data = await expect(conn, "GET", f"/hub/api/users/{user}", ok=(200,))
        server: dict[str, Any] | None = (data.get("servers") or {}).get("")
        return server

    async def ready(self, conn: Connection, handle: str) -> bool:
        server = await self._server(conn, handle)
        if server is None:
            raise BenchError(f"{handle}'s server is gone before it was ready (spawn failed)")
        return bool(server.get("ready"))

    async def stop(self, conn: Connection, handle: str) -> bool:
        status, _ = await expect(conn, "DELETE", f"/hub/api/users/{handle}/server", ok=(202, 204))
        return status == 204

    async def stopped(self, conn: Connection, handle: str) -> bool:
        return await self._server(conn, handle) is None


# --------------------------------------------------------------------------- measuring


@dataclass
class Phase:
    """One phase (spawn or stop) of one run."""

    count: int
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # request sent -> seen done
    request_ms: list[float] = field(default_factory=list)  # the spawn / stop request alone
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    done_in_request: int = 0  # answered as done already (JupyterHub's 201 and 204)
    polls: list[int] = field(default_factory=lambda: [0])  # status reads, all clients
    poll_ms: list[float] = field(default_factory=list)  # each status read's own latency

    @property
    def done(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def error(self, message: str) -> None:
        self.errors += 1
        if len(self.error_samples) < MAX_ERRORS_KEPT:
            self.error_samples.append(message)

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "done": self.done,
            "seconds": num(self.seconds, 3),
            "per_second": num(self.rate, 2),
            "p50_ms": num(percentile(self.latencies_ms, 50), 1),
            "p90_ms": num(percentile(self.latencies_ms, 90), 1),
            "p99_ms": num(percentile(self.latencies_ms, 99), 1),
            "max_ms": num(max(self.latencies_ms, default=math.nan), 1),
            "request_p50_ms": num(percentile(self.request_ms, 50), 1),
            "request_p99_ms": num(percentile(self.request_ms, 99), 1),
            "done_in_request": self.done_in_request,
            "polls": self.polls[0],
            "poll_p50_ms": num(percentile(self.poll_ms, 50), 1),
            "poll_p99_ms": num(percentile(self.poll_ms, 99), 1),
            "errors": self.errors,
            "error_samples": self.error_samples,
        }


async def poll_until(
    check: Callable[[], Awaitable[bool]],
    interval: float,
    deadline: float,
    what: str,
    counter: list[int] | None = None,
    latencies_ms: list[float] | None = None,
) -> float:
    """Call `check` every `interval` s until it is true; return when (perf_counter).

    Each call adds one to `counter[0]` and its latency to `latencies_ms`, when given.
    """
    while True:
        if counter is not None:
            counter[0] += 1
        sent = time.perf_counter()
        ready = await check()
        if latencies_ms is not None:
            latencies_ms.append(1000 * (time.perf_counter() - sent))
        if ready:
            return time.perf_counter()
        if time.perf_counter() > deadline:
            raise BenchError(f"{what}: not done within {READY_TIMEOUT_SECONDS:.0f} s")
        await asyncio.sleep(interval)


async def run_phase(
    system: System,
    items: Sequence[Any],
    concurrency: int,
    interval: float,
    act: Callable[[Connection, Any], Awaitable[tuple[str, bool]]],
    check: Callable[[Connection, str], Awaitable[bool]],
    what: str,
) -> tuple[Phase, list[str]]:
    """`items` through `act` then `check` polling, `concurrency` at a time; closed loop."""
    phase = Phase(count=len(items))
    queue = iter(items)
    handles: list[str] = []
    last_done = [time.perf_counter()]

    async def client() -> None:
        conn = system.connection()
        try:
            for item in queue:
                sent = time.perf_counter()
                try:
                    handle, done = await act(conn, item)
                    answered = time.perf_counter()
                    phase.request_ms.append(1000 * (answered - sent))
                    handles.append(handle)
                    deadline = sent + READY_TIMEOUT_SECONDS
                    at = answered
                    phase.done_in_request += done
                    if not done:
                        await asyncio.sleep(interval)
                        at = await poll_until(
                            functools.partial(check, conn, handle),
                            interval,
                            deadline,
                            f"{what} {handle}",
                            phase.polls,
                            phase.poll_ms,
                        )
                    phase.latencies_ms.append(1000 * (at - sent))
                    last_done[0] = max(last_done[0], at)
                except (BenchError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    phase.error(f"{what} {item}: {exc!r}"[:400])
                    await conn.close()
        finally:
            await conn.close()

    started = time.perf_counter()
    last_done[0] = started
    await asyncio.gather(*(client() for _ in range(concurrency)))
    phase.seconds = last_done[0] - started
    return phase, handles


@dataclass
class Run:
    system: str
    scenario: str
    concurrency: int
    n: int
    spawn: Phase
    stop: Phase
    cpu_spawn_s: float
    cpu_stop_s: float
    client_cpu_s: float
    cpu_by_process: dict[str, float]

    @property
    def cpu_s(self) -> float:
        return self.cpu_spawn_s + self.cpu_stop_s

    @property
    def cpu_ms_per_spawn(self) -> float:
        return 1000 * self.cpu_s / self.n if self.n else math.nan

    @property
    def clean(self) -> bool:
        return (
            self.spawn.errors == 0
            and self.stop.errors == 0
            and self.spawn.done == self.n
            and self.stop.done == self.n
        )

    def summary(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "scenario": self.scenario,
            "concurrency": self.concurrency,
            "n": self.n,
            "spawn": self.spawn.summary(),
            "stop": self.stop.summary(),
            "server_cpu_seconds": num(self.cpu_s, 3),
            "server_cpu_spawn_seconds": num(self.cpu_spawn_s, 3),
            "server_cpu_stop_seconds": num(self.cpu_stop_s, 3),
            "server_cpu_ms_per_spawn": num(self.cpu_ms_per_spawn, 2),
            "server_cpu_by_process": {k: num(v, 3) for k, v in self.cpu_by_process.items()},
            "load_generator_cpu_seconds": num(self.client_cpu_s, 3),
            "clean": self.clean,
        }


class CpuMeter:
    """CPU seconds used by a fixed set of named processes since the meter was made."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        out = {}
        for name, pid in self.pids.items():
            try:
                out[name] = process_cpu_seconds(pid)
            except (OSError, ValueError, IndexError):
                out[name] = math.nan
        return out

    def used(self) -> dict[str, float]:
        now = self._read()
        return {name: now[name] - self.start[name] for name in self.pids}


async def drive(
    system: System,
    *,
    scenario: str,
    n: int,
    concurrency: int,
    interval: float,
    pids: dict[str, int],
) -> Run:
    """The load shape: N spawns, C in flight, poll until ready; then stop all the same way."""
    client_cpu = time.process_time()
    meter = CpuMeter(pids)
    spawn, handles = await run_phase(
        system, range(n), concurrency, interval, system.spawn, system.ready, "spawn"
    )
    after_spawn = meter.used()

    async def stop(conn: Connection, handle: str) -> tuple[str, bool]:
        return handle, await system.stop(conn, handle)

    stopped, _ = await run_phase(
        system, handles, concurrency, interval, stop, system.stopped, "stop"
    )
    total = meter.used()
    cpu_spawn = sum(after_spawn.values())
    return Run(
        system=system.name,
        scenario=scenario,
        concurrency=concurrency,
        n=n,
        spawn=spawn,
        stop=stopped,
        cpu_spawn_s=cpu_spawn,
        cpu_stop_s=sum(total.values()) - cpu_spawn,
        client_cpu_s=time.process_time() - client_cpu,
        cpu_by_process=total,
    )


# --------------------------------------------------------------------------- processes


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (Linux /proc), children first."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def kill_matching(matches: Callable[[list[str]], bool]) -> int:
    """SIGKILL every process (but this one) whose command line `matches`."""
    killed = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            pid = int(entry.name)
            if matches(_cmdline(pid)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
    return killed


def kill_workspace_processes(marker: str) -> int:
    """SIGKILL every process whose command line names `marker` (this run's own file path)."""
    return kill_matching(lambda argv: any(marker in part for part in argv))


def is_our_proxy(argv: list[str], api_port: int) -> bool:
    """configurable-http-proxy with this run's API port (it leads its own process group)."""
    if not any("configurable-http-proxy" in part for part in argv):
        return False
    return (
        any(a == "--api-port" and b == str(api_port) for a, b in itertools.pairwise(argv))
        or f"--api-port={api_port}" in argv
    )


@dataclass
class Started:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def tail(self, chars: int = 4000) -> str:
        return log_tail(self.log_path, chars)


def stop_group(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group `process` leads, SIGKILL it after `grace` seconds."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    # The leader may be gone while others in its group (a proxy it started) linger.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace)


@contextlib.contextmanager
def started(
    name: str,
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: Path,
    ready_url: str,
) -> Iterator[Started]:
    """Start a server in its own process group; yield once `ready_url` answers 200."""
    log_path = cwd / f"{name}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    handle = Started(name=name, process=process, log_path=log_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{handle.tail()}")
            with contextlib.suppress(OSError):
                status, _ = http_get(ready_url, timeout=2.0)
                if status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer {ready_url}:\n{handle.tail()}")
            time.sleep(0.1)
        yield handle
    finally:
        stop_group(process)


# --------------------------------------------------------------------------- installing


@dataclass(frozen=True)
class JupyterHubInstall:
    jupyterhub: Path
    chp: Path
    jupyterhub_version: str
    chp_version: str


def default_cache_dir() -> Path:
    base = os.environ.get("SPAWNPOINT_BENCH_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "spawnpoint-bench"
    return root / "jupyterhub"


def ensure_jupyterhub(cache: Path) -> JupyterHubInstall:
    """JupyterHub in cache/venv and configurable-http-proxy in cache/npm, installed once."""
    cache.mkdir(parents=True, exist_ok=True)
    venv, npm_prefix = cache / "venv", cache / "npm"
    jupyterhub = venv / "bin" / "jupyterhub"
    chp = npm_prefix / "node_modules" / ".bin" / "configurable-http-proxy"
    env = clean_env()
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two benchmark runs never install at once
        if not jupyterhub.exists():
            print(f"installing JupyterHub into {venv} (once)", flush=True)
            shutil.rmtree(venv, ignore_errors=True)
            run_checked([sys.executable, "-m", "venv", str(venv)], env=env, cwd=cache, timeout=120)
            pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
            pip += ["--disable-pip-version-check"]
            _first_that_installs(pip, JUPYTERHUB_SPECS, env, cache)
        if not chp.exists():
            if shutil.which("npm") is None:
                raise RuntimeError(
                    "npm is needed for configurable-http-proxy (apt-get install npm)"
                )
            print(f"installing configurable-http-proxy into {npm_prefix} (once)", flush=True)
            npm = ["npm", "install", "--prefix", str(npm_prefix), "--no-audit", "--no-fund"]
            _first_that_installs(npm, CHP_SPECS, env, cache)
    jh_version = run_checked([str(jupyterhub), "--version"], env=env, cwd=cache, timeout=60)
    package = json.loads(
        (npm_prefix / "node_modules/configurable-http-proxy/package.json").read_text()
    )
    return JupyterHubInstall(
        jupyterhub=jupyterhub,
        chp=chp,
        jupyterhub_version=jh_version.strip().splitlines()[-1],
        chp_version=str(package["version"]),
    )


def _first_that_installs(
    command: list[str], specs: Sequence[str], env: dict[str, str], cwd: Path
) -> None:
    failures = []
    for spec in specs:
        try:
            run_checked([*command, spec], env=env, cwd=cwd, timeout=600)
            return
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            failures.append(f"{spec}: {str(exc)[-800:]}")
    raise RuntimeError("nothing installed:\n" + "\n".join(failures))


# --------------------------------------------------------------------------- one run each


@dataclass
class Context:
    args: argparse.Namespace
    install: JupyterHubInstall
    spawnpoint: list[str]
    tiny: Path  # this run's copy of the tiny server; its path marks our workspace processes
    python: str
    root: Path


def tiny_argv(ctx: Context) -> list[str]:
    return [ctx.python, "-I", "-S", str(ctx.tiny)]


def run_asyncio(coro: Awaitable[Any]) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def run_jupyterhub(ctx: Context, scenario: str, concurrency: int) -> Run:
    args = ctx.args
    workdir = Path(tempfile.mkdtemp(prefix=f"jh-{scenario}-c{concurrency}-", dir=ctx.root))
    port, hub_port, api_port = free_port(), free_port(), free_port()
    token = uuid.uuid4().hex
    env = clean_env(
        BENCH_JH_PORT=str(port),
        BENCH_JH_HUB_PORT=str(hub_port),
        BENCH_JH_PROXY_API_PORT=str(api_port),
        BENCH_JH_CHP=str(ctx.install.chp),
        BENCH_JH_DIR=str(workdir),
        BENCH_JH_TOKEN=token,
        BENCH_JH_SPAWNER=scenario,
        BENCH_JH_CMD=json.dumps(tiny_argv(ctx)),
        BENCH_JH_HOME=str(workdir / "home"),
    )
    # The hub's venv first on PATH; nothing of spawnpoint's venv.
    env["PATH"] = f"{ctx.install.jupyterhub.parent}:{env.get('PATH', os.defpath)}"
    env.pop("VIRTUAL_ENV", None)
    with contextlib.ExitStack() as stack:
        if scenario == "noop":
            noop_port = free_port()
            stack.enter_context(
                started(
                    "noop-server",
                    [*tiny_argv(ctx), "--port", str(noop_port)],
                    env=clean_env(),
                    cwd=workdir,
                    ready_url=f"http://{LOCALHOST}:{noop_port}/",
                )
            )
            env["BENCH_JH_NOOP_URL"] = f"http://{LOCALHOST}:{noop_port}"
        # The hub starts the proxy in a process group of its own and stops it on SIGTERM;
        # should it not (killed, hung), this stops it after the hub.
        stack.callback(kill_matching, functools.partial(is_our_proxy, api_port=api_port))
        hub = stack.enter_context(
            started(
                "jupyterhub",
                [str(ctx.install.jupyterhub), "-f", str(JH_CONFIG)],
                env=env,
                cwd=workdir,
                ready_url=f"http://{LOCALHOST}:{port}/hub/api/",
            )
        )
        proxies = [
            pid
            for pid in _descendants(hub.process.pid)
            if any("configurable-http-proxy" in part for part in _cmdline(pid))
        ]
        if not proxies:
            raise RuntimeError(f"no configurable-http-proxy under the hub:\n{hub.tail()}")
        pids = {"hub": hub.process.pid, "proxy": proxies[0]}
        entry_port = port if args.jupyterhub_via == "proxy" else hub_port
        users = [f"bench{n:05d}" for n in range(args.n)]
        system = JupyterHubSystem(entry_port, token, users)

        async def main() -> Run:
            conn = system.connection()
            await expect(conn, "POST", "/hub/api/users", {"usernames": users}, ok=(201,))
            await conn.close()
            return await drive(
                system,
                scenario=scenario,
                n=args.n,
                concurrency=concurrency,
                interval=args.poll_ms / 1000,
                pids=pids,
            )

        try:
            run: Run = run_asyncio(main())
        finally:
            if scenario == "local":
                kill_workspace_processes(str(ctx.tiny))
        if hub.process.poll() is not None:
            raise RuntimeError(f"JupyterHub died during the run:\n{hub.tail()}")
    finish(workdir, hub, run.clean, f"JupyterHub {scenario} C={concurrency}")
    return run


async def spawnpoint_setup(conn: Connection, scenario: str, ctx: Context, quota: int) -> str:
    """A plan no run reaches, on the demo tenant; a template for the scenario. Its id."""
    _, plan = await expect(
        conn,
        "POST",
        "/api/plans",
        {
            "name": f"bench-{uuid.uuid4().hex[:8]}",
            "max_workspaces": quota,
            "max_cpu": 99_999_999,
            "max_memory_mb": 2_000_000_000,
            "max_storage_gb": 2_000_000_000,
            "max_concurrent_jobs": 1_000_000,
            "max_jobs_per_day": 2_000_000_000,
        },
        ok=(201,),
    )
    await expect(
        conn, "POST", f"/api/tenants/{DEMO_TENANT_ID}/plans/{plan['id']}", None, ok=(200, 201)
    )
    spec: dict[str, Any] = dict(SPEC_LIMITS)
    if scenario == "local":
        spec["command"] = shlex.join(tiny_argv(ctx)) + " --port {port}"
    _, template = await expect(
        conn,
        "POST",
        "/api/templates",
        {
            "name": f"bench-{scenario}-{uuid.uuid4().hex[:8]}",
            "provisioner": "local" if scenario == "local" else "dry-run",
            "spec": spec,
        },
        ok=(201,),
    )
    return str(template["id"])


@contextlib.contextmanager
def spawnpoint_server(ctx: Context, label: str) -> Iterator[tuple[Started, int, Path]]:
    """`spawnpoint serve` on a fresh DATA_DIR; the caller removes the directory it yields."""
    workdir = Path(tempfile.mkdtemp(prefix=f"sp-{label}-", dir=ctx.root))
    port = free_port()
    env = clean_env(
        ENVIRONMENT="development",
        LOG_LEVEL="warning",
        DATA_DIR=str(workdir / "data"),
        HOST=LOCALHOST,
        PORT=str(port),
        **SPAWNPOINT_SETTINGS,
    )
    env.update(ctx.args.spawnpoint_env)
    with started(
        "spawnpoint",
        [*ctx.spawnpoint, "serve", "--port", str(port)],
        env=env,
        cwd=workdir,
        ready_url=f"http://{LOCALHOST}:{port}/ready",
    ) as server:
        yield server, port, workdir
        if server.process.poll() is not None:
            raise RuntimeError(f"spawnpoint died during the run:\n{server.tail()}")


def finish(run_dir: Path, server: Started, clean: bool, what: str) -> None:
    """Remove a clean run's directory; keep an unclean one's and show its server's log."""
    if clean:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    print(f"  {what} was not clean; files kept in {run_dir}; its log ends:", file=sys.stderr)
    print(server.tail(3000), file=sys.stderr, flush=True)


def run_spawnpoint(ctx: Context, scenario: str, concurrency: int) -> Run:
    args = ctx.args
    with spawnpoint_server(ctx, f"{scenario}-c{concurrency}") as (server, port, workdir):
        system = SpawnpointSystem(port, template_id="")

        async def main() -> Run:
            conn = system.connection()
            system.template_id = await spawnpoint_setup(conn, scenario, ctx, quota=10 * args.n)
            await conn.close()
            return await drive(
                system,
                scenario=scenario,
                n=args.n,
                concurrency=concurrency,
                interval=args.poll_ms / 1000,
                pids={"serve": server.process.pid},
            )

        try:
            run: Run = run_asyncio(main())
        finally:
            if scenario == "local":
                kill_workspace_processes(str(ctx.tiny))
    finish(workdir, server, run.clean, f"spawnpoint {scenario} C={concurrency}")
    return run


# --------------------------------------------------------------------------- the 9 a.m. class


@dataclass
class Burst:
    n: int
    quota: int
    window_s: float
    statuses: Counter[str] = field(default_factory=Counter)
    post_ms: list[float] = field(default_factory=list)
    ready_s: list[float] = field(default_factory=list)  # from the first request's send time
    server_all_running_s: float = math.nan  # the last running event, from the first send
    not_running: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # refs with != 1 workspace
    never_running: list[str] = field(default_factory=list)  # accepted, no running event
    running_twice: list[str] = field(default_factory=list)  # more than one running event
    refused_but_created: list[str] = field(default_factory=list)
    poll_errors: int = 0
    samples: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.statuses["202"]

    @property
    def all_running_s(self) -> float:
        if len(self.ready_s) < self.accepted or not self.ready_s:
            return math.inf
        return max(self.ready_s)

    def goals(self) -> list[tuple[str, bool, str]]:
        unexpected = sum(v for k, v in self.statuses.items() if k not in ("202", "429"))
        expected = min(self.n, self.quota)
        return [
            (
                f"burst: only 202 and 429 answers (no 5xx, no unanswered request) of {self.n}",
                unexpected == 0,
                ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items())),
            ),
            (
                f"burst: 202s = min(N, quota) = {expected}",
                self.accepted == expected,
                f"{self.accepted}",
            ),
            (
                f"burst: all accepted seen `running` by their clients within "
                f"{GOAL_BURST_SECONDS:g} s",
                self.all_running_s <= GOAL_BURST_SECONDS and not self.not_running,
                (
                    f"{self.all_running_s:.2f} s"
                    if math.isfinite(self.all_running_s)
                    else f"{self.poll_errors} clients gave up after {READY_TIMEOUT_SECONDS:g} s"
                )
                + f" (the last running event: {self.server_all_running_s:.2f} s)",
            ),
            (
                "burst: each accepted spawn one workspace, `running` exactly once; none refused",
                not (
                    self.duplicates
                    or self.never_running
                    or self.running_twice
                    or self.refused_but_created
                ),
                f"{len(self.duplicates)} refs with other than one workspace, "
                f"{len(self.never_running)} never running (after a {BURST_DRAIN_SECONDS:g} s "
                f"drain), {len(self.running_twice)} running twice, "
                f"{len(self.refused_but_created)} refused but created",
            ),
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "quota": self.quota,
            "window_seconds": self.window_s,
            "answers": dict(self.statuses),
            "post_p50_ms": num(percentile(self.post_ms, 50), 1),
            "post_p99_ms": num(percentile(self.post_ms, 99), 1),
            "ready_p50_s": num(percentile(self.ready_s, 50), 3),
            "ready_p99_s": num(percentile(self.ready_s, 99), 3),
            "all_running_seconds": num(self.all_running_s, 3),
            "server_all_running_seconds": num(self.server_all_running_s, 3),
            "not_running": self.not_running[:MAX_ERRORS_KEPT],
            "duplicates": self.duplicates[:MAX_ERRORS_KEPT],
            "never_running": self.never_running[:MAX_ERRORS_KEPT],
            "running_twice": self.running_twice[:MAX_ERRORS_KEPT],
            "refused_but_created": self.refused_but_created[:MAX_ERRORS_KEPT],
            "poll_errors": self.poll_errors,
            "samples": self.samples,
        }


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def burst_load(system: SpawnpointSystem, burst: Burst, interval: float) -> None:
    """N spawns spread evenly over the window, each a new client that then polls its own."""
    refs: dict[str, str] = {}  # external_ref -> workspace id, for the accepted ones
    refused: set[str] = set()
    begin = time.perf_counter() + 0.2
    wall_begin = time.time() + 0.2

    async def student(n: int) -> None:
        ref = f"burst-{n:04d}"
        await asyncio.sleep(max(0.0, begin + n * burst.window_s / burst.n - time.perf_counter()))
        conn = system.connection()
        sent = time.perf_counter()
        try:
            try:
                status, data = await conn.request(
                    "POST", "/api/spawn", {"template_id": system.template_id, "external_ref": ref}
                )
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                burst.statuses["no answer"] += 1
                refused.add(ref)
                if len(burst.samples) < MAX_ERRORS_KEPT:
                    burst.samples.append(f"{ref}: {exc!r}")
                return
            burst.post_ms.append(1000 * (time.perf_counter() - sent))
            key = str(status) if status in (202, 429) else f"{status // 100}xx ({status})"
            burst.statuses[key] += 1
            if status != 202:
                refused.add(ref)
                if status != 429 and len(burst.samples) < MAX_ERRORS_KEPT:
                    burst.samples.append(f"{ref}: {status} {json.dumps(data)[:300]}")
                return
            handle = str(data["workspace"]["id"])
            refs[ref] = handle
            try:
                at = await poll_until(
                    lambda: system.ready(conn, handle),
                    interval,
                    sent + READY_TIMEOUT_SECONDS,
                    f"burst {ref}",
                )
            except (BenchError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                burst.poll_errors += 1
                if len(burst.samples) < MAX_ERRORS_KEPT:
                    burst.samples.append(f"{ref} poll: {exc!r}"[:400])
                return
            burst.ready_s.append(at - begin)
        finally:
            await conn.close()

    await asyncio.gather(*(student(n) for n in range(burst.n)))
    await verify_burst(system, burst, refs, refused, wall_begin)


async def verify_burst(
    system: SpawnpointSystem,
    burst: Burst,
    refs: dict[str, str],
    refused: set[str],
    wall_begin: float,
) -> None:
    """Exactly once: the tenant's workspaces of the template, and each one's transitions.

    Checked once every accepted workspace is `running`, or after BURST_DRAIN_SECONDS more.
    """
    conn = system.connection()
    drain_until = time.monotonic() + BURST_DRAIN_SECONDS
    while True:
        seen: Counter[str] = Counter()
        states: dict[str, str] = {}
        cursor: str | None = ""
        while cursor is not None:
            query = f"?template={system.template_id}&limit=200"
            query += f"&cursor={cursor}" if cursor else ""
            _, page = await expect(conn, "GET", "/api/workspaces" + query, ok=(200,))
            for workspace in page["items"]:
                ref = workspace.get("external_ref") or f"(no ref) {workspace['id']}"
                seen[ref] += 1
                states[str(workspace["id"])] = workspace["state"]
            cursor = page["next_cursor"]
        settled = all(states.get(h) == "running" for h in refs.values())
        if settled or time.monotonic() > drain_until:
            break
        await asyncio.sleep(0.5)
    await conn.close()
    burst.duplicates = sorted(ref for ref in refs if seen[ref] != 1)
    burst.refused_but_created = sorted(ref for ref in seen if ref not in refs)
    burst.not_running = sorted(h for h in refs.values() if states.get(h) != "running")
    last_running = [wall_begin]
    pending = list(refs.values())

    async def checker() -> None:
        conn = system.connection()
        try:
            while pending:
                handle = pending.pop()
                _, events = await expect(
                    conn, "GET", f"/api/workspaces/{handle}/events?limit=200", ok=(200,)
                )
                running = [e for e in events["items"] if e["to_state"] == "running"]
                if not running:
                    burst.never_running.append(handle)
                elif len(running) > 1:
                    burst.running_twice.append(handle)
                for event in running:
                    last_running[0] = max(last_running[0], parse_time(event["at"]))
        finally:
            await conn.close()

    await asyncio.gather(*(checker() for _ in range(8)))
    if refs:
        burst.server_all_running_s = last_running[0] - wall_begin


def run_burst(ctx: Context) -> Burst:
    args = ctx.args
    quota = args.burst_quota if args.burst_quota is not None else 10 * args.burst
    burst = Burst(n=args.burst, quota=quota, window_s=1.0)
    with spawnpoint_server(ctx, "burst") as (server, port, workdir):
        system = SpawnpointSystem(port, template_id="")

        async def main() -> None:
            conn = system.connection()
            system.template_id = await spawnpoint_setup(conn, "noop", ctx, quota=quota)
            await conn.close()
            await burst_load(system, burst, args.poll_ms / 1000)

        run_asyncio(main())
    finish(workdir, server, all(ok for _, ok, _ in burst.goals()), "the burst")
    return burst


# --------------------------------------------------------------------------- report


def fmt_ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 and not math.isnan(a) and not math.isnan(b) else math.nan


def fmt_ratio(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def report(
    runs: list[Run], burst: Burst | None, meta: dict[str, Any], failures: list[str]
) -> tuple[str, list[tuple[str, bool, str]]]:
    lines = [
        "# spawnpoint vs JupyterHub, embedded defaults side by side",
        "",
        f"{meta['date']}; {meta['machine']}; load average before {meta['load_before']}, "
        f"after {meta['load_after']}; machine CPU busy during the run {meta['busy_pct']:.0f}% "
        f"of {os.cpu_count()} cores (this run's own processes included).",
        f"JupyterHub {meta['jupyterhub']}, configurable-http-proxy {meta['chp']} (node "
        f"{meta['node']}), driven through {meta['jupyterhub_via']}; "
        f"spawnpoint {meta['spawnpoint']}.",
        "spawnpoint settings: "
        + ", ".join(f"`{k}={v}`" for k, v in meta["spawnpoint_settings"].items())
        + f"; N={meta['n']} spawns per run, polling every {meta['poll_ms']:g} ms.",
        "",
    ]
    rows = []
    by_key: dict[tuple[str, int], dict[str, Run]] = {}
    for run in runs:
        by_key.setdefault((run.scenario, run.concurrency), {})[run.system] = run
        rows.append(
            [
                run.scenario,
                run.concurrency,
                run.system,
                f"{run.spawn.rate:.1f}",
                fmt_ms(percentile(run.spawn.latencies_ms, 50)),
                fmt_ms(percentile(run.spawn.latencies_ms, 99)),
                fmt_ms(percentile(run.spawn.request_ms, 99)),
                f"{run.spawn.polls[0] / run.n:.1f}",
                fmt_ms(percentile(run.spawn.poll_ms, 99)),
                f"{run.stop.rate:.1f}",
                f"{run.cpu_s:.2f}",
                f"{run.cpu_ms_per_spawn:.1f}",
                f"{run.spawn.errors + run.stop.errors}",
            ]
        )
    if rows:
        lines.append(
            markdown_table(
                [
                    "scenario",
                    "C",
                    "system",
                    "spawns/s",
                    "request → ready p50",
                    "p99",
                    "spawn request p99",
                    "polls / spawn",
                    "status read p99",
                    "stops/s",
                    "server CPU s",
                    "CPU ms / spawn",
                    "errors",
                ],
                rows,
            )
        )
        inside = [
            f"{run.system} {run.scenario} C={run.concurrency}: {run.spawn.done_in_request} of "
            f"{run.n} spawns and {run.stop.done_in_request} stops"
            for run in runs
            if run.spawn.done_in_request or run.stop.done_in_request
        ]
        if inside:
            lines += [
                "",
                "Answered as done inside the request (JupyterHub's 201 and 204; no poll needed): "
                + "; ".join(inside)
                + ".",
            ]
        ratio_rows = []
        for (scenario, c), pair in by_key.items():
            sp, jh = pair.get("spawnpoint"), pair.get("JupyterHub")
            if sp is None or jh is None:
                continue
            ratio_rows.append(
                [
                    scenario,
                    c,
                    fmt_ratio(ratio(sp.spawn.rate, jh.spawn.rate)),
                    fmt_ratio(
                        ratio(
                            percentile(sp.spawn.latencies_ms, 50),
                            percentile(jh.spawn.latencies_ms, 50),
                        )
                    ),
                    fmt_ratio(
                        ratio(
                            percentile(sp.spawn.latencies_ms, 99),
                            percentile(jh.spawn.latencies_ms, 99),
                        )
                    ),
                    fmt_ratio(ratio(sp.stop.rate, jh.stop.rate)),
                    fmt_ratio(ratio(sp.cpu_ms_per_spawn, jh.cpu_ms_per_spawn)),
                ]
            )
        if ratio_rows:
            lines += [
                "",
                "Ratios spawnpoint / JupyterHub (above 1 is better for spawns/s and stops/s, "
                "below 1 for latency and CPU):",
                "",
                markdown_table(
                    ["scenario", "C", "spawns/s", "ready p50", "ready p99", "stops/s", "CPU/spawn"],
                    ratio_rows,
                ),
            ]
        errors = [
            f"- {run.system} {run.scenario} C={run.concurrency}: {sample}"
            for run in runs
            for sample in run.spawn.error_samples + run.stop.error_samples
        ]
        if errors:
            lines += ["", "Errors (first few):", "", *errors]
    if burst is not None:
        lines += [
            "",
            f"The 9 a.m. class: {burst.n} spawns of one dry-run template within "
            f"{burst.window_s:g} s on spawnpoint's embedded default, each a new client "
            f"polling every {meta['poll_ms']:g} ms; plan quota {burst.quota} workspaces.",
            "",
            markdown_table(
                ["answers", "spawn request p50 / p99", "ready p50 / p99", "all running after"],
                [
                    [
                        ", ".join(f"{k}: {v}" for k, v in sorted(burst.statuses.items())),
                        f"{fmt_ms(percentile(burst.post_ms, 50))} / "
                        f"{fmt_ms(percentile(burst.post_ms, 99))}",
                        f"{percentile(burst.ready_s, 50):.2f} s / "
                        f"{percentile(burst.ready_s, 99):.2f} s",
                        (
                            f"{burst.all_running_s:.2f} s"
                            if math.isfinite(burst.all_running_s)
                            else f"{burst.poll_errors} clients gave up"
                        )
                        + f" (last running event {burst.server_all_running_s:.2f} s)",
                    ]
                ],
            ),
        ]
        if burst.samples:
            lines += ["", "Burst errors (first few):", "", *(f"- {s}" for s in burst.samples)]
    if failures:
        lines += ["", "Runs that could not be measured:", ""]
        lines += [f"- {failure.splitlines()[0][:300]}" for failure in failures]
    goals = goal_rows(by_key, runs, burst)
    if failures:
        goals.append(("every run measured", False, f"{len(failures)} failed"))
    if goals:
        lines += [
            "",
            markdown_table(
                ["goal", "met", "measured"],
                [[name, "✔" if ok else "✘", measured] for name, ok, measured in goals],
            ),
        ]
    return "\n".join(lines) + "\n", goals


def goal_rows(
    by_key: dict[tuple[str, int], dict[str, Run]], runs: list[Run], burst: Burst | None
) -> list[tuple[str, bool, str]]:
    goals: list[tuple[str, bool, str]] = []
    for (scenario, c), pair in sorted(by_key.items()):
        sp, jh = pair.get("spawnpoint"), pair.get("JupyterHub")
        if sp is None or jh is None:
            continue
        floor, target = (
            (GOAL_NOOP_FLOOR, GOAL_NOOP_TARGET)
            if scenario == "noop"
            else (GOAL_LOCAL_FLOOR, GOAL_LOCAL_TARGET)
        )
        value = ratio(sp.spawn.rate, jh.spawn.rate)
        goals.append(
            (
                f"{scenario} C={c}: spawns/s ≥ {floor:g}x JupyterHub (floor; target {target:g}x)",
                value >= floor,
                f"{fmt_ratio(value)} ({sp.spawn.rate:.1f} vs {jh.spawn.rate:.1f}/s)"
                + (" — target met" if value >= target else ""),
            )
        )
        if scenario == "noop" and c == max(k[1] for k in by_key):
            read_p99 = percentile(sp.spawn.poll_ms, 99)
            goals.append(
                (
                    f"noop C={c}: spawnpoint's status reads (GET /api/workspaces/{{id}}) while "
                    f"spawns run, p99 < {GOAL_READ_P99_MS:g} ms",
                    read_p99 < GOAL_READ_P99_MS,
                    fmt_ms(read_p99),
                )
            )
        if scenario == "noop" and c == GOAL_P99_CONCURRENCY:
            p99 = percentile(sp.spawn.latencies_ms, 99)
            goals.append(
                (
                    f"noop C={c}: spawnpoint request → running p99 ≤ {GOAL_P99_MS:g} ms",
                    p99 <= GOAL_P99_MS,
                    fmt_ms(p99),
                )
            )
    if runs:
        dirty = [f"{r.system} {r.scenario} C={r.concurrency}" for r in runs if not r.clean]
        goals.append(
            (
                "every spawn ready and every stop done, no error, both systems",
                not dirty,
                "all clean" if not dirty else "not clean: " + ", ".join(dirty),
            )
        )
    if burst is not None:
        goals += burst.goals()
    return goals


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "(unknown revision)"
    return out


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="spawns per run (default 200)")
    parser.add_argument(
        "--concurrency",
        type=int,
        action="append",
        help="spawns in flight; repeat for several runs (default: 10 and 32)",
    )
    parser.add_argument(
        "--scenario",
        choices=("noop", "local", "both", "none"),
        default="both",
        help="which comparison to run (none: only --burst)",
    )
    parser.add_argument(
        "--burst", type=int, default=0, help="also the 9 a.m. class: N spawns within 1 s"
    )
    parser.add_argument(
        "--burst-quota",
        type=int,
        default=None,
        help="the burst plan's max_workspaces (default: 10x --burst, so all are accepted)",
    )
    parser.add_argument(
        "--poll-ms", type=float, default=50.0, help="each client's poll interval (default 50)"
    )
    parser.add_argument(
        "--jupyterhub-via",
        choices=("proxy", "hub"),
        default="proxy",
        help="send JupyterHub's API calls to its public port through configurable-http-proxy "
        "(default, what its users do) or to the hub's own port",
    )
    parser.add_argument(
        "--system",
        choices=("both", "jupyterhub", "spawnpoint"),
        default="both",
        help="run only one side (for a look; the ratios need both)",
    )
    parser.add_argument(
        "--spawnpoint-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for `spawnpoint serve` (repeatable; default: every setting's default)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where JupyterHub and the proxy are installed once "
        "(default $SPAWNPOINT_BENCH_CACHE/jupyterhub or ~/.cache/spawnpoint-bench/jupyterhub)",
    )
    parser.add_argument(
        "--spawnpoint",
        default=None,
        help="the spawnpoint command to benchmark (default: the one next to this Python)",
    )
    args = parser.parse_args()
    args.concurrency = args.concurrency or [10, 32]
    pairs = [item.partition("=") for item in args.spawnpoint_env]
    if any(not name or not sep for name, sep, _ in pairs):
        parser.error("--spawnpoint-env takes NAME=VALUE")
    args.spawnpoint_env = {name: value for name, _, value in pairs}
    if args.n < 1 or any(c < 1 for c in args.concurrency) or args.burst < 0:
        parser.error("--n and --concurrency must be at least 1, --burst at least 0")
    if not 1 <= args.poll_ms <= 10_000:
        parser.error("--poll-ms must be between 1 and 10000")
    if args.scenario == "none" and not args.burst:
        parser.error("--scenario none needs --burst")
    return args


def main() -> int:
    args = parse_args()
    raise_on_sigterm(deadline=WATCHDOG_SECONDS)
    # Ctrl-C stops the run (and everything it started) even when started in the background,
    # where a shell leaves SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    scenarios = {"both": ["noop", "local"], "none": []}.get(args.scenario, [args.scenario])
    load_before = loadavg()
    busy_before = system_cpu_seconds()
    install = None
    if scenarios:
        install = ensure_jupyterhub(args.cache_dir or default_cache_dir())
        print(
            f"JupyterHub {install.jupyterhub_version}, configurable-http-proxy "
            f"{install.chp_version}",
            flush=True,
        )
    spawnpoint = shlex.split(args.spawnpoint) if args.spawnpoint else venv_command("spawnpoint")
    runs: list[Run] = []
    burst: Burst | None = None
    failures: list[str] = []
    root = Path(tempfile.mkdtemp(prefix="bench-vs-jupyterhub-"))
    tiny = root / f"tiny-server-{uuid.uuid4().hex[:8]}.py"
    shutil.copyfile(TINY_SERVER, tiny)
    ctx = Context(
        args=args,
        install=install,  # type: ignore[arg-type]  # only read when scenarios run
        spawnpoint=spawnpoint,
        tiny=tiny,
        python=sys.executable,
        root=root,
    )
    runners: list[tuple[str, Callable[[Context, str, int], Run]]] = [
        (name, runner)
        for name, runner in (("JupyterHub", run_jupyterhub), ("spawnpoint", run_spawnpoint))
        if args.system in ("both", name.lower())
    ]
    try:
        order = 0
        for scenario in scenarios:
            for c in args.concurrency:
                for name, runner in runners[::-1] if order % 2 else runners:
                    print(f"{scenario} C={c}: {name} ...", flush=True)
                    try:
                        run = runner(ctx, scenario, c)
                    except (RuntimeError, BenchError, OSError) as exc:
                        failures.append(f"{name} {scenario} C={c}: {exc}")
                        print(f"  failed: {exc}", file=sys.stderr, flush=True)
                        continue
                    runs.append(run)
                    print(
                        f"  {run.spawn.rate:6.1f} spawns/s  ready p50 "
                        f"{percentile(run.spawn.latencies_ms, 50):7.1f} ms  p99 "
                        f"{percentile(run.spawn.latencies_ms, 99):7.1f} ms  "
                        f"{run.stop.rate:6.1f} stops/s  CPU {run.cpu_s:5.2f} s  "
                        f"errors {run.spawn.errors + run.stop.errors}",
                        flush=True,
                    )
                order += 1
        if args.burst:
            print(f"burst: {args.burst} spawns within 1 s on spawnpoint ...", flush=True)
            try:
                burst = run_burst(ctx)
            except (RuntimeError, BenchError, OSError) as exc:
                failures.append(f"burst: {exc}")
                print(f"  failed: {exc}", file=sys.stderr, flush=True)
    finally:
        kill_workspace_processes(str(tiny))
        tiny.unlink()
        if any(root.iterdir()):
            print(f"unclean runs' files (logs, databases) kept in {root}", file=sys.stderr)
        else:
            root.rmdir()
    busy_after = system_cpu_seconds()
    wall = busy_after[1] - busy_before[1]
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}",
        "load_before": load_before,
        "load_after": loadavg(),
        "busy_pct": 100 * (busy_after[0] - busy_before[0]) / wall if wall > 0 else math.nan,
        "jupyterhub": install.jupyterhub_version if install else "(not run)",
        "chp": install.chp_version if install else "(not run)",
        "node": _node_version(),
        "jupyterhub_via": "configurable-http-proxy's public port"
        if args.jupyterhub_via == "proxy"
        else "the hub's own port",
        "spawnpoint": f"`{args.spawnpoint}` (checkout at {git_revision()})"
        if args.spawnpoint
        else f"{git_revision()} (this checkout)",
        "spawnpoint_settings": {**SPAWNPOINT_SETTINGS, **args.spawnpoint_env},
        "n": args.n,
        "poll_ms": args.poll_ms,
    }
    text, goals = report(runs, burst, meta, failures)
    print()
    print(text)
    path = write_result("vs_jupyterhub.md", text)
    print(f"written to {path}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    **{k: v for k, v in meta.items()},
                    "runs": [run.summary() for run in runs],
                    "failures": failures,
                    "burst": burst.summary() if burst else None,
                    "goals": [{"goal": g, "met": ok, "measured": m} for g, ok, m in goals],
                    "goals_met": all(ok for _, ok, _ in goals),
                },
                indent=2,
                default=str,
            )
        )
    if failures:
        return 2
    return 0 if all(ok for _, ok, _ in goals) else 1


def _node_version() -> str:
    try:
        return subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every process this run started has been stopped", file=sys.stderr)
        sys.exit(130)
    except Exception:  # exit status 2 is "could not measure", with the reason
        traceback.print_exc()
        sys.exit(2)
