"""Every mutating route writes exactly one audit entry, generated from the route table."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select

from conftest import World
from routes import RULES, own_params
from spawnpoint.db import Database
from spawnpoint.models import AuditEntry, Role

ACTIONS = {
    ("POST", "/api/plans"): "plan.create",
    ("PUT", "/api/plans/{plan_id}"): "plan.update",
    ("DELETE", "/api/plans/{plan_id}"): "plan.delete",
    ("POST", "/api/tenants"): "tenant.create",
    ("PUT", "/api/tenants/{tenant_id}"): "tenant.update",
    ("DELETE", "/api/tenants/{tenant_id}"): "tenant.delete",
    ("POST", "/api/tenants/{tenant_id}/plans/{plan_id}"): "tenant.assign_plan",
    ("POST", "/api/users"): "user.create",
    ("PUT", "/api/users/{user_id}"): "user.update",
    ("DELETE", "/api/users/{user_id}"): "user.delete",
    ("POST", "/api/projects"): "project.create",
    ("PUT", "/api/projects/{project_id}"): "project.update",
    ("DELETE", "/api/projects/{project_id}"): "project.delete",
    ("POST", "/api/templates"): "template.create",
    ("PUT", "/api/templates/{template_id}"): "template.update",
    ("DELETE", "/api/templates/{template_id}"): "template.delete",
    ("POST", "/api/templates/{template_id}/versions"): "template.publish",
    ("POST", "/api/spawn"): "workspace.spawn",
    ("POST", "/api/workspaces/{workspace_id}/start"): "workspace.start",
    ("POST", "/api/workspaces/{workspace_id}/stop"): "workspace.stop",
    ("DELETE", "/api/workspaces/{workspace_id}"): "workspace.delete",
    ("POST", "/api/workspaces/{workspace_id}/activity"): "workspace.activity",
    ("POST", "/api/v1/auth/register"): "auth.register",
    ("POST", "/api/v1/auth/login"): "auth.login",
    ("POST", "/api/v1/auth/refresh"): "auth.refresh",
    ("POST", "/api/v1/auth/logout"): "auth.logout",
    ("POST", "/api/v1/auth/set-password"): "auth.set_password",
    ("POST", "/api/v1/auth/password"): "auth.password",
    ("POST", "/api/invites"): "invite.create",
    ("DELETE", "/api/invites/{invite_id}"): "invite.delete",
    ("POST", "/api/api-keys"): "api_key.create",
    ("DELETE", "/api/api-keys/{api_key_id}"): "api_key.delete",
    ("POST", "/api/v1/projects"): "project.create",
    ("PATCH", "/api/v1/projects/{project_id}"): "project.update",
    ("DELETE", "/api/v1/projects/{project_id}"): "project.delete",
    ("POST", "/api/jobs"): "job.create",
    ("POST", "/api/jobs/{job_id}/cancel"): "job.cancel",
    ("POST", "/api/artifacts"): "artifact.create",
    ("PUT", "/api/artifacts/{artifact_id}"): "artifact.update",
    ("DELETE", "/api/artifacts/{artifact_id}"): "artifact.delete",
    ("POST", "/api/budgets"): "budget.create",
    ("PUT", "/api/budgets/{budget_id}"): "budget.update",
    ("DELETE", "/api/budgets/{budget_id}"): "budget.delete",
}
MUTATING = sorted(route for route in RULES if route[0] in {"POST", "PUT", "PATCH", "DELETE"})


def test_every_mutating_route_has_an_expected_action() -> None:
    assert set(ACTIONS) == set(MUTATING), "name the new route's audit action in ACTIONS"


async def _entries(database: Database, request_id: str) -> list[AuditEntry]:
    async with database.transaction(write=False) as session:
        rows = await session.execute(select(AuditEntry).where(AuditEntry.request_id == request_id))
        return list(rows.scalars())


def _created_id(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    if isinstance(body.get("workspace"), dict):
        return str(body["workspace"]["id"])
    return None if body.get("id") is None else str(body["id"])


@pytest.mark.parametrize(("method", "path"), MUTATING, ids=[f"{m} {p}" for m, p in MUTATING])
async def test_a_mutating_request_writes_one_entry_whatever_its_outcome(
    client: httpx.AsyncClient, world: World, method: str, path: str
) -> None:
    rule = RULES[(method, path)]
    org = await world.org()
    allowed = rule.role
    values = await own_params(world, org, method, path, allowed)
    body = rule.body(org) if rule.body else None
    headers = {
        # A public route (register, login, refresh...) is sent without credentials.
        **(org.headers[allowed] if allowed is not None else {}),
        "X-Reason": "ticket-42",
        "X-Request-ID": f"ok-{org.tenant_id}",
    }
    response = await client.request(method, path.format(**values), headers=headers, json=body)
    assert response.status_code == rule.success, response.text
    assert response.headers["X-Request-ID"] == f"ok-{org.tenant_id}"
    entries = await _entries(world.database, f"ok-{org.tenant_id}")
    assert len(entries) == 1, entries
    (entry,) = entries
    assert (entry.action, entry.result, entry.actor_type) == (
        ACTIONS[(method, path)],
        "success",
        "user",
    )
    if allowed is None:
        assert entry.actor_id is not None  # the account the request proved to hold
    else:
        assert entry.actor_id == str(org.users[allowed])
    assert entry.reason == "ticket-42"
    created = _created_id(response.json()) if response.content else None
    if method == "POST" and "{" not in path:
        assert entry.resource_id == created
    elif "{" in path:
        first = path.split("{", 1)[1].split("}", 1)[0]
        assert entry.resource_id == values[first]

    # A caller without the role is refused, and the refusal is on record too.
    weaker = Role.viewer if allowed not in {None, Role.viewer} else None
    if weaker is None:
        return
    org = await world.org()
    values = await own_params(world, org, method, path, weaker)
    body = rule.body(org) if rule.body else None
    headers = {**org.headers[weaker], "X-Request-ID": f"no-{org.tenant_id}"}
    refused = await client.request(method, path.format(**values), headers=headers, json=body)
    assert refused.status_code == 403, refused.text
    (entry,) = await _entries(world.database, f"no-{org.tenant_id}")
    assert (entry.action, entry.result) == (ACTIONS[(method, path)], "denied")
    assert entry.details["status"] == 403


async def test_an_unauthenticated_write_is_counted_not_logged(
    client: httpx.AsyncClient, world: World
) -> None:
    before = REGISTRY.get_sample_value("spawnpoint_unauthenticated_writes_total") or 0.0
    response = await client.post(
        "/api/projects", json={"name": "x"}, headers={"X-Request-ID": "anonymous-write"}
    )
    assert response.status_code == 401
    assert await _entries(world.database, "anonymous-write") == []
    after = REGISTRY.get_sample_value("spawnpoint_unauthenticated_writes_total") or 0.0
    assert after == before + 1


async def test_an_update_records_what_changed_and_never_a_secret(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    headers = {**org.headers[Role.admin], "X-Request-ID": f"rename-{org.tenant_id}"}
    created = await client.post(
        "/api/projects", json={"name": "before"}, headers=org.headers[Role.admin]
    )
    project = created.json()["id"]
    response = await client.put(f"/api/projects/{project}", json={"name": "after"}, headers=headers)
    assert response.status_code == 200
    (entry,) = await _entries(world.database, f"rename-{org.tenant_id}")
    assert entry.details["changes"]["name"] == {"old": "before", "new": "after"}
