"""The permit status cache: documents written to Redis after commits, read with a fallback.

Real Redis (127.0.0.1:6379), a key prefix per test (deleted afterwards), both database
backends. Each test builds its own app and `Database`, so the status cache is attached to
these tests' writes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import psycopg
import pytest
from redis.asyncio import Redis
from sqlalchemy import event
from sqlalchemy.engine import make_url
from typer.testing import CliRunner, Result

from conftest import World
from factories import unique
from polling import eventually
from spawnpoint.app import create_app
from spawnpoint.cli import app as cli_app
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.queue import Backoff
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.jobs.worker import Worker
from spawnpoint.kit.clock import utcnow
from spawnpoint.models import Role, Workspace, WorkspaceState
from spawnpoint.provisioners import ProvisionerRegistry
from spawnpoint.runtime import periodic_tasks
from spawnpoint.workspaces.handlers import WorkspaceHandlers
from spawnpoint.workspaces.lifecycle import move
from spawnpoint.workspaces.repository import StatusRows
from spawnpoint.workspaces.status_cache import (
    CACHE_READS,
    RepairSweep,
    StatusCache,
    StatusKeeper,
    detach_status_cache,
    documents_of,
    install_status_cache,
    status_cache_of,
    status_cache_task,
    version_of,
)
from tcp_proxy import TcpProxies

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_URL = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """This test's key prefix; its keys are deleted afterwards."""
    value = unique("spawnpoint-test-status")
    yield value
    redis = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in redis.scan_iter(match=f"{value}:*")]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()


@dataclass
class Cached:
    """An app whose database has a status cache, and a direct line to Redis to look."""

    client: httpx.AsyncClient
    database: Database
    keeper: StatusKeeper
    settings: Settings
    redis: Redis
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def stored(self, tenant_id: uuid.UUID, permit_id: str) -> dict[str, Any] | None:
        """The hash Redis holds for a permit: version and both documents, decoded."""
        found = await self.redis.hgetall(self.keeper.cache.key(tenant_id, permit_id))
        if not found:
            return None
        return {
            "v": int(found[b"v"]),
            "status": json.loads(found[b"status"]),
            "connection": json.loads(found[b"connection"]),
        }

    async def from_database(self, workspace_id: uuid.UUID) -> dict[str, Any]:
        """Both documents as the database renders them now."""
        async with self.database.transaction(write=False) as session:
            (row,) = await StatusRows(session).by_ids([workspace_id])
        documents = documents_of(row)
        return {
            "v": documents.version,
            "status": json.loads(documents.status),
            "connection": json.loads(documents.connection),
        }

    def start_worker(self) -> None:
        registry = HandlerRegistry()
        WorkspaceHandlers(ProvisionerRegistry.from_entry_points()).register(registry)
        worker = Worker(
            self.database,
            self.settings,
            registry,
            concurrency=4,
            lease_seconds=10,
            poll_interval=0.05,
            grace_seconds=5,
            backoff=Backoff(base_seconds=0.01, cap_seconds=0.05),
        )
        self.workers.append(asyncio.create_task(worker.run(self.stop)))


MakeCached = Callable[..., Awaitable[Cached]]


@pytest.fixture
async def cached_app(backend_settings: Settings, prefix: str) -> AsyncIterator[MakeCached]:
    made: list[Cached] = []

    async def make(redis_url: str = REDIS_URL, **overrides: Any) -> Cached:
        settings = backend_settings.model_copy(
            update={
                "redis_url": redis_url,
                "status_cache_prefix": prefix,
                "status_cache_retry_seconds": 0.05,
                # Rate limits would count in Redis too; these tests cut Redis off.
                "rate_limit_per_minute": 0,
                "rate_limit_tenant_per_minute": 0,
                **overrides,
            }
        )
        database = Database(settings.sqlalchemy_url, pool_size=5)
        app = create_app(settings, database=database)
        # What the app's lifespan does at start-up (ASGITransport runs no lifespan).
        assert status_cache_of(database) is None
        keeper = install_status_cache(database, settings)
        assert keeper is not None
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://spawnpoint.test"
        )
        cached = Cached(client, database, keeper, settings, Redis.from_url(REDIS_URL))
        made.append(cached)
        return cached

    yield make
    for cached in made:
        cached.stop.set()
        for task in cached.workers:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, 30)
        await cached.client.aclose()
        await cached.redis.aclose()
        await detach_status_cache(cached.database)
        await cached.database.dispose()


