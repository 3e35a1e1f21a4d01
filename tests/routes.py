"""The route table the access matrices are generated from.

Every API route must have a rule here; a route without one fails the suite.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fastapi import FastAPI

from conftest import Org, World
from factories import (
    make_plan,
    make_project,
    make_template,
    make_user,
    make_workspace,
    unique,
)
from identity_factories import (
    KNOWN_PASSWORD,
    OTHER_PASSWORD,
    PENDING,
    login_account,
    login_email,
    make_api_key,
    make_invite,
    make_password_token,
    make_refresh_token,
    set_password,
)
from spawnpoint.artifacts.blobstore import blob_store_for_settings
from spawnpoint.artifacts.service import create_artifact_from_bytes
from spawnpoint.deps import AUDIT_READERS
from spawnpoint.jobs.queue import enqueue
from spawnpoint.models import Budget, Role

PUBLIC = None  # no credentials needed


@dataclass(frozen=True)
class Rule:
    role: Role | None  # least role allowed; None = public
    success: int
    body: Callable[[Org], dict[str, Any]] | None = None
    # Exactly these roles (and operators), for a grant that is not a rank: the audit log.
    roles: frozenset[Role] | None = None

    def allows(self, caller: Role) -> bool:
        if self.roles is not None:
            return caller in self.roles or caller == Role.operator
        assert self.role is not None
        return caller.rank >= self.role.rank


def _plan_body(_: Org) -> dict[str, Any]:
    return {"name": unique("plan")}


RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/health"): Rule(PUBLIC, 200),
    ("GET", "/live"): Rule(PUBLIC, 200),
    ("GET", "/ready"): Rule(PUBLIC, 200),
    ("GET", "/metrics"): Rule(PUBLIC, 200),
    ("GET", "/healthz"): Rule(PUBLIC, 200),
    ("GET", "/readyz"): Rule(PUBLIC, 200),
    ("GET", "/api/plans"): Rule(Role.admin, 200),
    ("POST", "/api/plans"): Rule(Role.operator, 201, _plan_body),
    ("GET", "/api/plans/{plan_id}"): Rule(Role.admin, 200),
    ("PUT", "/api/plans/{plan_id}"): Rule(Role.operator, 200, lambda _: {"description": "x"}),
    ("DELETE", "/api/plans/{plan_id}"): Rule(Role.operator, 204),
    ("GET", "/api/tenants"): Rule(Role.admin, 200),
    ("POST", "/api/tenants"): Rule(
        Role.operator, 201, lambda org: {"name": unique("tenant"), "plan_id": str(org.plan_id)}
    ),
    ("GET", "/api/tenants/{tenant_id}"): Rule(Role.admin, 200),
    ("PUT", "/api/tenants/{tenant_id}"): Rule(Role.operator, 200, lambda _: {"status": "active"}),
    ("DELETE", "/api/tenants/{tenant_id}"): Rule(Role.operator, 204),
    ("POST", "/api/tenants/{tenant_id}/plans/{plan_id}"): Rule(Role.operator, 200),
    ("GET", "/api/users"): Rule(Role.admin, 200),
    ("POST", "/api/users"): Rule(
        Role.admin, 201, lambda _: {"email": f"{unique('new')}@example.test"}
    ),
    ("GET", "/api/users/{user_id}"): Rule(Role.admin, 200),
    ("PUT", "/api/users/{user_id}"): Rule(Role.admin, 200, lambda _: {"display_name": "x"}),
    ("DELETE", "/api/users/{user_id}"): Rule(Role.admin, 204),
    ("GET", "/api/projects"): Rule(Role.viewer, 200),
    ("POST", "/api/projects"): Rule(Role.admin, 201, lambda _: {"name": unique("project")}),
    ("GET", "/api/projects/{project_id}"): Rule(Role.viewer, 200),
    ("PUT", "/api/projects/{project_id}"): Rule(Role.admin, 200, lambda _: {"description": "x"}),
    ("DELETE", "/api/projects/{project_id}"): Rule(Role.admin, 204),
    ("GET", "/api/templates"): Rule(Role.viewer, 200),
    ("POST", "/api/templates"): Rule(
        Role.publisher,
        201,
        lambda _: {"name": unique("template"), "provisioner": "dry-run", "spec": {"cpu": 1}},
    ),
    ("GET", "/api/templates/{template_id}"): Rule(Role.viewer, 200),
    ("PUT", "/api/templates/{template_id}"): Rule(
        Role.publisher, 200, lambda _: {"description": "x", "spec": {"cpu": 2}}
    ),
    ("DELETE", "/api/templates/{template_id}"): Rule(Role.publisher, 204),
    ("GET", "/api/templates/{template_id}/versions"): Rule(Role.viewer, 200),
    ("POST", "/api/templates/{template_id}/versions"): Rule(
        Role.publisher, 201, lambda _: {"spec": {"cpu": 3}}
    ),
    ("GET", "/api/templates/{template_id}/versions/{version}"): Rule(Role.viewer, 200),
    ("POST", "/api/spawn"): Rule(
        Role.member, 202, lambda org: {"template_id": str(org.template_id)}
    ),
    ("GET", "/api/workspaces"): Rule(Role.viewer, 200),
    ("GET", "/api/workspaces/{workspace_id}"): Rule(Role.viewer, 200),
    ("POST", "/api/workspaces/{workspace_id}/start"): Rule(Role.member, 202),
    ("POST", "/api/workspaces/{workspace_id}/stop"): Rule(Role.member, 202),
    ("DELETE", "/api/workspaces/{workspace_id}"): Rule(Role.member, 202),
    ("POST", "/api/workspaces/{workspace_id}/activity"): Rule(Role.member, 204),
    ("GET", "/api/workspaces/{workspace_id}/events"): Rule(Role.viewer, 200),
    ("GET", "/api/workspaces/{workspace_id}/costs"): Rule(Role.viewer, 200),
    ("GET", "/api/costs"): Rule(Role.viewer, 200),
    ("GET", "/api/budgets"): Rule(Role.viewer, 200),
    ("POST", "/api/budgets"): Rule(Role.admin, 201, lambda org: _budget_body(org)),
    ("GET", "/api/budgets/{budget_id}"): Rule(Role.viewer, 200),
    ("PUT", "/api/budgets/{budget_id}"): Rule(Role.admin, 200, lambda _: {"limit": 250}),
    ("DELETE", "/api/budgets/{budget_id}"): Rule(Role.admin, 204),
    ("GET", "/api/v1/workspaces/{permit_id}/status"): Rule(Role.viewer, 200),
    ("GET", "/api/v1/workspaces/{permit_id}/connection"): Rule(Role.viewer, 200),
    ("GET", "/api/events"): Rule(Role.viewer, 200),
    ("POST", "/api/v1/auth/register"): Rule(
        PUBLIC,
        201,
        lambda _: {"email": f"{unique('reg')}@example.test", "password": KNOWN_PASSWORD},
    ),
    ("POST", "/api/v1/auth/login"): Rule(
        PUBLIC,
        200,
        lambda org: {"email": login_email(org.tenant_id), "password": KNOWN_PASSWORD},
    ),
    ("POST", "/api/v1/auth/refresh"): Rule(
        PUBLIC, 200, lambda org: {"refresh_token": PENDING.pop(org.tenant_id)}
    ),
    ("POST", "/api/v1/auth/logout"): Rule(
        PUBLIC, 204, lambda org: {"refresh_token": PENDING.pop(org.tenant_id)}
    ),
    ("POST", "/api/v1/auth/set-password"): Rule(
        PUBLIC, 204, lambda org: {"token": PENDING.pop(org.tenant_id), "password": OTHER_PASSWORD}
    ),
    ("GET", "/api/v1/auth/me"): Rule(Role.viewer, 200),
    ("POST", "/api/v1/auth/password"): Rule(
        Role.viewer,
        204,
        lambda _: {"old_password": KNOWN_PASSWORD, "new_password": OTHER_PASSWORD},
    ),
    ("GET", "/api/invites"): Rule(Role.admin, 200),
    ("POST", "/api/invites"): Rule(
        Role.admin, 201, lambda _: {"email": f"{unique('inv')}@example.test", "role": "member"}
    ),
    ("DELETE", "/api/invites/{invite_id}"): Rule(Role.admin, 204),
    ("GET", "/api/api-keys"): Rule(Role.viewer, 200),
    ("POST", "/api/api-keys"): Rule(
        Role.viewer, 201, lambda _: {"name": unique("key"), "role": "viewer"}
    ),
    ("GET", "/api/api-keys/{api_key_id}"): Rule(Role.viewer, 200),
    ("DELETE", "/api/api-keys/{api_key_id}"): Rule(Role.viewer, 204),
    ("GET", "/api/v1/projects"): Rule(Role.viewer, 200),
    ("POST", "/api/v1/projects"): Rule(Role.admin, 201, lambda _: {"name": unique("project")}),
    ("GET", "/api/v1/projects/{project_id}"): Rule(Role.viewer, 200),
    ("PATCH", "/api/v1/projects/{project_id}"): Rule(
        Role.admin, 200, lambda _: {"description": "x"}
    ),
    ("DELETE", "/api/v1/projects/{project_id}"): Rule(Role.admin, 204),
    ("GET", "/api/jobs"): Rule(Role.viewer, 200),
    ("POST", "/api/jobs"): Rule(Role.member, 202, lambda _: {"job_type": "noop", "payload": {}}),
    ("GET", "/api/jobs/{job_id}"): Rule(Role.viewer, 200),
    ("GET", "/api/jobs/{job_id}/logs"): Rule(Role.viewer, 200),
    ("POST", "/api/jobs/{job_id}/cancel"): Rule(Role.member, 202),
    ("GET", "/api/quotas"): Rule(Role.viewer, 200),
    ("GET", "/api/artifacts"): Rule(Role.viewer, 200),
    ("POST", "/api/artifacts"): Rule(
        Role.publisher,
        201,
        lambda _: {"name": unique("artifact"), "type": "note", "content": "aGVsbG8="},
    ),
    ("GET", "/api/artifacts/{artifact_id}"): Rule(Role.viewer, 200),
    ("PUT", "/api/artifacts/{artifact_id}"): Rule(
        Role.publisher, 200, lambda _: {"metadata": {"reviewed": True}}
    ),
    ("DELETE", "/api/artifacts/{artifact_id}"): Rule(Role.publisher, 204),
    ("GET", "/api/artifacts/{artifact_id}/download"): Rule(Role.viewer, 200),
    **{
        ("GET", path): Rule(Role.auditor, 200, roles=AUDIT_READERS)
        for path in (
            "/api/audit",
            "/api/audit/verify",
            "/api/audit/checkpoints",
            "/api/audit/public-key",
        )
    },
}


def api_routes(app: FastAPI) -> list[tuple[str, str]]:
    """Every operation the app serves, read from its OpenAPI document."""
    return sorted(
        (method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops
    )


async def own_params(
    world: World, org: Org, method: str, path: str, caller: Role | None = None
) -> dict[str, str]:
    """Fresh objects in `org` for every id in `path`, so only the role decides the outcome.

    Workspaces belong to the caller, since members act on their own workspaces only.
    """
    values: dict[str, str] = {}
    owner = org.users.get(caller) if caller else None
    await _identity_state(world, org, path, owner)
    if "{permit_id}" in path:
        permit = unique("permit")
        await make_workspace(
            world.database, org.tenant_id, org.template_id, owner_id=owner, external_ref=permit
        )
        values["permit_id"] = permit
    makers: dict[str, Callable[[], Awaitable[uuid.UUID]]] = {
        # A plan no tenant uses, so deleting or assigning it can succeed.
        "plan_id": (
            (lambda: make_plan(world.database))
            if method in {"DELETE", "POST"}
            else (lambda: _const(org.plan_id))
        ),
        "tenant_id": lambda: _const(org.tenant_id),
        "user_id": lambda: make_user(world.database, org.tenant_id),
        "project_id": lambda: make_project(world.database, org.tenant_id),
        "template_id": lambda: make_template(world.database, org.tenant_id),
        "workspace_id": lambda: make_workspace(
            world.database, org.tenant_id, org.template_id, owner_id=owner
        ),
        "artifact_id": lambda: make_artifact(world, org.tenant_id),
        # The caller's own key: only admins reach other users' keys.
        "api_key_id": lambda: _api_key(world, org, owner),
        "invite_id": lambda: _invite(world, org),
        # A queued job the caller enqueued, since members cancel their own jobs only.
        "job_id": lambda: _job(world, org, owner),
        "budget_id": lambda: make_budget(world, org.tenant_id),
    }
    for name, make in makers.items():
        if "{" + name + "}" in path:
            values[name] = str(await make())
    if "{version}" in path:
        values["version"] = "1"
    return values


async def _const(value: uuid.UUID) -> uuid.UUID:
    return value


async def _identity_state(world: World, org: Org, path: str, owner: uuid.UUID | None) -> None:
    """What an auth route's body refers to: an account with a password, a fresh token."""
    database = world.database
    if path == "/api/v1/auth/login":
        await login_account(database, org.tenant_id)
    elif path == "/api/v1/auth/password" and owner is not None:
        await set_password(database, owner)
    elif path in {"/api/v1/auth/refresh", "/api/v1/auth/logout"}:
        user = await make_user(database, org.tenant_id)
        PENDING[org.tenant_id] = await make_refresh_token(database, user)
    elif path == "/api/v1/auth/set-password":
        user = await make_user(database, org.tenant_id)
        PENDING[org.tenant_id] = await make_password_token(database, user)


