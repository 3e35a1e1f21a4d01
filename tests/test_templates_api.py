"""Templates: immutable versions, platform templates and who may write what."""

from __future__ import annotations

import httpx

from conftest import World
from factories import unique
from spawnpoint.models import Role


async def test_versions_are_immutable_and_a_spec_change_makes_a_new_one(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    publisher = org.headers[Role.publisher]
    created = await client.post(
        "/api/templates",
        headers=publisher,
        json={
            "name": unique("analysis"),
            "provisioner": "dry-run",
            "spec": {"image": "lab:1", "cpu": 2, "env": {"MODE": "a"}, "ports": [8888]},
        },
    )
    assert created.status_code == 201, created.text
    template = created.json()
    assert template["current_version"] == 1
    assert template["tenant_id"] == str(org.tenant_id)
    assert template["spec"]["memory_mb"] == 512  # defaults filled in
    url = f"/api/templates/{template['id']}"

    renamed = await client.put(url, headers=publisher, json={"description": "same spec"})
    assert renamed.json()["current_version"] == 1

    changed = await client.put(url, headers=publisher, json={"spec": {"cpu": 4}})
    assert changed.status_code == 200
    assert changed.json()["current_version"] == 2
    assert changed.json()["spec"]["cpu"] == 4
    assert changed.json()["spec"]["image"] == "lab:1"  # spec fields left out keep their values
    assert changed.json()["description"] == "same spec"

    v1 = await client.get(f"{url}/versions/1", headers=org.headers[Role.viewer])
    assert v1.json()["spec"]["cpu"] == 2
    assert v1.json()["created_by"] == str(org.users[Role.publisher])

    published = await client.post(
        f"{url}/versions", headers=publisher, json={"spec": {"image": "lab:2"}}
    )
    assert published.status_code == 201
    assert published.json()["version"] == 3
    assert published.json()["spec"]["cpu"] == 1  # a new version is a whole spec

    versions = await client.get(f"{url}/versions?limit=2", headers=org.headers[Role.viewer])
    assert [v["version"] for v in versions.json()["items"]] == [1, 2]
    rest = await client.get(
        f"{url}/versions", params={"cursor": versions.json()["next_cursor"]}, headers=publisher
    )
    assert [v["version"] for v in rest.json()["items"]] == [3]
    assert (await client.get(f"{url}/versions/4", headers=publisher)).status_code == 404

    current = await client.get(url, headers=publisher)
    assert current.json()["current_version"] == 3
    assert current.json()["spec"]["image"] == "lab:2"

    assert (await client.delete(url, headers=publisher)).status_code == 204
    assert (await client.get(f"{url}/versions/1", headers=publisher)).status_code == 404


async def test_spec_validation_points_at_the_field(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    publisher = org.headers[Role.publisher]
    bad = await client.post(
        "/api/templates",
        headers=publisher,
        json={"name": unique("t"), "provisioner": "dry-run", "spec": {"cpu": 0, "gpu": 1}},
    )
    assert bad.status_code == 422
    assert {e["pointer"] for e in bad.json()["errors"]} == {"#/spec/cpu", "#/spec/gpu"}

    unknown = await client.post(
        "/api/templates", headers=publisher, json={"name": unique("t"), "provisioner": "vmware"}
    )
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["pointer"] == "#/provisioner"

    ok = (
        await client.post(
            "/api/templates",
            headers=publisher,
            json={"name": unique("t"), "provisioner": "dry-run"},
        )
    ).json()
    bad_update = await client.put(
        f"/api/templates/{ok['id']}", headers=publisher, json={"spec": {"memory_mb": "lots"}}
    )
    assert bad_update.status_code == 422
    assert bad_update.json()["errors"][0]["pointer"] == "#/spec/memory_mb"
    after = await client.get(f"/api/templates/{ok['id']}", headers=publisher)
    assert after.json() == ok


async def test_local_provisioner_templates_are_for_operators(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    body = {
        "name": unique("shell"),
        "provisioner": "local",
        "spec": {"command": "python3 -m http.server {port}"},
    }
    for role in (Role.publisher, Role.admin):
        refused = await client.post("/api/templates", headers=org.headers[role], json=body)
        assert refused.status_code == 403
        assert "local provisioner" in refused.json()["detail"]
    created = await client.post("/api/templates", headers=org.headers[Role.operator], json=body)
    assert created.status_code == 201
    url = f"/api/templates/{created.json()['id']}"
    edit = await client.put(url, headers=org.headers[Role.publisher], json={"description": "x"})
    assert edit.status_code == 403
    switch = await client.post(
        "/api/templates",
        headers=org.headers[Role.publisher],
        json={"name": unique("t"), "provisioner": "dry-run"},
    )
    to_local = await client.put(
        f"/api/templates/{switch.json()['id']}",
        headers=org.headers[Role.publisher],
        json={"provisioner": "local", "spec": {"command": "true"}},
    )
    assert to_local.status_code == 403

    no_command = await client.post(
        "/api/templates",
        headers=org.headers[Role.operator],
        json={"name": unique("t"), "provisioner": "local"},
    )
    assert no_command.status_code == 422
    assert no_command.json()["errors"][0]["pointer"] == "#/spec/command"


async def test_platform_templates(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    body = {"name": unique("platform"), "provisioner": "dry-run", "tenant_id": None}
    refused = await client.post("/api/templates", headers=org.headers[Role.admin], json=body)
    assert refused.status_code == 403
    created = await client.post("/api/templates", headers=world.dev, json=body)
    assert created.status_code == 201
    assert created.json()["tenant_id"] is None
    duplicate = await client.post("/api/templates", headers=world.dev, json=body)
    assert duplicate.status_code == 409
    seen = await client.get(
        f"/api/templates/{created.json()['id']}", headers=org.headers[Role.viewer]
    )
    assert seen.status_code == 200


async def test_same_template_name_in_two_tenants(client: httpx.AsyncClient, world: World) -> None:
    name = unique("shared-name")
    for _ in range(2):
        org = await world.org()
        response = await client.post(
            "/api/templates",
            headers=org.headers[Role.publisher],
            json={"name": name, "provisioner": "dry-run"},
        )
        assert response.status_code == 201
    again = await client.post(
        "/api/templates",
        headers=org.headers[Role.publisher],
        json={"name": name, "provisioner": "dry-run"},
    )
    assert again.status_code == 409


async def test_demo_template_is_seeded(client: httpx.AsyncClient, world: World) -> None:
    response = await client.get(
        f"/api/templates/{world.settings.demo_template_id}", headers=world.dev
    )
    assert response.status_code == 200
    demo = response.json()
    assert demo["provisioner"] == "local"
    assert "{port}" in demo["spec"]["command"]
    renamed = await client.put(
        f"/api/templates/{demo['id']}", headers=world.dev, json={"description": demo["description"]}
    )
    assert renamed.json()["current_version"] == 1
