"""The workspace lifecycle: one transition table, one function that moves a workspace.

Every transition writes its `workspace_events` row and its outbox event
(`workspace.<new state>`) in the transaction of the change, through the unit of work that
owns the session.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.events.outbox import workspace_event
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.errors import Conflict
from spawnpoint.kit.ids import uuid7
from spawnpoint.models import Workspace, WorkspaceEvent
from spawnpoint.models import WorkspaceState as S
from spawnpoint.uow import unit_of
from spawnpoint.workspaces.status_cache import refresh_on_commit

TRANSITIONS: dict[S, frozenset[S]] = {
    S.pending: frozenset({S.provisioning, S.deleting, S.failed}),
    S.provisioning: frozenset({S.running, S.deleting, S.failed}),
    # running -> provisioning: re-provisioned in place for a new permit stage.
    S.running: frozenset({S.provisioning, S.stopping, S.deleting, S.failed}),
    S.stopping: frozenset({S.stopped, S.deleting, S.failed}),
    S.stopped: frozenset({S.starting, S.deleting}),
    S.starting: frozenset({S.running, S.deleting, S.failed}),
    S.failed: frozenset({S.starting, S.deleting}),
    S.deleting: frozenset({S.deleted, S.failed}),
    S.deleted: frozenset(),
}

# States whose workspaces hold compute, and so count against cpu, memory and workspace quotas.
ACTIVE_STATES = frozenset({S.pending, S.provisioning, S.starting, S.running, S.stopping})
# States that still hold storage.
EXISTING_STATES = frozenset(S) - {S.deleted}

SYSTEM = "system"


def can_move(current: str, target: S) -> bool:
    return target in TRANSITIONS[S(current)]


def transition(
    session: AsyncSession,
    workspace: Workspace,
    target: S,
    *,
    actor: str,
    actor_id: uuid.UUID | None = None,
    reason: str = "",
    now: datetime | None = None,
) -> dict[str, Any]:
    """Set `workspace.state` to `target` and emit its outbox event; return its event's values.

    The caller writes the returned `workspace_events` row (`move` adds it to the session).

    Args:
        actor: "user" for a person, "system" for the scheduler and workers.
    Raises:
        Conflict: the transition is not in the table.
    """
    if not can_move(workspace.state, target):
        raise Conflict(f"A {workspace.state} workspace cannot become {target.value}.")
    event = _event(
        workspace.id,
        workspace.tenant_id,
        workspace.state,
        target,
        actor=actor,
        actor_id=actor_id,
        reason=reason,
        at=now or utcnow(),
    )
    workspace.state = target
    announce(session, workspace.external_ref, event)
    return event


def move(
    session: AsyncSession,
    workspace: Workspace,
    target: S,
    *,
    actor: str,
    actor_id: uuid.UUID | None = None,
    reason: str = "",
    now: datetime | None = None,
) -> WorkspaceEvent:
    """`transition` a workspace of `session` and add its event to the session."""
    values = transition(
        session, workspace, target, actor=actor, actor_id=actor_id, reason=reason, now=now
    )
    event = WorkspaceEvent(**values)
    session.add(event)
    return event


def announce(session: AsyncSession, external_ref: str | None, event: dict[str, Any]) -> None:
    """Emit the outbox event of a workspace event (its column values) in `session`'s commit,
    and write a permit workspace's documents to the status cache after it."""
    columns = {k: v for k, v in event.items() if k != "id"}
    unit_of(session).emit(workspace_event(external_ref=external_ref, **columns))
    refresh_on_commit(
        session,
        workspace_id=event["workspace_id"],
        tenant_id=event["tenant_id"],
        external_ref=external_ref,
    )


def creation_event(
    *, workspace_id: uuid.UUID, tenant_id: uuid.UUID, actor_id: uuid.UUID | None, now: datetime
) -> dict[str, Any]:
    """The column values of a workspace's first event: it came into being as `pending`."""
    return _event(
        workspace_id,
        tenant_id,
        None,
        S.pending,
        actor="user",
        actor_id=actor_id,
        reason="spawned",
        at=now,
    )


def _event(
    workspace_id: uuid.UUID,
    tenant_id: uuid.UUID,
    from_state: str | None,
    to_state: S,
    *,
    actor: str,
    actor_id: uuid.UUID | None,
    reason: str,
    at: datetime,
) -> dict[str, Any]:
    """The column values of a new workspace event."""
    return {
        "id": uuid7(),
        "workspace_id": workspace_id,
        "tenant_id": tenant_id,
        "from_state": from_state,
        "to_state": to_state,
        "actor": actor,
        "actor_id": actor_id,
        "reason": reason,
        "at": at,
    }
