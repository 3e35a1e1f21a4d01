"""A connection lost at any point of a request answers 503, never 500, and the pool recovers.

Each probe route loses its own connection (its server process is terminated from outside)
at one point: before a statement, before the commit that the session dependency runs after
the endpoint, or inside a pipeline. The client must get a 503 problem document with
Retry-After, nothing must be committed, and the next request must succeed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI
from sqlalchemy import bindparam, exc, text
from sqlalchemy.ext.asyncio import AsyncSession

from chaos.deployment import Deployment, eventually
from spawnpoint.db import Database, DriverStatement, is_unavailable, pipelined
from spawnpoint.deps import Session
from spawnpoint.kit.errors import install_problem_handlers

pytestmark = pytest.mark.postgres
POOL_SIZE = 3


class Probe:
    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    async def lose_connection(self, session: AsyncSession) -> None:
        """Terminate the server process behind `session`'s connection, and wait until gone."""
        pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with await self.deployment.connect() as admin:
            await admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])


def probe_app(database: Database, probe: Probe) -> FastAPI:
    app = FastAPI()
    app.state.database = database
    install_problem_handlers(app)
    mark = text("INSERT INTO probe_marks (id) VALUES (:id)")

    @app.post("/lost-before-statement")
    async def lost_before_statement(session: Session) -> dict[str, Any]:
        await probe.lose_connection(session)
        await session.execute(mark, {"id": str(uuid.uuid4())})
        return {}

    @app.get("/lost-before-read")
    async def lost_before_read(session: Session) -> dict[str, Any]:
        await probe.lose_connection(session)
        await session.execute(text("SELECT 1"))
        return {}

    @app.post("/lost-before-commit/{mark_id}")
    async def lost_before_commit(session: Session, mark_id: uuid.UUID) -> dict[str, Any]:
        await session.execute(mark, {"id": str(mark_id)})
        await probe.lose_connection(session)
        return {}  # the session dependency commits after this, before the response

    @app.post("/pipeline/{mark_id}")
    async def pipeline(
        session: Session, mark_id: uuid.UUID, commit: bool = False, lose: bool = False
    ) -> dict[str, Any]:
        statement = DriverStatement(
            text("INSERT INTO probe_marks (id) VALUES (:id)").bindparams(bindparam("id")),
            session.get_bind().dialect,
        )
        if lose:
            await probe.lose_connection(session)
        await pipelined(session, [(statement, {"id": str(mark_id)})], commit=commit)
        return {}

    @app.post("/duplicate/{mark_id}")
    async def duplicate(session: Session, mark_id: uuid.UUID) -> dict[str, Any]:
        await session.execute(mark, {"id": str(mark_id)})
        await session.execute(mark, {"id": str(mark_id)})
        return {}

    @app.post("/fine/{mark_id}")
    async def fine(session: Session, mark_id: uuid.UUID) -> dict[str, Any]:
        await session.execute(mark, {"id": str(mark_id)})
        return {"ok": True}

    return app


@pytest.fixture
async def database(deployment: Deployment) -> AsyncIterator[Database]:
    async with await deployment.connect() as conn:
        await conn.execute("CREATE TABLE probe_marks (id uuid PRIMARY KEY)")
        await conn.commit()
    database = Database(deployment.url, pool_size=POOL_SIZE)
    try:
        yield database
    finally:
        await database.dispose()


@pytest.fixture
async def client(database: Database, deployment: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=probe_app(database, Probe(deployment)))
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as c:
        yield c


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) > 0
    body = response.json()
    assert body["type"] == "urn:spawnpoint:problem:database-unavailable"
    assert body["status"] == 503


@pytest.mark.parametrize(
    "path",
    [
        "/lost-before-statement",
        "/lost-before-read",
        "/lost-before-commit/{id}",
        "/pipeline/{id}?lose=true",
        "/pipeline/{id}?lose=true&commit=true",
    ],
)
async def test_connection_lost_answers_503_commits_nothing_and_the_next_request_works(
    client: httpx.AsyncClient, deployment: Deployment, path: str
) -> None:
    lost, kept = uuid.uuid4(), uuid.uuid4()
    method = "GET" if "read" in path else "POST"
    assert_unavailable(await client.request(method, path.format(id=lost)))
    assert (await client.post(f"/fine/{kept}")).status_code == 200
    marks = {row[0] for row in await deployment.rows("SELECT id FROM probe_marks")}
    assert kept in marks
    assert lost not in marks


@pytest.mark.parametrize("first", ["/fine/{id}", "/pipeline/{id}", "/pipeline/{id}?commit=true"])
async def test_after_a_restart_one_request_fails_then_the_pool_connects_afresh(
    client: httpx.AsyncClient, database: Database, deployment: Deployment, first: str
) -> None:
    # Several pooled connections, then every server process of the database ends, as in a
    # restart. Without a ping per checkout, the first request meets a dead connection; the
    # disconnect it sees must invalidate the others, so the next requests connect afresh.
    async def hold(release: asyncio.Event) -> None:
        async with database.transaction(write=False) as session:
            await session.execute(text("SELECT 1"))
            await release.wait()

    release = asyncio.Event()
    holders = [asyncio.create_task(hold(release)) for _ in range(POOL_SIZE)]
    await eventually(lambda: pooled(deployment, POOL_SIZE), within=10, what="pooled connections")
    release.set()
    await asyncio.gather(*holders)
    async with await deployment.connect() as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    assert_unavailable(await client.post(first.format(id=uuid.uuid4())))
    for _ in range(POOL_SIZE):
        response = await client.post(f"/fine/{uuid.uuid4()}")
        assert response.status_code == 200, response.text


async def pooled(deployment: Deployment, count: int) -> bool:
    rows = await deployment.rows(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return bool(rows[0][0] >= count)


async def test_other_database_errors_stay_unexpected(
    database: Database, deployment: Deployment
) -> None:
    # A bug (here a duplicate key) is not an outage: no 503 inviting a retry, but the 500
    # of the catch-all, whose traceback is logged.
    transport = httpx.ASGITransport(
        app=probe_app(database, Probe(deployment)), raise_app_exceptions=False
    )
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        response = await client.post(f"/duplicate/{uuid.uuid4()}")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "retry-after" not in response.headers


def test_outage_errors_are_told_apart_from_errors_in_the_work() -> None:
    refused = psycopg.OperationalError("connection failed: Connection refused")
    assert is_unavailable(refused)
    assert is_unavailable(exc.OperationalError("SELECT 1", None, refused))
    assert is_unavailable(psycopg.errors.AdminShutdown("terminating connection"))
    assert is_unavailable(psycopg.errors.CannotConnectNow("the database system is starting up"))
    assert is_unavailable(psycopg.errors.TooManyConnections("too many clients"))
    assert is_unavailable(psycopg.InterfaceError("the connection is closed"))
    assert is_unavailable(exc.TimeoutError("QueuePool limit of size 1 overflow 0 reached"))
    assert not is_unavailable(psycopg.errors.SerializationFailure("could not serialize"))
    assert not is_unavailable(psycopg.errors.UniqueViolation("duplicate key"))
    assert not is_unavailable(psycopg.errors.PipelineAborted("pipeline aborted"))
    assert not is_unavailable(exc.IntegrityError("INSERT", None, psycopg.errors.UniqueViolation()))
    assert not is_unavailable(ValueError("not a database error"))
