"""kit/routing.py: routers that turn away paths they do not serve, reads' transactions."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.deps import Session
from spawnpoint.kit.errors import NotFound, install_problem_handlers
from spawnpoint.kit.methods import install_method_semantics
from spawnpoint.kit.routing import StrictRouter


def routed_app(settings: Settings, database: Database) -> FastAPI:
    items = StrictRouter(prefix="/api/items")
    files = StrictRouter()

    @items.get("/{item_id}")
    async def read_item(item_id: uuid.UUID) -> dict[str, str]:
        return {"router": "items", "item": str(item_id)}

    @items.get("/{item_id}/parts/{part:int}")
    async def read_part(item_id: uuid.UUID, part: int) -> dict[str, object]:
        return {"router": "items", "part": part}

    @files.get("/api/files/{name:path}")
    async def read_file(name: str) -> dict[str, str]:
        return {"router": "files", "name": name}

    @files.get("/api/reads/{value}")
    async def read_value(session: Session, value: str) -> dict[str, object]:
        found = (await session.execute(text("SELECT :v"), {"v": value})).scalar_one()
        if value == "missing":
            raise NotFound("No such value.")
        return {"value": found}

    @files.get("/api/reads-nothing")
    async def read_nothing() -> dict[str, bool]:
        return {"ok": True}

    app = FastAPI()
    app.state.settings = settings
    app.state.database = database
    install_problem_handlers(app)
    install_method_semantics(app)
    app.include_router(items)
    app.include_router(files)
    return app


@pytest.fixture
async def routed(
    backend_settings: Settings, database: Database
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=routed_app(backend_settings, database))
    async with httpx.AsyncClient(transport=transport, base_url="http://routed.test") as c:
        yield c


async def test_each_path_reaches_its_router_and_no_other(routed: httpx.AsyncClient) -> None:
    item = uuid.uuid4()
    answer = await routed.get(f"/api/items/{item}")
    assert answer.status_code == 200
    assert answer.json() == {"router": "items", "item": str(item)}
    part = await routed.get(f"/api/items/{item}/parts/7")
    assert part.json() == {"router": "items", "part": 7}
    deep = await routed.get("/api/files/a/b/c.txt")
    assert deep.json() == {"router": "files", "name": "a/b/c.txt"}
    # Near misses: a convertor that refuses, a path one segment short or long.
    for path in (f"/api/items/{item}/parts/seven", "/api/items", f"/api/items/{item}/x"):
        missed = await routed.get(path)
        assert missed.status_code == 404, path


async def test_a_served_path_with_another_method_is_still_a_405(
    routed: httpx.AsyncClient,
) -> None:
    answer = await routed.post(f"/api/items/{uuid.uuid4()}")
    assert answer.status_code == 405
    assert answer.headers["allow"] == "GET, HEAD"


async def test_the_same_router_routes_in_two_apps(
    backend_settings: Settings, database: Database
) -> None:
    """A router included by two applications (each its own route contexts) serves both."""
    for _ in range(2):
        transport = httpx.ASGITransport(app=routed_app(backend_settings, database))
        async with httpx.AsyncClient(transport=transport, base_url="http://routed.test") as c:
            assert (await c.get("/api/files/x")).json() == {"router": "files", "name": "x"}
            assert (await c.get("/api/nowhere")).status_code == 404


async def test_a_read_ends_its_transaction_before_it_answers(
    routed: httpx.AsyncClient, database: Database
) -> None:
    """Whether the handler succeeded or failed, its connection is back before the answer."""
    pool = database.engine.pool
    before = pool.checkedout()  # type: ignore[attr-defined]
    ok = await routed.get("/api/reads/hello")
    assert ok.json() == {"value": "hello"}
    assert pool.checkedout() == before  # type: ignore[attr-defined]
    missing = await routed.get("/api/reads/missing")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert pool.checkedout() == before  # type: ignore[attr-defined]
    assert (await routed.get("/api/reads-nothing")).json() == {"ok": True}
    assert pool.checkedout() == before  # type: ignore[attr-defined]
