"""API keys: format, checksum, role ceiling, revocation, expiry, last use, audit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from auth_support import entries
from sqlalchemy import event, select

from conftest import World
from factories import unique
from identity_factories import make_api_key
from polling import eventually
from spawnpoint.apikeys import keys
from spawnpoint.db import Database
from spawnpoint.models import ApiKey, Role

KEYS = "/api/api-keys"


@contextmanager
def statements_on(database: Database, table: str) -> Iterator[list[str]]:
    """The SQL statements sent that name `table`, while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if table in statement:
            seen.append(statement)

    engine = database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_the_key_format_has_a_prefix_and_a_checksum() -> None:
    key = keys.generate()
    assert key.startswith("sp_")
    assert len(key) == 3 + 32 + 6
    assert keys.well_formed(key)
    assert keys.generate() != key
    typo = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    assert not keys.well_formed(typo)
    assert not keys.well_formed(key[:-1])
    assert not keys.well_formed(key + "x")
    assert not keys.well_formed("sp_" + "!" * 38)


async def test_create_shows_the_secret_once_and_stores_only_its_hash(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.member,))
    created = await client.post(KEYS, json={"name": "ci"}, headers=org.headers[Role.member])
    assert created.status_code == 201, created.text
    body = created.json()
    secret = body["key"]
    assert keys.well_formed(secret)
    assert body["role"] == "member"  # the creator's role by default
    assert body["prefix"] == secret[:11]
    read = await client.get(f"{KEYS}/{body['id']}", headers=org.headers[Role.member])
    assert "key" not in read.json()
    async with database.transaction(write=False) as session:
        row = (
            await session.execute(select(ApiKey).where(ApiKey.id == uuid.UUID(read.json()["id"])))
        ).scalar_one()
    assert row.key_hash == keys.key_hash(secret)
    assert secret not in (row.key_hash, row.prefix)


async def test_a_key_works_as_bearer_and_as_x_api_key_and_is_audited_as_itself(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.admin,))
    created = await client.post(
        KEYS, json={"name": "deploy", "role": "admin"}, headers=org.headers[Role.admin]
    )
    key_id, secret = created.json()["id"], created.json()["key"]
    me = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {secret}"})
    assert me.status_code == 200, me.text
    assert me.json()["api_key_id"] == key_id
    assert me.json()["user"]["id"] == str(org.users[Role.admin])
    listed = await client.get("/api/projects", headers={"X-API-Key": secret})
    assert listed.status_code == 200
    request_id = f"key-write-{org.tenant_id}"
    made = await client.post(
        "/api/projects",
        json={"name": unique("p")},
        headers={"X-API-Key": secret, "X-Request-ID": request_id},
    )
    assert made.status_code == 201
    (entry,) = await entries(database, request_id)
    assert (entry.actor_type, entry.actor_id, entry.result) == ("api_key", key_id, "success")


async def test_a_key_cannot_outrank_its_creator(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.member,))
    higher = await client.post(
        KEYS, json={"name": "x", "role": "admin"}, headers=org.headers[Role.member]
    )
    assert higher.status_code == 403
    lower = await client.post(
        KEYS, json={"name": "x", "role": "viewer"}, headers=org.headers[Role.member]
    )
    assert lower.status_code == 201
    # A viewer key of a member cannot write what needs a member.
    secret = lower.json()["key"]
    request_id = f"key-refused-{org.tenant_id}"
    spawn = await client.post(
        "/api/spawn",
        json={"template_id": str(org.template_id)},
        headers={"X-API-Key": secret, "X-Request-ID": request_id},
    )
    assert spawn.status_code == 403
    (entry,) = await entries(database, request_id)
    assert (entry.actor_type, entry.actor_id, entry.result) == (
        "api_key",
        lower.json()["id"],
        "denied",
    )


