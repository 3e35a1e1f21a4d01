from __future__ import annotations

import httpx

from conftest import World
from spawnpoint.models import Role


async def test_demo_tenant_listed_with_dev_token(client: httpx.AsyncClient, world: World) -> None:
    response = await client.get("/api/tenants", headers=world.dev)
    assert response.status_code == 200
    ids = [t["id"] for t in response.json()["items"]]
    assert str(world.settings.demo_tenant_id) in ids


async def test_org_admin_sees_only_own_tenant(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    response = await client.get("/api/tenants", headers=org.headers[Role.admin])
    assert response.status_code == 200
    assert [t["id"] for t in response.json()["items"]] == [str(org.tenant_id)]
