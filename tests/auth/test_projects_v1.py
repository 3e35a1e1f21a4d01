"""The Spark-Ops seed's /api/v1/projects: the same projects, PATCH as a partial update."""

from __future__ import annotations

import httpx

from conftest import World
from factories import unique
from spawnpoint.models import Role

V1 = "/api/v1/projects"


async def test_v1_projects_are_the_same_projects_and_patch_changes_only_what_is_sent(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(roles=(Role.admin, Role.viewer))
    admin = org.headers[Role.admin]
    name = unique("seed")
    created = await client.post(V1, json={"name": name, "description": "first"}, headers=admin)
    assert created.status_code == 201, created.text
    project = created.json()
    assert (await client.get(f"/api/projects/{project['id']}", headers=admin)).json() == project

    patched = await client.patch(
        f"{V1}/{project['id']}", json={"description": "second"}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["name"], patched.json()["description"]) == (name, "second")
    assert (
        await client.patch(f"{V1}/{project['id']}", json={"name": None}, headers=admin)
    ).status_code == 422

    listed = await client.get(V1, headers=org.headers[Role.viewer], params={"limit": 200})
    assert project["id"] in {p["id"] for p in listed.json()["items"]}
    assert (await client.delete(f"{V1}/{project['id']}", headers=admin)).status_code == 204
    assert (await client.get(f"{V1}/{project['id']}", headers=admin)).status_code == 404
