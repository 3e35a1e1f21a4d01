"""Upgrading an embedded database that an earlier version let `Infinity` into repairs it.

Regression for the hardening issue's first finding: a member stored `1e309` in a spawn's
parameters, after which the tenant's workspace list answered 500 for good. Only SQLite
ever held such rows (PostgreSQL's json type refuses `Infinity`).
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import orjson
from sqlalchemy import create_engine, text

from conftest import make_settings
from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.migrations import upgrade

DEMO_TENANT = "00000000000000000000000000000001"
DEMO_PLAN = "00000000000000000000000000000010"
DEMO_TEMPLATE = "00000000000000000000000000000100"
BEFORE = "20240605_0005_pending_deletion"


def test_non_finite_values_from_before_the_limits_are_repaired(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}", tmp_path)
    upgrade(settings, BEFORE)
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    workspace = uuid.uuid4().hex
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO workspaces (id, tenant_id, template_id, template_version, "
                "provisioner, name, state, parameters, cpu, memory_mb, storage_gb, "
                "driver_state, created_at, updated_at) VALUES (:id, :tenant, :template, 1, "
                "'dry-run', 'poisoned', 'running', :parameters, 1, 512, 1, '{}', "
                "'2026-11-01 00:00:00', '2026-11-01 00:00:00')"
            ),
            {
                "id": workspace,
                "tenant": DEMO_TENANT,
                "template": DEMO_TEMPLATE,
                "parameters": '{"x": Infinity, "y": [NaN, 1.5], "z": "Infinity"}',
            },
        )
        connection.execute(
            text("UPDATE plans SET max_cpu = 9e999 WHERE id = :plan"), {"plan": DEMO_PLAN}
        )
    upgrade(settings)
    with engine.connect() as connection:
        stored = connection.execute(
            text("SELECT parameters FROM workspaces WHERE id = :id"), {"id": workspace}
        ).scalar_one()
        max_cpu = connection.execute(
            text("SELECT max_cpu FROM plans WHERE id = :plan"), {"plan": DEMO_PLAN}
        ).scalar_one()
    engine.dispose()
    assert orjson.loads(stored) == {"x": None, "y": [None, 1.5], "z": "Infinity"}
    assert float(max_cpu) == 99_999_999.99

    asyncio.run(reads_back(settings))


async def reads_back(settings: Settings) -> None:
    app = create_app(settings)
    dev = {"Authorization": f"Bearer {settings.dev_bypass_token}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://spawnpoint.test") as client:
        listed = await client.get("/api/workspaces", headers=dev)
        assert listed.status_code == 200
        assert listed.json()["items"][0]["parameters"]["x"] is None
        plan = await client.get(f"/api/plans/{uuid.UUID(DEMO_PLAN)}", headers=dev)
        assert plan.status_code == 200
    await app.state.database.dispose()
