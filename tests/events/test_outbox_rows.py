"""The outbox row builders: complete rows, JSON payloads, insertable on the hot path."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest

from conftest import World
from spawnpoint.events.outbox import outbox_event, spawn_refused, workspace_event
from spawnpoint.kit.inserts import insert_together
from spawnpoint.models import OutboxEvent, Role, WorkspaceState
from spawnpoint.workspaces.schemas import Usage

COLUMNS = {c.name for c in OutboxEvent.__table__.columns}
AT = datetime(2031, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def test_outbox_event_returns_every_column_of_a_new_unpublished_row() -> None:
    tenant_id = uuid.uuid4()
    row = outbox_event(
        tenant_id=tenant_id, type="thing.done", key=tenant_id, payload={"id": tenant_id}
    )
    assert set(row) == COLUMNS
    assert row["id"].version == 7
    assert row["tenant_id"] == tenant_id
    assert row["key"] == str(tenant_id)
    assert row["payload"] == {"id": str(tenant_id)}
    assert row["published_at"] is None
    assert row["attempts"] == 0
    assert row["last_error"] is None
    assert row["created_at"].tzinfo is not None
    later = outbox_event(tenant_id=None, type="thing.done", key="k", payload={})
    assert later["id"] != row["id"]
    assert later["tenant_id"] is None


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": ""}, "type"),
        ({"type": "x" * 101}, "type"),
        ({"key": ""}, "key"),
        ({"now": datetime(2031, 1, 1)}, "timezone-aware"),
    ],
)
def test_outbox_event_refuses_rows_its_columns_cannot_hold(
    changes: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"tenant_id": None, "type": "a.b", "key": "k", "payload": {}}
    with pytest.raises(ValueError, match=message):
        outbox_event(**{**arguments, **changes})  # type: ignore[arg-type]


def test_workspace_event_names_the_new_state_and_keys_by_workspace() -> None:
    tenant_id, workspace_id, actor_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    row = workspace_event(
        tenant_id=tenant_id,
        workspace_id=workspace_id,
        external_ref="permit-7",
        from_state=WorkspaceState.provisioning,
        to_state="running",
        actor="user",
        actor_id=actor_id,
        reason="ready",
        at=AT,
    )
    assert set(row) == COLUMNS
    assert (row["type"], row["key"], row["tenant_id"]) == (
        "workspace.running",
        str(workspace_id),
        tenant_id,
    )
    assert row["created_at"] == AT
    assert row["payload"] == {
        "workspace_id": str(workspace_id),
        "external_ref": "permit-7",
        "from": "provisioning",
        "to": "running",
        "actor": "user",
        "actor_id": str(actor_id),
        "reason": "ready",
        "at": "2031-01-02T03:04:05.678000Z",
    }
    first = workspace_event(
        tenant_id=tenant_id,
        workspace_id=workspace_id,
        external_ref=None,
        from_state=None,
        to_state=WorkspaceState.pending,
        actor="system",
        actor_id=None,
        reason="",
        at=AT,
    )
    assert first["type"] == "workspace.pending"
    assert first["payload"]["from"] is None
    assert first["payload"]["actor_id"] is None
    with pytest.raises(ValueError, match="exploded"):
        workspace_event(**{**first_arguments(tenant_id, workspace_id), "to_state": "exploded"})


def first_arguments(tenant_id: uuid.UUID, workspace_id: uuid.UUID) -> dict[str, object]:
    return {
        "tenant_id": tenant_id,
        "workspace_id": workspace_id,
        "external_ref": None,
        "from_state": None,
        "to_state": "pending",
        "actor": "system",
        "actor_id": None,
        "reason": "",
        "at": AT,
    }


def test_spawn_refused_carries_reasons_and_usage_keyed_by_tenant() -> None:
    tenant_id, template_id = uuid.uuid4(), uuid.uuid4()
    usage = Usage(workspaces=2, cpu=1.5, memory_mb=1024, storage_gb=3)
    offset = timezone(timedelta(hours=2))
    row = spawn_refused(
        tenant_id=tenant_id,
        template_id=template_id,
        reasons=("plan allows 2 workspaces",),
        usage=usage,
        now=AT.astimezone(offset),
    )
    assert set(row) == COLUMNS
    assert (row["type"], row["key"]) == ("spawn.refused", str(tenant_id))
    assert row["created_at"] == AT
    assert row["payload"] == {
        "tenant_id": str(tenant_id),
        "template_id": str(template_id),
        "reasons": ["plan allows 2 workspaces"],
        "usage": {"workspaces": 2, "cpu": 1.5, "memory_mb": 1024, "storage_gb": 3},
    }
    as_mapping = spawn_refused(
        tenant_id=tenant_id, template_id=template_id, reasons=[], usage=usage.model_dump()
    )
    assert as_mapping["payload"]["usage"] == row["payload"]["usage"]


async def test_rows_insert_together_with_a_change_and_read_back_as_built(
    client: httpx.AsyncClient, world: World
) -> None:
    """The unit of work's path: complete rows through `insert_together` (one statement on
    PostgreSQL), then listed by the API exactly as they were built."""
    org = await world.org(roles=(Role.viewer,))
    workspace_id = uuid.uuid4()
    rows = [
        workspace_event(
            **{**first_arguments(org.tenant_id, workspace_id), "external_ref": "permit-1"}
        ),
        spawn_refused(
            tenant_id=org.tenant_id,
            template_id=org.template_id,
            reasons=["the policy said no"],
            usage={"workspaces": 0, "cpu": 0.0, "memory_mb": 0, "storage_gb": 0},
            now=AT + timedelta(seconds=1),
        ),
    ]
    async with world.database.transaction(write=True) as session:
        await insert_together(session, [(OutboxEvent, row) for row in rows])
    response = await client.get("/api/events", headers=org.headers[Role.viewer])
    assert response.status_code == 200, response.text
    listed = {item["id"]: item for item in response.json()["items"]}
    assert set(listed) == {str(row["id"]) for row in rows}
    for row in rows:
        item = listed[str(row["id"])]
        assert item["type"] == row["type"]
        assert item["key"] == row["key"]
        assert item["payload"] == row["payload"]
        assert item["tenant_id"] == str(org.tenant_id)
        assert item["published_at"] is None