async def spawn(
    cached: Cached, headers: dict[str, str], template_id: uuid.UUID
) -> tuple[uuid.UUID, str]:
    permit = unique("permit")
    response = await cached.client.post(
        "/api/spawn",
        headers=headers,
        json={"template_id": str(template_id), "external_ref": permit},
    )
    assert response.status_code == 202, response.text
    return uuid.UUID(response.json()["workspace"]["id"]), permit


async def read_both(cached: Cached, permit: str, headers: dict[str, str]) -> dict[str, Any]:
    status = await cached.client.get(f"/api/v1/workspaces/{permit}/status", headers=headers)
    connection = await cached.client.get(f"/api/v1/workspaces/{permit}/connection", headers=headers)
    assert status.status_code == connection.status_code == 200, (status.text, connection.text)
    return {"status": status.json(), "connection": connection.json()}


def reads(outcome: str) -> float:
    return CACHE_READS.labels(outcome)._value.get()


async def test_documents_are_written_after_each_commit_and_read_back_from_redis(
    cached_app: MakeCached, world: World
) -> None:
    cached = await cached_app()
    org = await world.org(roles=(Role.member,))
    member = org.headers[Role.member]
    workspace_id, permit = await spawn(cached, member, org.template_id)

    # The spawn's commit wrote the pending workspace's documents.
    stored = await cached.stored(org.tenant_id, permit)
    assert stored is not None
    assert stored["status"]["status"] == "pending"
    assert stored == await cached.from_database(workspace_id)

    cached.start_worker()

    async def running() -> dict[str, Any] | None:
        found = await cached.stored(org.tenant_id, permit)
        return found if found and found["status"]["status"] == "running" else None

    stored = await eventually(running, what="the running state in Redis")
    assert stored == await cached.from_database(workspace_id)
    assert stored["connection"]["connection"] is not None  # the driver's, after provisioning

    hits = reads("hit")
    answered = await read_both(cached, permit, member)
    assert reads("hit") == hits + 2
    assert answered == {"status": stored["status"], "connection": stored["connection"]}

    # A stop: the user's transition is written through, then the worker's.
    stop = await cached.client.post(f"/api/workspaces/{workspace_id}/stop", headers=member)
    assert stop.status_code == 202
    assert (await cached.stored(org.tenant_id, permit) or {})["status"]["status"] in {
        "stopping",
        "stopped",
    }

    async def stopped() -> bool:
        found = await cached.stored(org.tenant_id, permit)
        return bool(found and found["status"]["status"] == "stopped")

    await eventually(stopped, what="the stopped state in Redis")
    assert await cached.stored(org.tenant_id, permit) == await cached.from_database(workspace_id)

    # The activity heartbeat moves updated_at, which the status document shows.
    before = await cached.stored(org.tenant_id, permit)
    touched = await cached.client.post(f"/api/workspaces/{workspace_id}/activity", headers=member)
    assert touched.status_code == 204
    after = await cached.stored(org.tenant_id, permit)
    assert before is not None
    assert after is not None
    assert after["v"] > before["v"]
    assert after == await cached.from_database(workspace_id)


