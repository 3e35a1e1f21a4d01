"""A spawnpoint deployment of real processes on the private server: API, workers, load.

The API is `spawnpoint serve --no-worker` and each worker is `spawnpoint worker`, with
DATABASE_URL pointing at the private server, so restarting or killing any of them is what an
operator would see. Load comes from an httpx client over a real socket; the checks read the
tables directly with psycopg.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg

import polling
from chaos.server import PrivatePostgres, free_port
from conftest import JWT_SECRET, Org, World, make_settings
from spawnpoint.db import Database
from spawnpoint.models import Role

T = TypeVar("T")
SPAWNPOINT = str(Path(sys.executable).with_name("spawnpoint"))
STOP_SECONDS = 15.0


async def eventually(probe: Callable[[], Awaitable[T]], *, within: float, what: str) -> T:
    """`polling.eventually` at a deployment's pace: a probe is a query over a socket."""
    return await polling.eventually(probe, within=within, what=what, every=0.05)


def tail(path: Path, lines: int = 40) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@dataclass
class Process:
    name: str
    process: asyncio.subprocess.Process
    log: Path

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `STOP_SECONDS`."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_SECONDS)
            except TimeoutError:
                await self.kill()
        code = self.process.returncode
        assert code is not None
        return code


async def worker_started(worker: Process) -> bool:
    """Whether the worker has logged that it claims jobs."""
    text = await asyncio.to_thread(worker.log.read_text, errors="replace")
    return " started: concurrency " in text


@dataclass
class Deployment:
    """One database on the private server and the processes started against it."""

    server: PrivatePostgres
    database: str
    directory: Path
    processes: list[Process] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url(self.database)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.url,
            "DATA_DIR": str(self.directory / "data"),
            "JWT_SECRET": JWT_SECRET,
            "ENVIRONMENT": "development",
            "PROVISIONER": "dry-run",
            "LOG_LEVEL": "info",
            **extra,
        }

    async def _spawn(self, name: str, *args: str, **env: str) -> Process:
        log = self.directory / f"{name}.log"
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                SPAWNPOINT,
                *args,
                env=self.env(**env),
                cwd=self.directory,  # away from the repository's .env
                stdout=out,
                stderr=out,
            )
        handle = Process(name, process, log)
        self.processes.append(handle)
        return handle

    async def start_api(self) -> Api:
        port = free_port()
        process = await self._spawn(
            "api",
            "serve",
            "--no-worker",
            "--no-migrate",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        )
        api = Api(process=process, base_url=f"http://127.0.0.1:{port}")
        await api.wait_ready()
        return api

    async def start_worker(self, name: str, *options: str, wait: bool = True) -> Process:
        """A `spawnpoint worker`; with `wait`, return once it has started claiming."""
        worker = await self._spawn(name, "worker", *options)
        if wait:

            async def started() -> bool:
                assert worker.alive, tail(worker.log)
                return await worker_started(worker)

            await eventually(started, within=30, what=f"{name} to start ({worker.log})")
        return worker

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.processes if p.alive))

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ({p.log})\n{tail(p.log)}" for p in self.processes)

    async def org(self) -> Org:
        """A tenant with one member, a dry-run template and a plan that fits every spawn."""
        database = Database(self.url, pool_size=1)
        try:
            world = World(settings=make_settings(self.url, self.directory), database=database)
            return await world.org(
                roles=(Role.member,),
                max_workspaces=10_000,
                max_cpu=10_000,
                max_memory_mb=10**8,
                max_storage_gb=10**6,
            )
        finally:
            await database.dispose()

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(self.server.conninfo(self.database))

    async def rows(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        async with await self.connect() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()


@dataclass
class Api:
    process: Process
    base_url: str

    async def wait_ready(self) -> None:
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2) as client:

            async def ready() -> bool:
                assert self.process.alive, tail(self.process.log)
                with contextlib.suppress(httpx.TransportError):
                    return (await client.get("/ready")).status_code == 200
                return False

            await eventually(ready, within=30, what=f"the API to answer ({self.process.log})")


