"""The embedded default under a burst, as `make run` serves it: one `spawnpoint serve`
process on a SQLite file with its in-process worker.

A class of students spawning at once, and the process killed with SIGKILL in the middle
of a burst: every workspace that got a 202 exists and reaches `running` exactly once, none
is half-written, no request fails with "database is locked" and none gets a 5xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from chaos.deployment import Api, Outcome, Process, eventually, request_once, tail
from chaos.server import free_port
from conftest import JWT_SECRET, Org, World, make_settings
from spawnpoint.db import Database
from spawnpoint.migrations import upgrade
from spawnpoint.models import Role

SPAWNPOINT = str(Path(sys.executable).with_name("spawnpoint"))


@dataclass
class Embedded:
    directory: Path
    org: Org
    processes: list[Process]

    @property
    def database_file(self) -> Path:
        return self.directory / "spawnpoint.db"

    @property
    def url(self) -> str:
        return f"sqlite+aiosqlite:///{self.database_file}"

    async def start(self) -> Api:
        """`spawnpoint serve` on the file, its worker in the process (the default)."""
        port = free_port()
        log = self.directory / f"serve-{len(self.processes)}.log"
        env = {
            **os.environ,
            "DATABASE_URL": self.url,
            "DATA_DIR": str(self.directory),
            "JWT_SECRET": JWT_SECRET,
            "ENVIRONMENT": "development",
            "LOG_LEVEL": "warning",
        }
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                SPAWNPOINT,
                "serve",
                "--no-migrate",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                env=env,
                cwd=self.directory,
                stdout=out,
                stderr=out,
            )
        handle = Process("serve", process, log)
        self.processes.append(handle)
        api = Api(process=handle, base_url=f"http://127.0.0.1:{port}")
        await api.wait_ready()
        return api

    def rows(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        with contextlib.closing(sqlite3.connect(self.database_file, timeout=30)) as conn:
            return conn.execute(sql, params).fetchall()

    def logs(self) -> str:
        return "\n".join(p.log.read_text(errors="replace") for p in self.processes)


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[Embedded]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'spawnpoint.db'}", tmp_path)
    await asyncio.to_thread(upgrade, settings)
    database = Database(settings.sqlalchemy_url, pool_size=1)
    try:
        org = await World(settings=settings, database=database).org(
            roles=(Role.member,),
            max_workspaces=10_000,
            max_cpu=10_000,
            max_memory_mb=10**8,
            max_storage_gb=10**6,
            max_concurrent_jobs=10_000,
        )
    finally:
        await database.dispose()
    deployment = Embedded(tmp_path, org, [])
    try:
        yield deployment
    finally:
        for process in deployment.processes:
            await process.stop()


def hex_id(value: uuid.UUID) -> str:
    return value.hex  # how SQLAlchemy stores a UUID in SQLite


def workspace_ids(embedded: Embedded) -> set[uuid.UUID]:
    rows = embedded.rows(
        "SELECT id FROM workspaces WHERE tenant_id = ?", hex_id(embedded.org.tenant_id)
    )
    return {uuid.UUID(str(row[0])) for row in rows}


def running_counts(embedded: Embedded) -> Counter[uuid.UUID]:
    rows = embedded.rows(
        "SELECT workspace_id FROM workspace_events WHERE tenant_id = ? AND to_state = 'running'",
        hex_id(embedded.org.tenant_id),
    )
    return Counter(uuid.UUID(str(row[0])) for row in rows)


async def all_running(embedded: Embedded, expected: set[uuid.UUID], *, within: float) -> None:
    async def done() -> bool:
        rows = await asyncio.to_thread(
            embedded.rows,
            "SELECT id, state FROM workspaces WHERE tenant_id = ?",
            hex_id(embedded.org.tenant_id),
        )
        states = {uuid.UUID(str(i)): s for i, s in rows}
        return expected <= set(states) and all(s == "running" for s in states.values())

    await eventually(done, within=within, what="every workspace to run")


def assert_whole(embedded: Embedded) -> None:
    """Every workspace has its provision job and its first event: nothing half-written."""
    tenant = hex_id(embedded.org.tenant_id)
    orphans = embedded.rows(
        "SELECT w.id FROM workspaces w WHERE w.tenant_id = ? AND NOT EXISTS"
        " (SELECT 1 FROM jobs j WHERE j.type = 'workspace.provision'"
        "  AND json_extract(j.payload, '$.workspace_id') IN (w.id, "
        "   lower(substr(w.id,1,8)||'-'||substr(w.id,9,4)||'-'||substr(w.id,13,4)||'-'"
        "   ||substr(w.id,17,4)||'-'||substr(w.id,21))))",
        tenant,
    )
    assert orphans == []
    without_event = embedded.rows(
        "SELECT w.id FROM workspaces w WHERE w.tenant_id = ? AND NOT EXISTS"
        " (SELECT 1 FROM workspace_events e"
        "  WHERE e.workspace_id = w.id AND e.to_state = 'pending')",
        tenant,
    )
    assert without_event == []


async def burst(api: Api, org: Org, count: int, *, clients: int, poll: bool) -> list[Outcome]:
    """`count` spawns sent at once over `clients` connections; with `poll`, each client
    then reads its workspace every 50 ms until it runs, as a control plane's clients do."""
    headers = org.headers[Role.member]
    body = {"template_id": str(org.template_id)}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=60, limits=limits) as client:

        async def one(index: int) -> Outcome:
            outcome = await request_once(
                client, "POST", "/api/spawn", index=index, headers=headers, json=body
            )
            workspace_id = outcome.workspace_id
            while poll and workspace_id is not None:
                read = await client.get(f"/api/workspaces/{workspace_id}", headers=headers)
                assert read.status_code == 200, read.text
                if read.json()["state"] == "running":
                    break
                await asyncio.sleep(0.05)  # the clients' polling interval: load, not a wait
            return outcome

        return list(await asyncio.gather(*(one(i) for i in range(count))))


