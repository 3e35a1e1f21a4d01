"""A refused change leaves nothing of itself behind but its refusal: an audit entry, an event."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from conftest import World
from spawnpoint.models import AuditEntry, OutboxEvent, Role, Workspace


async def test_a_spawn_over_quota_leaves_its_refusal_and_nothing_else(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org(max_workspaces=0)
    headers = {**org.headers[Role.member], "X-Request-ID": f"over-{org.tenant_id}"}
    refused = await client.post(
        "/api/spawn", headers=headers, json={"template_id": str(org.template_id)}
    )
    assert refused.status_code == 429, refused.text
    async with world.database.transaction(write=False) as session:
        workspaces = (
            await session.execute(select(Workspace).where(Workspace.tenant_id == org.tenant_id))
        ).all()
        events = (
            (
                await session.execute(
                    select(OutboxEvent).where(OutboxEvent.tenant_id == org.tenant_id)
                )
            )
            .scalars()
            .all()
        )
        entries = (
            (
                await session.execute(
                    select(AuditEntry).where(AuditEntry.request_id == f"over-{org.tenant_id}")
                )
            )
            .scalars()
            .all()
        )
    assert workspaces == []
    assert [e.type for e in events] == ["spawn.refused"]
    assert events[0].payload["template_id"] == str(org.template_id)
    assert "max_workspaces" in events[0].payload["reasons"][0]
    assert events[0].payload["usage"]["workspaces"] == 0
    assert [(e.action, e.result, e.details["status"]) for e in entries] == [
        ("workspace.spawn", "denied", 429)
    ]

    listed = await client.get(
        "/api/events", params={"type": "spawn."}, headers=org.headers[Role.viewer]
    )
    assert [e["type"] for e in listed.json()["items"]] == ["spawn.refused"]