async def test_a_rolled_back_transaction_writes_nothing(
    cached_app: MakeCached, world: World
) -> None:
    cached = await cached_app()
    org = await world.org(roles=(Role.member,))
    workspace_id, permit = await spawn(cached, org.headers[Role.member], org.template_id)
    before = await cached.stored(org.tenant_id, permit)
    assert before is not None
    assert before["status"]["status"] == "pending"

    async def delete_then_fail() -> None:
        async with cached.database.unit_of_work(write=True) as uow:
            workspace = await uow.session.get(Workspace, workspace_id)
            assert workspace is not None
            move(uow.session, workspace, WorkspaceState.deleting, actor="system", reason="test")
            await uow.session.flush()
            raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError, match="changed my mind"):
        await delete_then_fail()
    assert await cached.stored(org.tenant_id, permit) == before

    # The same change committed is written.
    async with cached.database.unit_of_work(write=True) as uow:
        workspace = await uow.session.get(Workspace, workspace_id)
        assert workspace is not None
        move(uow.session, workspace, WorkspaceState.deleting, actor="system", reason="test")
    after = await cached.stored(org.tenant_id, permit)
    assert after is not None
    assert after["status"]["status"] == "deleting"
    assert after == await cached.from_database(workspace_id)


async def test_any_orm_change_of_a_permit_workspace_is_written_through(
    cached_app: MakeCached, world: World
) -> None:
    """A column set outside a transition still moves updated_at, which the status shows."""
    cached = await cached_app()
    org = await world.org(roles=(Role.member,))
    workspace_id, permit = await spawn(cached, org.headers[Role.member], org.template_id)
    before = await cached.stored(org.tenant_id, permit)
    assert before is not None
    async with cached.database.unit_of_work(write=True) as uow:
        workspace = await uow.session.get(Workspace, workspace_id)
        assert workspace is not None
        workspace.error = "a note set by hand"
    after = await cached.stored(org.tenant_id, permit)
    assert after is not None
    assert after["v"] > before["v"]
    assert after["status"]["error"] == "a note set by hand"
    assert after == await cached.from_database(workspace_id)


def _row(updated_at_offset: float, state: str, tenant_id: uuid.UUID, permit: str) -> Any:
    return SimpleNamespace(
        id=uuid.UUID(int=7),
        tenant_id=tenant_id,
        external_ref=permit,
        state=state,
        error=None,
        updated_at=utcnow().replace(microsecond=0) + timedelta(seconds=updated_at_offset),
        connection={"url": f"http://{state}.example"},
    )


async def test_a_late_writer_with_an_older_version_never_overwrites_a_newer_state(
    cached_app: MakeCached,
) -> None:
    cached = await cached_app()
    cache = cached.keeper.cache
    tenant = uuid.uuid4()
    permit = unique("permit")
    older = documents_of(_row(0, "provisioning", tenant, permit))
    newer = documents_of(_row(0.000001, "running", tenant, permit))
    assert newer.version == older.version + 1

    assert await cache.put([newer]) == [True]
    assert await cache.put([older]) == [False]
    stored = await cached.stored(tenant, permit)
    assert stored is not None
    assert stored["v"] == newer.version
    assert stored["status"]["status"] == "running"
    # The same version again is written (a rebuild rewrites what it reads).
    assert await cache.put([newer]) == [True]

    # In one batch, each key is compared on its own.
    other = unique("permit")
    batch = [older, documents_of(_row(0, "stopped", tenant, other))]
    assert await cache.put(batch) == [False, True]


async def test_a_late_after_commit_step_loses_to_the_newer_committed_state(
    cached_app: MakeCached, world: World
) -> None:
    """Two writers of one workspace: the first one's Redis write arrives last, with the
    documents it read before the second committed; Redis keeps the newer state."""
    cached = await cached_app()
    org = await world.org(roles=(Role.member,))
    workspace_id, permit = await spawn(cached, org.headers[Role.member], org.template_id)
    async with cached.database.transaction(write=False) as session:
        (row,) = await StatusRows(session).by_ids([workspace_id])
    stale = documents_of(row)

    async with cached.database.unit_of_work(write=True) as uow:
        workspace = await uow.session.get(Workspace, workspace_id)
        assert workspace is not None
        move(uow.session, workspace, WorkspaceState.deleting, actor="system", reason="test")
    newer = await cached.stored(org.tenant_id, permit)
    assert newer is not None
    assert newer["status"]["status"] == "deleting"

    assert await cached.keeper.cache.put([stale]) == [False]
    assert await cached.stored(org.tenant_id, permit) == newer
    answered = await read_both(cached, permit, org.headers[Role.member])
    assert answered["status"]["status"] == "deleting"