async def test_a_class_spawning_at_once_all_run_exactly_once(embedded: Embedded) -> None:
    api = await embedded.start()
    outcomes = await burst(api, embedded.org, 120, clients=32, poll=True)
    statuses = Counter(o.status for o in outcomes)
    assert statuses == {202: 120}, [o.body for o in outcomes if o.status != 202][:3]
    accepted = {o.workspace_id for o in outcomes if o.workspace_id is not None}
    assert len(accepted) == 120
    await all_running(embedded, accepted, within=30)
    assert workspace_ids(embedded) == accepted
    assert set(running_counts(embedded).values()) == {1}
    assert_whole(embedded)
    assert "database is locked" not in embedded.logs()


async def test_sigkill_in_a_burst_loses_no_accepted_spawn_and_half_writes_none(
    embedded: Embedded,
) -> None:
    api = await embedded.start()
    headers = embedded.org.headers[Role.member]
    body = {"template_id": str(embedded.org.template_id)}
    answered: list[Outcome] = []
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30, limits=limits) as client:

        async def one(index: int) -> None:
            outcome = await request_once(
                client, "POST", "/api/spawn", index=index, headers=headers, json=body
            )
            answered.append(outcome)

        tasks = [asyncio.create_task(one(i)) for i in range(100)]

        async def some_answered() -> bool:
            return sum(o.status == 202 for o in answered) >= 30

        await eventually(some_answered, within=30, what="30 spawns to be accepted")
        await api.process.kill()
        await asyncio.gather(*tasks)
    accepted = {o.workspace_id for o in answered if o.workspace_id is not None}
    assert len(accepted) >= 30
    # Whatever did not get a 202 got no answer at all: the process died under it.
    assert {o.status for o in answered} <= {202, None}, Counter(o.status for o in answered)
    assert_whole(embedded)  # before the restart: what is on disk is whole
    committed = workspace_ids(embedded)
    assert accepted <= committed  # a 202 is only sent once the rows are durable

    await embedded.start()
    await all_running(embedded, committed, within=60)
    assert workspace_ids(embedded) == committed
    counts = running_counts(embedded)
    assert set(counts) == committed
    assert set(counts.values()) == {1}
    assert_whole(embedded)
    assert "database is locked" not in embedded.logs(), tail(embedded.processes[-1].log)
