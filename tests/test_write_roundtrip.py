"""Property: whatever a write route accepts reads back, lists, updates and deletes, no 5xx.

Documents are generated from each route's own request schema in the OpenAPI document (by
schemathesis' hypothesis strategies), with the ids that must name real objects (plan,
tenant, template) pointed at real ones, so that most documents travel the whole way.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import strategies as st

from conftest import Org, World
from drawn import examples
from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.models import Role

EXAMPLES = 15
# Secrets a create answers once and nothing reads back (a new user's set-password token).
SHOWN_ONCE = frozenset({"set_password_token", "set_password_expires_at"})
API = schemathesis.openapi.from_dict(create_app(Settings(_env_file=None)).openapi())  # type: ignore[call-arg]


def documents(method: str, path: str) -> st.SearchStrategy[dict[str, Any]]:
    """Request bodies that `method path`'s own schema allows."""
    cases = API[path][method.upper()].as_strategy()
    return cases.map(lambda case: dict(case.body))


# (collection, item path, id pointer, bodies to create, bodies to update)
CASES = {
    "plans": ("/api/plans", "/api/plans/{}", documents("post", "/api/plans")),
    "tenants": ("/api/tenants", "/api/tenants/{}", documents("post", "/api/tenants")),
    "users": ("/api/users", "/api/users/{}", documents("post", "/api/users")),
    "projects": ("/api/projects", "/api/projects/{}", documents("post", "/api/projects")),
    "templates": ("/api/templates", "/api/templates/{}", documents("post", "/api/templates")),
}
UPDATES = {
    "plans": documents("put", "/api/plans/{plan_id}"),
    "tenants": documents("put", "/api/tenants/{tenant_id}"),
    "users": documents("put", "/api/users/{user_id}"),
    "projects": documents("put", "/api/projects/{project_id}"),
    "templates": documents("put", "/api/templates/{template_id}"),
}


def grounded(kind: str, body: dict[str, Any], org: Org) -> dict[str, Any]:
    """`body` with the references that must name real objects pointed at `org`'s.

    What is left is valid by the schema and by every rule the schema cannot state, so the
    server must accept it: anything but a duplicate name (409) is a failure.
    """
    body = dict(body)
    if "plan_id" in body:
        body["plan_id"] = str(org.plan_id)
    if "tenant_id" in body:
        # A template may be a platform one (null); everything else names a real tenant.
        platform = kind == "templates" and body["tenant_id"] is None
        body["tenant_id"] = None if platform else str(org.tenant_id)
    if kind == "users" and body.get("role") == "operator":
        body["role"] = "admin"
    if kind in ("templates", "versions") and ("provisioner" in body or kind == "templates"):
        # `local` (PROVISIONER's default) needs a command, which no schema can say.
        body["provisioner"] = "dry-run"
    return body


def accepted(response: httpx.Response, success: int) -> bool:
    """Whether a grounded document was taken; a 409 (a name already used) is the one excuse."""
    no_server_error(response)
    assert response.status_code in (success, 409), (
        response.request.method,
        response.request.url,
        response.request.content[:2000],
        response.text,
    )
    return response.status_code == success


def assert_applied(changes: dict[str, Any], read: dict[str, Any]) -> None:
    """Every field an accepted update sent reads back as sent (emails in lower case)."""
    for field, value in changes.items():
        if field == "spec":
            assert_applied(value, read["spec"])
        elif field == "email":
            assert read[field] == value.lower()
        elif isinstance(value, float):
            assert read[field] == pytest.approx(value, abs=0.005), field
        else:
            assert read[field] == value, field


def no_server_error(response: httpx.Response) -> httpx.Response:
    assert response.status_code < 500, (
        response.request.method,
        response.request.url,
        response.text,
    )
    return response


async def walk_list(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[Any]:
    items: list[Any] = []
    cursor: str | None = None
    while True:
        params = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = no_server_error(await client.get(url, params=params, headers=headers))
        assert page.status_code == 200
        items += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return items


@pytest.mark.parametrize("kind", sorted(CASES))
async def test_accepted_documents_read_back_list_update_and_delete(
    client: httpx.AsyncClient, world: World, kind: str
) -> None:
    collection, item, creates = CASES[kind]
    org = await world.org()
    operator = world.dev

    travelled = updated = 0
    for create, update in zip(
        examples(creates, EXAMPLES), examples(UPDATES[kind], EXAMPLES), strict=True
    ):
        created = await client.post(collection, json=grounded(kind, create, org), headers=operator)
        if not accepted(created, 201):
            continue
        travelled += 1
        body = {k: v for k, v in created.json().items() if k not in SHOWN_ONCE}
        url = item.format(body["id"])
        read = no_server_error(await client.get(url, headers=operator))
        assert read.status_code == 200
        assert read.json() == body
        listed = await walk_list(client, collection, operator)
        assert body["id"] in {entry["id"] for entry in listed}
        changes = grounded(kind, update, org)
        if accepted(await client.put(url, json=changes, headers=operator), 200):
            updated += 1
            assert_applied(changes, (await client.get(url, headers=operator)).json())
        deleted = no_server_error(await client.delete(url, headers=operator))
        assert deleted.status_code in (202, 204), deleted.text
        if deleted.status_code == 204:
            assert (await client.get(url, headers=operator)).status_code == 404
    # Most generated documents must travel the whole way, or the property says little.
    assert travelled >= EXAMPLES // 2, travelled
    assert updated >= travelled // 2, updated


VERSIONS = documents("post", "/api/templates/{template_id}/versions")


async def test_accepted_versions_read_back(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    publisher = org.headers[Role.publisher]
    url = f"/api/templates/{org.template_id}/versions"
    for version in examples(VERSIONS, EXAMPLES):
        published = await client.post(
            url, json=grounded("versions", version, org), headers=publisher
        )
        assert accepted(published, 201)
        number = published.json()["version"]
        read = no_server_error(await client.get(f"{url}/{number}", headers=publisher))
        assert read.json() == published.json()
        assert_applied(version["spec"], read.json()["spec"])
    listed = await walk_list(client, url, publisher)
    assert len(listed) == EXAMPLES + 1


SPAWNS = documents("post", "/api/spawn")


async def test_accepted_spawns_read_back_list_and_delete(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(max_workspaces=1000, max_cpu=10_000, max_memory_mb=10**7)
    member = org.headers[Role.member]

    travelled = 0
    for spawn in examples(SPAWNS, EXAMPLES):
        spawn = {**spawn, "template_id": str(org.template_id)}
        spawn.pop("project_id", None)
        if spawn.get("version") is not None:
            spawn["version"] = 1
        if spawn.get("external_ref") is not None:
            spawn["external_ref"] = f"{spawn['external_ref'][:150]}-{uuid.uuid4().hex}"
        response = await client.post("/api/spawn", json=spawn, headers=member)
        if not accepted(response, 202):
            continue
        travelled += 1
        workspace = response.json()["workspace"]
        url = f"/api/workspaces/{workspace['id']}"
        read = no_server_error(await client.get(url, headers=member))
        assert read.json()["parameters"] == spawn.get("parameters", {})
        assert workspace["id"] in {
            w["id"] for w in await walk_list(client, "/api/workspaces", member)
        }
        if spawn.get("external_ref"):
            permit = f"/api/v1/workspaces/{spawn['external_ref']}/status"
            assert no_server_error(await client.get(permit, headers=member)).status_code == 200
        no_server_error(await client.post(f"{url}/stop", headers=member))
        deleted = no_server_error(await client.delete(url, headers=member))
        assert deleted.status_code == 202
    assert travelled >= EXAMPLES // 3, travelled