async def test_a_mistyped_key_is_refused_without_a_database_read(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.member,))
    _, secret = await make_api_key(database, org.tenant_id, org.users[Role.member])
    typo = secret[:-1] + ("a" if secret[-1] != "a" else "b")
    with statements_on(database, "api_keys") as seen:
        response = await client.get("/api/projects", headers={"X-API-Key": typo})
    assert response.status_code == 401
    assert seen == []
    with statements_on(database, "api_keys") as seen:
        assert (await client.get("/api/projects", headers={"X-API-Key": secret})).status_code == 200
    assert seen  # the right key is looked up: the listener does see key reads


async def test_revoked_and_expired_keys_answer_401(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.member,))
    member = org.headers[Role.member]
    created = (await client.post(KEYS, json={"name": "soon revoked"}, headers=member)).json()
    headers = {"X-API-Key": created["key"]}
    assert (await client.get("/api/projects", headers=headers)).status_code == 200
    revoked = await client.delete(f"{KEYS}/{created['id']}", headers=member)
    assert revoked.status_code == 204
    refused = await client.get("/api/projects", headers=headers)
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    read = await client.get(f"{KEYS}/{created['id']}", headers=member)
    assert read.json()["revoked_at"] is not None

    past = datetime.now(UTC) - timedelta(seconds=1)
    _, expired = await make_api_key(
        database, org.tenant_id, org.users[Role.member], expires_at=past
    )
    assert (await client.get("/api/projects", headers={"X-API-Key": expired})).status_code == 401
    in_past = await client.post(
        KEYS, json={"name": "x", "expires_at": past.isoformat()}, headers=member
    )
    assert in_past.status_code == 422


async def test_last_used_at_is_recorded(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.viewer,))
    key_id, secret = await make_api_key(database, org.tenant_id, org.users[Role.viewer])
    before = datetime.now(UTC)
    assert (await client.get("/api/projects", headers={"X-API-Key": secret})).status_code == 200

    async def used() -> datetime | None:
        async with database.transaction(write=False) as session:
            row = await session.execute(select(ApiKey.last_used_at).where(ApiKey.id == key_id))
            return row.scalar_one()

    last_used = await eventually(used, what="last_used_at")
    assert last_used >= before - timedelta(seconds=1)
    listed = await client.get(f"{KEYS}/{key_id}", headers=org.headers[Role.viewer])
    assert listed.json()["last_used_at"] is not None


async def test_admins_see_every_key_of_the_tenant_others_their_own(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.admin, Role.member, Role.viewer))
    member_key, _ = await make_api_key(database, org.tenant_id, org.users[Role.member])
    viewer_key, _ = await make_api_key(database, org.tenant_id, org.users[Role.viewer])

    async def ids(role: Role) -> set[str]:
        page = await client.get(KEYS, headers=org.headers[role], params={"limit": 200})
        return {k["id"] for k in page.json()["items"]}

    assert await ids(Role.admin) == {str(member_key), str(viewer_key)}
    assert await ids(Role.member) == {str(member_key)}
    other = await client.get(f"{KEYS}/{viewer_key}", headers=org.headers[Role.member])
    assert other.status_code == 404
    assert (
        await client.delete(f"{KEYS}/{viewer_key}", headers=org.headers[Role.member])
    ).status_code == 404
    assert (
        await client.delete(f"{KEYS}/{viewer_key}", headers=org.headers[Role.admin])
    ).status_code == 204


async def test_a_demoted_creator_demotes_their_keys(
    client: httpx.AsyncClient, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.admin, Role.publisher))
    _, secret = await make_api_key(
        database, org.tenant_id, org.users[Role.publisher], role=Role.publisher
    )
    demoted = await client.put(
        f"/api/users/{org.users[Role.publisher]}",
        json={"role": "viewer"},
        headers=org.headers[Role.admin],
    )
    assert demoted.status_code == 200
    me = await client.get("/api/v1/auth/me", headers={"X-API-Key": secret})
    assert me.json()["role"] == "viewer"
