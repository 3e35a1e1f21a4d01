"""Outbox rows, built as complete column values for the unit of work to insert.

An event commits with the change it describes or not at all (DESIGN.md "Shape"): these
functions only build rows, and whoever owns the transaction inserts them beside the change
(`insert_together` takes `(OutboxEvent, row)` pairs), so a rolled-back change leaves no
event behind and no event is ever sent for a change that did not happen. They read nothing
and write nothing, which keeps them usable on every path, the pipelined ones included.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.ids import uuid7
from spawnpoint.kit.inserts import with_defaults
from spawnpoint.models import OutboxEvent, WorkspaceState
from spawnpoint.models.outbox import KEY_LENGTH, TYPE_LENGTH

SPAWN_REFUSED = "spawn.refused"
WORKSPACE_PREFIX = "workspace."


def outbox_event(
    *,
    tenant_id: uuid.UUID | None,
    type: str,
    key: str | uuid.UUID,
    payload: Mapping[str, Any],
    now: datetime | None = None,
) -> dict[str, Any]:
    """The column values of a new, unpublished outbox row.

    Args:
        tenant_id: the tenant the event belongs to; None for a platform event.
        type: what happened, `<aggregate>.<what>` (`workspace.running`, `spawn.refused`).
        key: the aggregate's id; a relay keeps the events of one key in order.
        payload: the event's body; UUIDs, datetimes and models are written as JSON values
            here, so the stored document is exactly what a relay will send.
        now: the event's time (timezone-aware); default: the clock.
    Returns:
        Every column, defaults filled in, so the caller knows the id it stored.
    Raises:
        ValueError: `type` or `key` is empty or longer than its column, or `now` is naive.
    """
    key_text = str(key)
    if not type or len(type) > TYPE_LENGTH:
        raise ValueError(f"an event type needs 1 to {TYPE_LENGTH} characters: {type!r}")
    if not key_text or len(key_text) > KEY_LENGTH:
        raise ValueError(f"an event key needs 1 to {KEY_LENGTH} characters: {key_text!r}")
    created_at = now or utcnow()
    if created_at.tzinfo is None:
        raise ValueError("an event's time must be timezone-aware")
    return with_defaults(
        OutboxEvent,
        {
            "id": uuid7(),
            "tenant_id": tenant_id,
            "type": type,
            "key": key_text,
            "payload": to_jsonable_python(dict(payload)),
            "created_at": created_at,
            "published_at": None,
            "last_error": None,
        },
    )


def workspace_event(
    *,
    tenant_id: uuid.UUID,
    workspace_id: uuid.UUID,
    external_ref: str | None,
    from_state: str | None,
    to_state: str,
    actor: str,
    actor_id: uuid.UUID | None,
    reason: str,
    at: datetime,
) -> dict[str, Any]:
    """The outbox row of one workspace transition: type `workspace.<to_state>`.

    The arguments are the columns of the transition's `workspace_events` row (see
    `workspaces.lifecycle.transition`) plus the workspace's `external_ref`, which is how
    the provisioning seed's callers (permit ids) recognise their workspace. The event's
    time is the transition's, and its key the workspace, so a relay sends one workspace's
    transitions in the order they happened.
    """
    target = WorkspaceState(to_state)
    return outbox_event(
        tenant_id=tenant_id,
        type=f"{WORKSPACE_PREFIX}{target.value}",
        key=workspace_id,
        payload={
            "workspace_id": workspace_id,
            "external_ref": external_ref,
            "from": None if from_state is None else WorkspaceState(from_state).value,
            "to": target.value,
            "actor": actor,
            "actor_id": actor_id,
            "reason": reason,
            "at": at,
        },
        now=at,
    )


def spawn_refused(
    *,
    tenant_id: uuid.UUID,
    template_id: uuid.UUID,
    reasons: Sequence[str],
    usage: Mapping[str, Any] | BaseModel,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The outbox row of a refused spawn: type `spawn.refused`, keyed by the tenant.

    A refusal creates no workspace, so the tenant is the aggregate: its refusals stay in
    order with one another. `usage` is what the tenant held when the spawn was refused
    (a mapping or a model such as `workspaces.schemas.Usage`).
    """
    return outbox_event(
        tenant_id=tenant_id,
        type=SPAWN_REFUSED,
        key=tenant_id,
        payload={
            "tenant_id": tenant_id,
            "template_id": template_id,
            "reasons": list(reasons),
            "usage": usage,
        },
        now=now,
    )