async def test_another_tenants_permit_is_a_404_from_the_cache_too(
    cached_app: MakeCached, world: World
) -> None:
    cached = await cached_app()
    mine = await world.org(roles=(Role.member, Role.viewer))
    theirs = await world.org(roles=(Role.viewer,))
    _, permit = await spawn(cached, mine.headers[Role.member], mine.template_id)
    assert await cached.stored(mine.tenant_id, permit) is not None

    for path in ("status", "connection"):
        url = f"/api/v1/workspaces/{permit}/{path}"
        own = await cached.client.get(url, headers=mine.headers[Role.viewer])
        assert own.status_code == 200
        other = await cached.client.get(url, headers=theirs.headers[Role.viewer])
        assert other.status_code == 404, other.text
        assert other.headers["content-type"].startswith("application/problem+json")
    # The other tenant's miss filled nothing under its own key.
    assert await cached.stored(theirs.tenant_id, permit) is None

    # The same permit id in the other tenant is its own workspace, with its own documents.
    other_member = await world.org(roles=(Role.member,))
    response = await cached.client.post(
        "/api/spawn",
        headers=other_member.headers[Role.member],
        json={"template_id": str(other_member.template_id), "external_ref": permit},
    )
    assert response.status_code == 202
    theirs_stored = await cached.stored(other_member.tenant_id, permit)
    mine_stored = await cached.stored(mine.tenant_id, permit)
    assert theirs_stored is not None
    assert mine_stored is not None
    assert theirs_stored["status"]["workspace_id"] != mine_stored["status"]["workspace_id"]


async def test_a_miss_answers_from_the_database_and_fills_the_cache(
    cached_app: MakeCached, world: World
) -> None:
    cached = await cached_app()
    org = await world.org(roles=(Role.member,))
    member = org.headers[Role.member]
    workspace_id, permit = await spawn(cached, member, org.template_id)
    await cached.redis.delete(cached.keeper.cache.key(org.tenant_id, permit))

    misses = reads("miss")
    answered = await read_both(cached, permit, member)
    assert reads("miss") >= misses + 1
    expected = await cached.from_database(workspace_id)
    assert answered == {"status": expected["status"], "connection": expected["connection"]}
    assert await cached.stored(org.tenant_id, permit) == expected
    unknown = await cached.client.get("/api/v1/workspaces/no-such-permit/status", headers=member)
    assert unknown.status_code == 404


async def test_redis_cut_routes_answer_from_the_database_then_the_cache_heals(
    cached_app: MakeCached, world: World, tcp_proxy: TcpProxies
) -> None:
    proxy = await tcp_proxy(REDIS_HOST, REDIS_PORT)
    cached = await cached_app(redis_url=f"redis://127.0.0.1:{proxy.port}/0")
    org = await world.org(roles=(Role.member,))
    member = org.headers[Role.member]
    workspace_id, permit = await spawn(cached, member, org.template_id)
    assert (await read_both(cached, permit, member))["status"]["status"] == "pending"

    await proxy.cut()
    fallbacks = reads("fallback")
    # A transition while Redis is cut off: committed, its write fails and is owed.
    deleted = await cached.client.delete(f"/api/workspaces/{workspace_id}", headers=member)
    assert deleted.status_code == 202, deleted.text
    assert workspace_id in cached.keeper.cache.pending
    stale = await cached.stored(org.tenant_id, permit)
    assert stale is not None
    assert stale["status"]["status"] == "pending"
    # The routes answer the database's truth, not Redis's stale document.
    expected = await cached.from_database(workspace_id)
    for _ in range(3):
        answered = await read_both(cached, permit, member)
        assert answered == {"status": expected["status"], "connection": expected["connection"]}
    assert reads("fallback") >= fallbacks + 6

    await proxy.restore()

    # The owed write goes out by itself once Redis answers, with no read to prompt it.
    async def healed() -> bool:
        return await cached.stored(org.tenant_id, permit) == expected

    await eventually(healed, what="the owed write after Redis came back")
    assert not cached.keeper.cache.pending
    answered = await read_both(cached, permit, member)
    assert answered == {"status": expected["status"], "connection": expected["connection"]}
    hits = reads("hit")
    await read_both(cached, permit, member)
    assert reads("hit") == hits + 2