@dataclass
class Outcome:
    """One request as the client saw it (`index` numbers the spawns)."""

    index: int
    sent: float
    answered: float
    status: int | None
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def workspace_id(self) -> uuid.UUID | None:
        if self.status != 202 or self.body is None:
            return None
        return uuid.UUID(self.body["workspace"]["id"])


async def request_once(
    client: httpx.AsyncClient, method: str, url: str, *, index: int = -1, **options: Any
) -> Outcome:
    """Send one request; a transport error or timeout is an outcome too (status None)."""
    sent = time.monotonic()
    try:
        response = await client.request(method, url, **options)
    except httpx.HTTPError as exc:
        return Outcome(index, sent, time.monotonic(), None, error=repr(exc))
    try:
        body = response.json()
    except ValueError:
        body = {"unparsed": response.text[:500]}
    return Outcome(
        index, sent, time.monotonic(), response.status_code, body, dict(response.headers)
    )


async def spawn_once(
    client: httpx.AsyncClient, index: int, template_id: uuid.UUID, headers: dict[str, str]
) -> Outcome:
    """Spawn from `template_id` under the external_ref `chaos-{index}`."""
    spawn = {"template_id": str(template_id), "external_ref": f"chaos-{index}"}
    return await request_once(
        client, "POST", "/api/spawn", index=index, headers=headers, json=spawn
    )


async def paced_spawns(
    client: httpx.AsyncClient,
    *,
    count: int,
    per_second: float,
    burst: int,
    template_id: uuid.UUID,
    headers: dict[str, str],
    started: Callable[[int], None] = lambda _: None,
) -> list[Outcome]:
    """`count` spawns at `per_second` on average, `burst` of them sent together.

    Open loop: each request is its own task, so slow answers never slow the load down, and
    bursts keep several requests in flight (in their transactions) at any moment.
    """
    tasks: list[asyncio.Task[Outcome]] = []
    begin = time.monotonic()
    for index in range(count):
        delay = begin + (index // burst) * burst / per_second - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)  # load shape, not a wait for state
        tasks.append(asyncio.create_task(spawn_once(client, index, template_id, headers)))
        started(index)
    return list(await asyncio.gather(*tasks))


async def settled_workspaces(
    deployment: Deployment, tenant_id: uuid.UUID, expected: int
) -> dict[uuid.UUID, str] | None:
    """Every workspace of the tenant and its state, once `expected` exist and none is moving."""
    rows = await deployment.rows("SELECT id, state FROM workspaces WHERE tenant_id = %s", tenant_id)
    states = {row[0]: row[1] for row in rows}
    if len(states) < expected or any(s in {"pending", "provisioning"} for s in states.values()):
        return None
    return states


async def running_transitions(deployment: Deployment, tenant_id: uuid.UUID) -> Counter[uuid.UUID]:
    rows = await deployment.rows(
        "SELECT workspace_id FROM workspace_events WHERE tenant_id = %s AND to_state = 'running'",
        tenant_id,
    )
    return Counter(row[0] for row in rows)


async def all_running_once(
    deployment: Deployment, tenant_id: uuid.UUID, expected: int, *, within: float
) -> dict[uuid.UUID, str]:
    """Wait for the tenant's `expected` workspaces to settle; each runs, having started once.

    Returns:
        The state of each workspace of the tenant.
    """
    states = await eventually(
        lambda: settled_workspaces(deployment, tenant_id, expected),
        within=within,
        what=f"every workspace to settle\n{deployment.logs()}",
    )
    assert set(states.values()) == {"running"}, states
    transitions = await running_transitions(deployment, tenant_id)
    assert set(transitions) == set(states)
    assert set(transitions.values()) == {1}
    return states


@dataclass(frozen=True)
class JobRow:
    id: uuid.UUID
    workspace_id: uuid.UUID
    state: str
    attempts: int
    lease_owner: str | None
    lease_expires_at: object
    result: dict[str, Any] | None


async def provision_jobs(deployment: Deployment, tenant_id: uuid.UUID) -> list[JobRow]:
    rows = await deployment.rows(
        "SELECT id, (payload->>'workspace_id')::uuid, state, attempts, lease_owner,"
        " lease_expires_at, result FROM jobs"
        " WHERE tenant_id = %s AND type = 'workspace.provision'",
        tenant_id,
    )
    return [JobRow(*row) for row in rows]
