"""`spawnpoint serve` on SQLite: the polls on the serving loop, everything else on the work loop.

A poll must be answered while the work loop is busy (here: held still), every other request
and the lifespan run on the work loop's thread, and nothing writes from the serving loop.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from conftest import World, make_settings
from spawnpoint.app import create_app
from spawnpoint.db import Database
from spawnpoint.kit.loops import TwoLoops, WorkLoop, is_poll, uses_two_loops
from spawnpoint.kit.ratelimit import MemoryStorage

pytestmark = pytest.mark.backend("sqlite")  # the embedded mode is SQLite's

DEADLINE_SECONDS = 20


@pytest.fixture
async def two_loops(world: World) -> AsyncIterator[tuple[httpx.AsyncClient, WorkLoop, Database]]:
    """The app as `spawnpoint serve` runs it on SQLite, the test's loop as the serving loop."""
    database = Database(world.settings.sqlalchemy_url)
    work = WorkLoop(asyncio.new_event_loop)
    app = TwoLoops(create_app(world.settings, database=database), work, database)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://sp.test") as client:
            yield client, work, database
    finally:
        await database.dispose_serving()
        await work.run(database.dispose())
        work.stop()


def hold(work: WorkLoop) -> threading.Event:
    """Keep the work loop's thread busy until the returned event is set."""
    held, release = threading.Event(), threading.Event()

    def busy() -> None:
        held.set()
        release.wait(DEADLINE_SECONDS)

    work.loop.call_soon_threadsafe(busy)
    assert held.wait(DEADLINE_SECONDS)
    return release


async def test_a_poll_is_answered_while_the_work_loop_is_held(
    world: World, two_loops: tuple[httpx.AsyncClient, WorkLoop, Database]
) -> None:
    client, work, _ = two_loops
    body = {"template_id": str(world.settings.demo_template_id)}
    spawned = await client.post("/api/spawn", json=body, headers=world.dev)
    assert spawned.status_code == 202, spawned.text
    workspace_id = spawned.json()["workspace"]["id"]

    release = hold(work)
    try:
        events = f"/api/workspaces/{workspace_id}/events"
        listing = asyncio.create_task(client.get(events, headers=world.dev))
        poll = await asyncio.wait_for(
            client.get(f"/api/workspaces/{workspace_id}", headers=world.dev), DEADLINE_SECONDS
        )
        assert poll.status_code == 200, poll.text
        assert poll.json()["id"] == workspace_id
        missing = await asyncio.wait_for(
            client.get(f"/api/jobs/{uuid.uuid4()}", headers=world.dev), DEADLINE_SECONDS
        )
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        # The events' listing is the work loop's, which is still held.
        assert not listing.done()
    finally:
        release.set()
    listed = await asyncio.wait_for(listing, DEADLINE_SECONDS)
    assert listed.status_code == 200
    assert [e["workspace_id"] for e in listed.json()["items"]][:1] == [workspace_id]


async def test_a_write_from_the_serving_loop_is_refused(
    two_loops: tuple[httpx.AsyncClient, WorkLoop, Database],
) -> None:
    _, work, database = two_loops
    with pytest.raises(RuntimeError, match="work loop"):
        async with database.unit_of_work(write=True):
            pass

    async def write_there() -> bool:
        async with database.unit_of_work(write=True) as uow:
            return uow.write

    assert await work.run(write_there())