async def test_a_slow_redis_is_given_up_on_within_the_timeout(
    cached_app: MakeCached, world: World
) -> None:
    """A server that accepts connections and never answers: the routes still answer."""
    connections: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        cached = await cached_app(
            redis_url=f"redis://127.0.0.1:{port}/0", status_cache_timeout_seconds=0.05
        )
        org = await world.org(roles=(Role.member,))
        member = org.headers[Role.member]
        workspace_id, permit = await spawn(cached, member, org.template_id)
        expected = await cached.from_database(workspace_id)
        loop = asyncio.get_running_loop()
        started = loop.time()
        answered = await read_both(cached, permit, member)
        assert loop.time() - started < 5
        assert answered == {"status": expected["status"], "connection": expected["connection"]}
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_the_repair_sweep_rewrites_drifted_documents_in_bounded_batches(
    cached_app: MakeCached, world: World
) -> None:
    cached = await cached_app()
    org = await world.org(roles=(Role.member,), max_workspaces=10)
    member = org.headers[Role.member]
    spawned = [await spawn(cached, member, org.template_id) for _ in range(3)]
    cache = cached.keeper.cache
    # Drift no process remembers: one key lost, one overwritten with garbage of an old version.
    await cached.redis.delete(cache.key(org.tenant_id, spawned[0][1]))
    await cached.redis.hset(
        cache.key(org.tenant_id, spawned[1][1]),
        mapping={"v": 1, "status": b"{}", "connection": b"{}"},
    )
    # And the key of a permit whose workspace is gone (a deleted tenant's).
    orphan = cache.key(uuid.uuid4(), "gone-permit")
    await cached.redis.hset(orphan, mapping={"v": 1, "status": b"{}", "connection": b"{}"})

    assert status_cache_task(cached.settings.model_copy(update={"redis_url": None})) == []
    (task,) = status_cache_task(cached.settings)
    assert task.name == "status_cache.repair"
    assert task.name in {t.name for t in periodic_tasks(cached.settings)}
    # Every permit workspace of the database is swept, 2 per tick; this one starts at this
    # tenant's (the shared test database holds other tests' permits before it).
    sweep = RepairSweep(batch_size=2, _after=(org.tenant_id, ""))

    async def repaired() -> bool:
        async with cached.database.unit_of_work(write=True) as uow:
            assert await sweep(uow.session, utcnow()) <= 2
        for workspace_id, permit in spawned:
            if await cached.stored(org.tenant_id, permit) != await cached.from_database(
                workspace_id
            ):
                return False
        return not await cached.redis.exists(orphan)

    await eventually(repaired, what="the sweep to repair the drift", within=60, every=0)


async def test_the_rebuild_command_rewrites_every_document_and_drops_orphans(
    cached_app: MakeCached, world: World, prefix: str
) -> None:
    cached = await cached_app()
    org = await world.org(roles=(Role.member,))
    member = org.headers[Role.member]
    workspace_id, permit = await spawn(cached, member, org.template_id)
    cache = cached.keeper.cache
    await cached.redis.delete(cache.key(org.tenant_id, permit))
    orphan = cache.key(uuid.uuid4(), "gone-permit")
    await cached.redis.hset(orphan, mapping={"v": 1, "status": b"{}", "connection": b"{}"})

    result = await rebuild_cli(cached.settings, "--batch-size", "50")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["written"] >= 1
    assert report["deleted"] == 1
    assert report["failed"] == 0
    assert await cached.stored(org.tenant_id, permit) == await cached.from_database(workspace_id)
    assert not await cached.redis.exists(orphan)


