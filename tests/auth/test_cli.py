"""`spawnpoint user create` and `spawnpoint api-key create`."""

from __future__ import annotations

import asyncio
import json

import httpx
from auth_support import entries
from sqlalchemy import select
from typer.testing import CliRunner, Result

from conftest import World
from factories import unique
from identity_factories import KNOWN_PASSWORD
from spawnpoint.apikeys import keys
from spawnpoint.cli import app
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.models import AuditEntry, Role


async def cli(settings: Settings, *args: str, stdin: str | None = None) -> Result:
    env = {
        "DATABASE_URL": settings.sqlalchemy_url,
        "DATA_DIR": str(settings.data_dir),
        "JWT_SECRET": settings.jwt_secret or "",
        "ENVIRONMENT": "development",
        "AUDIT_SIGNING_KEY": settings.audit_key_material or "",
    }
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env, input=stdin)


async def test_user_create_with_a_prompted_password_then_an_api_key(
    backend_settings: Settings, client: httpx.AsyncClient, database: Database, world: World
) -> None:
    org = await world.org(roles=(Role.admin,))
    email = f"{unique('cli')}@example.test"
    made = await cli(
        backend_settings,
        "user", "create", "--email", email, "--role", "publisher", "--tenant", str(org.tenant_id),
        "--password-prompt",
        stdin=f"{KNOWN_PASSWORD}\n{KNOWN_PASSWORD}\n",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    user = json.loads(made.stdout.strip().splitlines()[-1])
    assert (user["email"], user["role"], user["tenant_id"]) == (
        email,
        "publisher",
        str(org.tenant_id),
    )
    login = await client.post(
        "/api/v1/auth/login", json={"email": email, "password": KNOWN_PASSWORD}
    )
    assert login.status_code == 200

    key = await cli(
        backend_settings, "api-key", "create", "--user", email, "--name", "ci", "--role", "member"
    )
    assert key.exit_code == 0, key.output
    secret = key.stdout.strip()
    assert keys.well_formed(secret)
    me = await client.get("/api/v1/auth/me", headers={"X-API-Key": secret})
    assert me.json()["role"] == "member"
    higher = await cli(
        backend_settings, "api-key", "create", "--user", email, "--name", "x", "--role", "admin"
    )
    assert higher.exit_code == 1
    async with database.transaction(write=False) as session:
        rows = await session.execute(
            select(AuditEntry.action, AuditEntry.actor_type, AuditEntry.actor_id).where(
                AuditEntry.tenant_id == org.tenant_id, AuditEntry.reason == "cli"
            )
        )
        assert set(rows.all()) == {
            ("user.create", "system", "cli"),
            ("api_key.create", "system", "cli"),
        }
    assert await entries(database, "no-such-request") == []


async def test_user_create_without_a_password_prints_a_set_password_token(
    backend_settings: Settings, client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(roles=())
    email = f"{unique('cli')}@example.test"
    slug = (await client.get(f"/api/tenants/{org.tenant_id}", headers=world.dev)).json()["slug"]
    made = await cli(backend_settings, "user", "create", "--email", email, "--tenant", slug)
    assert made.exit_code == 0, made.output
    token = made.stderr.strip().rsplit(" ", 1)[1]
    done = await client.post(
        "/api/v1/auth/set-password", json={"token": token, "password": KNOWN_PASSWORD}
    )
    assert done.status_code == 204
    again = await cli(backend_settings, "user", "create", "--email", email, "--tenant", slug)
    assert again.exit_code == 1
    nowhere = await cli(
        backend_settings, "user", "create", "--email", "x@example.test", "--tenant", "no-such"
    )
    assert nowhere.exit_code == 1