async def _api_key(world: World, org: Org, owner: uuid.UUID | None) -> uuid.UUID:
    user = owner or next(iter(org.users.values()))
    key_id, _ = await make_api_key(world.database, org.tenant_id, user)
    return key_id


async def _invite(world: World, org: Org) -> uuid.UUID:
    invite_id, _ = await make_invite(world.database, org.tenant_id)
    return invite_id


async def _job(world: World, org: Org, owner: uuid.UUID | None) -> uuid.UUID:
    async with world.database.transaction(write=True) as session:
        job = await enqueue(
            session, job_type="noop", payload={}, tenant_id=org.tenant_id, actor_id=owner
        )
        return job.id


_BUDGET_BODIES = itertools.count()


def _budget_body(org: Org) -> dict[str, Any]:
    """A user budget on the next of `org`'s users, in turn (one budget per scope)."""
    users = sorted(org.users.values())
    user = users[next(_BUDGET_BODIES) % len(users)]
    return {"scope": "user", "scope_id": str(user), "limit": 100}


async def make_budget(world: World, tenant_id: uuid.UUID) -> uuid.UUID:
    """A budget on a new project of the tenant: every role of the tenant reads it."""
    project = await make_project(world.database, tenant_id)
    async with world.database.transaction(write=True) as session:
        budget = Budget(
            tenant_id=tenant_id,
            scope="project",
            scope_id=project,
            limit_amount=Decimal(100),
            warn_ratio=Decimal("0.8"),
            hard_ratio=Decimal(1),
        )
        session.add(budget)
        await session.flush()
        return budget.id


async def make_artifact(world: World, tenant_id: uuid.UUID, content: bytes = b"x") -> uuid.UUID:
    async with world.database.unit_of_work(write=True) as uow:
        return await create_artifact_from_bytes(
            uow,
            tenant_id=tenant_id,
            name=unique("artifact"),
            type="note",
            content=content,
            content_type="text/plain",
            metadata={},
            store=blob_store_for_settings(world.settings),
        )