async def test_the_forced_rebuild_replaces_documents_newer_than_the_database(
    cached_app: MakeCached, world: World
) -> None:
    """After the database is restored from a backup, Redis may hold newer versions."""
    cached = await cached_app()
    org = await world.org(roles=(Role.member,))
    workspace_id, permit = await spawn(cached, org.headers[Role.member], org.template_id)
    key = cached.keeper.cache.key(org.tenant_id, permit)
    ahead = {"v": 2**52, "status": b'{"status":"running"}', "connection": b"{}"}
    await cached.redis.hset(key, mapping=ahead)

    result = await rebuild_cli(cached.settings)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])["stale"] >= 1
    assert int(await cached.redis.hget(key, "v")) == 2**52

    result = await rebuild_cli(cached.settings, "--force")
    assert result.exit_code == 0, result.output
    assert await cached.stored(org.tenant_id, permit) == await cached.from_database(workspace_id)


async def test_the_rebuild_command_needs_redis(backend_settings: Settings) -> None:
    result = await rebuild_cli(backend_settings.model_copy(update={"redis_url": None}))
    assert result.exit_code == 1
    assert "REDIS_URL" in result.output


async def rebuild_cli(settings: Settings, *args: str) -> Result:
    env = {
        "DATABASE_URL": settings.sqlalchemy_url,
        "DATA_DIR": str(settings.data_dir),
        "JWT_SECRET": settings.jwt_secret or "",
        "ENVIRONMENT": "development",
        "AUDIT_SIGNING_KEY": settings.audit_key_material or "",
        "REDIS_URL": settings.redis_url or "",
        "WPS_REDIS__URL": "",
        "STATUS_CACHE_PREFIX": settings.status_cache_prefix,
    }
    return await asyncio.to_thread(
        CliRunner().invoke, cli_app, ["cache", "rebuild", *args], env=env
    )


async def test_without_redis_the_routes_answer_from_the_database(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    assert status_cache_of(database) is None
    org = await world.org(roles=(Role.member,))
    member = org.headers[Role.member]
    permit = unique("permit")
    response = await client.post(
        "/api/spawn",
        headers=member,
        json={"template_id": str(org.template_id), "external_ref": permit},
    )
    assert response.status_code == 202
    status = await client.get(f"/api/v1/workspaces/{permit}/status", headers=member)
    assert status.status_code == 200
    assert status.json()["status"] == "pending"
    assert status.json()["workspace_id"] == response.json()["workspace"]["id"]


def test_the_version_is_the_update_time_in_microseconds() -> None:
    moment = utcnow()
    naive = moment.replace(tzinfo=None)
    assert version_of(moment) == version_of(naive)
    assert version_of(moment + timedelta(microseconds=1)) == version_of(moment) + 1
    assert version_of(moment) == int(moment.timestamp()) * 1_000_000 + moment.microsecond


def test_a_cache_needs_a_url(backend_settings: Settings) -> None:
    with pytest.raises(ValueError, match="REDIS_URL"):
        StatusCache.from_settings(backend_settings.model_copy(update={"redis_url": None}))


async def test_a_hit_reads_nothing_from_the_database_even_while_it_is_locked(
    cached_app: MakeCached, world: World, backend: str
) -> None:
    """The issue's "answer from Redis even while the database is slow": a cached read sends
    no statement on workspaces (a miss does); on PostgreSQL, with the table locked by another
    transaction, a cached read still answers."""
    cached = await cached_app(auth_cache_seconds=60)
    org = await world.org(roles=(Role.member,))
    member = org.headers[Role.member]
    workspace_id, permit = await spawn(cached, member, org.template_id)
    expected = await cached.from_database(workspace_id)
    await read_both(cached, permit, member)  # the caller's account is cached now
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = cached.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        answered = await read_both(cached, permit, member)
        assert answered == {"status": expected["status"], "connection": expected["connection"]}
        assert not [q for q in statements if "workspaces" in q]
        await cached.redis.delete(cached.keeper.cache.key(org.tenant_id, permit))
        assert (await read_both(cached, permit, member)) == answered
        assert [q for q in statements if "workspaces" in q]
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    if backend != "postgres":
        return  # SQLite readers never wait for a lock (WAL)
    url = make_url(cached.settings.sqlalchemy_url).set(drivername="postgresql")
    async with await psycopg.AsyncConnection.connect(url.render_as_string(False)) as blocker:
        await blocker.execute("LOCK TABLE workspaces IN ACCESS EXCLUSIVE MODE")
        answered = await asyncio.wait_for(read_both(cached, permit, member), timeout=5)
        assert answered == {"status": expected["status"], "connection": expected["connection"]}
        # A miss has to wait for the database: the lock is real.
        await cached.redis.delete(cached.keeper.cache.key(org.tenant_id, permit))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                cached.client.get(f"/api/v1/workspaces/{permit}/status", headers=member),
                timeout=0.5,
            )
        await blocker.rollback()


