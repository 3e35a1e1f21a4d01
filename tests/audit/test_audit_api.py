"""GET /api/audit and friends: who may read which chain, filters, pages, verify, keys."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timedelta

import httpx
import pytest
from audit_support import append, checkpoint, draft, edit, entries
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from conftest import World
from spawnpoint.audit.chain import checkpoint_message
from spawnpoint.models import Role

PATHS = ["/api/audit", "/api/audit/verify", "/api/audit/checkpoints", "/api/audit/public-key"]
READERS = {Role.admin, Role.auditor, Role.operator}


@pytest.mark.parametrize("path", PATHS)
async def test_admins_auditors_and_operators_read_members_do_not(
    client: httpx.AsyncClient, world: World, path: str
) -> None:
    org = await world.org()
    assert (await client.get(path)).status_code == 401
    for role in Role:
        response = await client.get(path, headers=org.headers[role])
        assert response.status_code == (200 if role in READERS else 403), (role, response.text)
        if response.status_code == 403:
            assert response.headers["content-type"] == "application/problem+json"


async def test_a_tenant_reads_its_own_chain_only(client: httpx.AsyncClient, world: World) -> None:
    mine, theirs = await world.org(), await world.org()
    await append(world.database, [draft(mine.tenant_id, 1), draft(theirs.tenant_id, 2)])
    listed = (await client.get("/api/audit", headers=mine.headers[Role.auditor])).json()
    assert [e["resource_id"] for e in listed["items"]] == ["ws-1"]
    assert listed["items"][0]["tenant_id"] == str(mine.tenant_id)
    for tenant_id in (theirs.tenant_id, uuid.uuid4(), uuid.UUID(int=0)):
        for path in PATHS[:3]:
            response = await client.get(
                path, params={"tenant_id": str(tenant_id)}, headers=mine.headers[Role.admin]
            )
            assert response.status_code == 422, response.text
            assert response.json()["errors"][0]["pointer"] == "#/query/tenant_id"
    own = await client.get(
        "/api/audit", params={"tenant_id": str(mine.tenant_id)}, headers=mine.headers[Role.admin]
    )
    assert own.json()["items"] == listed["items"]
    # Operators name any chain, the platform's included.
    other = await client.get(
        "/api/audit", params={"tenant_id": str(theirs.tenant_id)}, headers=world.dev
    )
    assert [e["resource_id"] for e in other.json()["items"]] == ["ws-2"]
    platform = await client.get(
        "/api/audit", params={"tenant_id": str(uuid.UUID(int=0))}, headers=world.dev
    )
    assert platform.status_code == 200
    assert all(e["tenant_id"] is None for e in platform.json()["items"])


async def test_filters_and_pages_newest_first(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    headers = org.headers[Role.auditor]
    await append(
        world.database,
        [
            draft(org.tenant_id, n, action=action, result=result, actor_id=f"actor-{n % 2}")
            for n, (action, result) in enumerate(
                [
                    ("workspace.spawn", "success"),
                    ("workspace.stop", "denied"),
                    ("template.update", "success"),
                    ("workspace_x.odd", "failed"),
                    ("workspace.spawn", "success"),
                ]
            )
        ],
    )

    async def seqs(**params: object) -> list[int]:
        response = await client.get("/api/audit", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [e["seq"] for e in response.json()["items"]]

    assert await seqs() == [5, 4, 3, 2, 1]
    assert await seqs(action="workspace.") == [5, 2, 1]
    assert await seqs(action="Workspace.") == []
    assert await seqs(action="workspace_") == [4]
    assert await seqs(result="denied") == [2]
    assert await seqs(actor_id="actor-1") == [4, 2]
    assert await seqs(resource_type="workspace", resource_id="ws-2") == [3]
    rows = await entries(world.database, org.tenant_id)
    assert await seqs(since=rows[2].time.isoformat()) == [5, 4, 3]
    assert await seqs(until=(rows[0].time + timedelta(microseconds=1)).isoformat()) == [1]
    first = (await client.get("/api/audit", params={"limit": 2}, headers=headers)).json()
    assert [e["seq"] for e in first["items"]] == [5, 4]
    rest = await seqs(limit=2, cursor=first["next_cursor"])
    assert rest == [3, 2]
    bad = await client.get("/api/audit", params={"result": "maybe"}, headers=headers)
    assert bad.status_code == 422
    bad = await client.get("/api/audit", params={"cursor": "bm9wZQ"}, headers=headers)
    assert bad.json()["errors"][0]["pointer"] == "#/query/cursor"
    reversed_range = await client.get(
        "/api/audit",
        params={"since": rows[4].time.isoformat(), "until": rows[0].time.isoformat()},
        headers=headers,
    )
    assert reversed_range.status_code == 422


async def test_verify_checkpoints_and_the_public_key(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    headers = org.headers[Role.auditor]
    await append(world.database, [draft(org.tenant_id, n) for n in range(3)])
    verified = await client.get("/api/audit/verify", headers=headers)
    assert verified.json() == {
        "valid": True,
        "checked": 3,
        "first_invalid_seq": None,
        "reason": None,
    }
    await checkpoint(world.database, world.settings, org.tenant_id)
    listed = (await client.get("/api/audit/checkpoints", headers=headers)).json()
    [signed] = listed["items"]
    assert (signed["seq"], signed["tenant_id"]) == (3, str(org.tenant_id))
    key = (await client.get("/api/audit/public-key", headers=headers)).json()
    assert key["key_id"] == signed["key_id"]
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key["public_key"]))
    public.verify(
        base64.b64decode(signed["signature"]),
        checkpoint_message(
            tenant_id=org.tenant_id,
            seq=3,
            hash=signed["hash"],
            time=datetime.fromisoformat(signed["time"]),
            key_id=signed["key_id"],
        ),
    )
    assert key["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")
    await edit(world.database, org.tenant_id, 2, reason="nothing to see")
    broken = (await client.get("/api/audit/verify", headers=headers)).json()
    assert (broken["valid"], broken["first_invalid_seq"]) == (False, 2)
    operator = await client.get(
        "/api/audit/verify", params={"tenant_id": str(org.tenant_id)}, headers=world.dev
    )
    assert operator.json() == broken


async def test_times_must_be_date_times_with_an_offset(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(roles=(Role.auditor,))
    for value in ("0.5", "1700000000", "2024-06-01T00:00:00"):
        response = await client.get(
            "/api/audit", params={"until": value}, headers=org.headers[Role.auditor]
        )
        assert response.status_code == 422, (value, response.text)
        assert response.json()["errors"][0]["pointer"] == "#/query/until"
    ok = await client.get(
        "/api/audit", params={"until": "2024-06-01T00:00:00Z"}, headers=org.headers[Role.auditor]
    )
    assert ok.status_code == 200