async def test_the_lifespan_runs_on_the_work_loop_which_ends_with_it(tmp_path: Any) -> None:
    seen: list[tuple[str, str]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "lifespan"
        while True:
            message = await receive()
            seen.append((message["type"], threading.current_thread().name))
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return

    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    for kind in ("lifespan.startup", "lifespan.shutdown"):
        inbox.put_nowait({"type": kind})
    sent: list[tuple[str, bool]] = []

    async def send(message: dict[str, str]) -> None:
        sent.append((message["type"], work.thread.is_alive()))

    work = WorkLoop(asyncio.new_event_loop)
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")
    await asyncio.wait_for(
        TwoLoops(app, work, database)({"type": "lifespan"}, inbox.get, send), DEADLINE_SECONDS
    )
    assert seen == [
        ("lifespan.startup", "spawnpoint work loop"),
        ("lifespan.shutdown", "spawnpoint work loop"),
    ]
    # The shutdown is reported complete only once the work loop has stopped.
    assert sent == [("lifespan.startup.complete", True), ("lifespan.shutdown.complete", False)]
    assert work.loop.is_closed()
    await database.dispose()


@pytest.mark.parametrize(
    ("method", "path", "polled"),
    [
        ("GET", "/api/workspaces/0190c6a8-7d2e-7000-8000-000000000001", True),
        ("HEAD", "/api/jobs/0190c6a87d2e70008000000000000001", True),
        ("GET", "/api/workspaces", False),
        ("GET", "/api/workspaces/0190c6a8-7d2e-7000-8000-000000000001/events", False),
        ("POST", "/api/workspaces/0190c6a8-7d2e-7000-8000-000000000001/stop", False),
        ("DELETE", "/api/jobs/0190c6a8-7d2e-7000-8000-000000000001", False),
    ],
)
def test_which_requests_the_serving_loop_answers(method: str, path: str, polled: bool) -> None:
    assert is_poll({"type": "http", "method": method, "path": path}) is polled


async def test_memory_counters_count_exactly_from_two_threads() -> None:
    storage = MemoryStorage()
    per_thread = 20_000

    async def count() -> None:
        for _ in range(per_thread):
            await storage.incr("k", 60)

    threads = [threading.Thread(target=asyncio.run, args=(count(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_SECONDS)
    assert await storage.get("k") == 2 * per_thread


async def test_memory_counters_start_a_new_window_once_one_expires() -> None:
    storage = MemoryStorage()
    assert await storage.incr("k", 60) == 1
    assert await storage.incr("k", 60, amount=2) == 3
    assert await storage.get("k") == 3
    assert await storage.incr("gone", 0) == 1  # expires at once
    assert await storage.get("gone") == 0
    assert await storage.incr("gone", 60) == 1
    await storage.clear("k")
    assert await storage.get("k") == 0


async def test_bodies_and_streamed_answers_cross_the_loops_whole_and_in_order(
    tmp_path: Any,
) -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(threading.current_thread().name)
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/fails":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            raise RuntimeError("after the start")
        await send({"type": "http.response.start", "status": 201, "headers": []})
        parts = [body] if scope["path"] == "/echo" else [b"one,", b"two,", b"three"]
        for index, part in enumerate(parts):
            more = index < len(parts) - 1
            await send({"type": "http.response.body", "body": part, "more_body": more})

    work = WorkLoop(asyncio.new_event_loop)
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    transport = httpx.ASGITransport(app=TwoLoops(app, work, database), raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://sp.test") as client:
            echoed = await client.post("/echo", content=b"x" * 100_000)
            assert (echoed.status_code, echoed.content) == (201, b"x" * 100_000)
            streamed = await client.get("/stream")
            assert (streamed.status_code, streamed.content) == (201, b"one,two,three")
            failed = await client.get("/fails")
            assert failed.status_code == 500  # the start alone never reached the client
    finally:
        work.stop()
        await database.dispose()
    assert seen == ["spawnpoint work loop"] * 3


@pytest.mark.parametrize(
    ("database_url", "redis_url", "two"),
    [
        ("sqlite+aiosqlite:///{dir}/a.db", None, True),
        ("sqlite+aiosqlite:///{dir}/a.db", "redis://127.0.0.1:6379/0", False),
        ("sqlite+aiosqlite:///:memory:", None, False),
        ("postgresql+psycopg://u@127.0.0.1/db", None, False),
    ],
)
def test_two_loops_only_on_a_sqlite_file_without_redis(
    tmp_path: Any, database_url: str, redis_url: str | None, two: bool
) -> None:
    settings = make_settings(database_url.format(dir=tmp_path), tmp_path, redis_url=redis_url)
    assert uses_two_loops(settings) is two