async def test_the_app_attaches_the_cache_at_start_up_and_closes_it_at_shutdown(
    backend_settings: Settings, prefix: str
) -> None:
    settings = backend_settings.model_copy(
        update={"redis_url": REDIS_URL, "status_cache_prefix": prefix}
    )
    database = Database(settings.sqlalchemy_url, pool_size=2)
    app = create_app(settings, database=database)
    assert status_cache_of(database) is None
    async with app.router.lifespan_context(app):
        keeper = status_cache_of(database)
        assert keeper is not None
        assert keeper.cache.prefix == prefix
    assert status_cache_of(database) is None
    plain = Database(settings.sqlalchemy_url, pool_size=2)
    app = create_app(settings.model_copy(update={"redis_url": None}), database=plain)
    async with app.router.lifespan_context(app):
        assert status_cache_of(plain) is None


async def test_a_write_through_whose_database_read_fails_is_owed_not_raised(
    prefix: str, tmp_path: Path
) -> None:
    gone = Database(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'no.db'}", pool_size=1)
    cache = StatusCache.connect(REDIS_URL, prefix=prefix, timeout=1, retry_seconds=60)
    keeper = StatusKeeper(database=gone, cache=cache)
    workspace_id, tenant_id = uuid.uuid4(), uuid.uuid4()
    try:
        await keeper.refresh({workspace_id: (tenant_id, "permit")})
        assert cache.pending == {workspace_id: (tenant_id, "permit")}
        assert not cache.trusted
    finally:
        await keeper.aclose()
        await gone.dispose()


async def test_the_worker_process_writes_its_transitions_through(
    cached_app: MakeCached, world: World, tmp_path: Path
) -> None:
    """`spawnpoint worker` attaches the cache: the provisioning it carries out reaches Redis."""
    cached = await cached_app()
    org = await world.org(roles=(Role.member,))
    workspace_id, permit = await spawn(cached, org.headers[Role.member], org.template_id)
    settings = cached.settings
    env = {
        **os.environ,
        "DATABASE_URL": settings.sqlalchemy_url,
        "DATA_DIR": str(settings.data_dir),
        "ENVIRONMENT": "development",
        "REDIS_URL": REDIS_URL,
        "STATUS_CACHE_PREFIX": settings.status_cache_prefix,
        "RATE_LIMIT_PER_MINUTE": "0",
        "RATE_LIMIT_TENANT_PER_MINUTE": "0",
    }
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        worker = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("spawnpoint")),
            "worker",
            "--no-scheduler",
            "--poll-interval",
            "0.1",
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=out,
        )
    try:

        async def running() -> bool:
            found = await cached.stored(org.tenant_id, permit)
            return bool(found and found["status"]["status"] == "running")

        await eventually(running, what="the worker's running state in Redis", within=60)
        assert await cached.stored(org.tenant_id, permit) == await cached.from_database(
            workspace_id
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), 30)
    assert worker.returncode == 0, log.read_text()[-3000:]
