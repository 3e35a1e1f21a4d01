"""What a permit event does, in the unit of work of the message that carried it.

Each handled message leaves one inbox row in the transaction of its effect, so a message
delivered twice changes things once: a redelivery finds the row (or, when two deliveries
race, the second one's insert fails and its transaction, effect included, rolls back).

- `permit.approved` spawns the workspace through `WorkspaceService.spawn`, exactly as
  `POST /api/spawn` does, as the tenant's service account (a member created on first
  use); a quota, policy or budget refusal is recorded on a `permit.refused` outbox event.
- `permit.stage_changed` sets the workspace's stage; a running workspace is re-provisioned
  (running -> provisioning -> running, visible in its events), one that is not yet running
  picks the stage up on its way, a stopped one when it starts again. A stage change for a
  permit with no workspace yet is parked (`Parked`) and tried again later.
- `permit.revoked` and `permit.closed` delete the workspace; the permit stays closed, so
  an approval that arrives after its revocation creates nothing.

An event older than the last one applied for its permit is ignored with a log line.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from spawnpoint.audit.chain import AuditDraft
from spawnpoint.events.outbox import outbox_event
from spawnpoint.jobs.queue import enqueue
from spawnpoint.kit.auditing import system_action
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.errors import Conflict, Forbidden, NotFound, Unprocessable
from spawnpoint.models import InboxMessage, Permit, Role, UserStatus, Workspace, WorkspaceState
from spawnpoint.models.permits import InboxOutcome, PermitState
from spawnpoint.permits.repository import PermitRows
from spawnpoint.permits.schemas import PermitEvent, PermitType
from spawnpoint.policy.engine import PolicyEngine
from spawnpoint.scope import TenantScope
from spawnpoint.security import Principal
from spawnpoint.templates.repository import TemplateRepository
from spawnpoint.templates.stages import defines_stage, stage_storage_gb
from spawnpoint.uow import unit_of
from spawnpoint.workspaces.lifecycle import move
from spawnpoint.workspaces.repository import SpawnRows, WorkspaceRepository
from spawnpoint.workspaces.schemas import SpawnRequest
from spawnpoint.workspaces.service import (
    QuotaExceeded,
    QuotaViolation,
    WorkspaceService,
)

log = logging.getLogger("spawnpoint.permits")

PERMIT_REFUSED = "permit.refused"
CONSUMER = "permit-consumer"
# An event dated this far ahead of the clock would make every later one look stale.
MAX_CLOCK_SKEW = timedelta(hours=1)
# Handlings of one message in a row when it loses races (`Retry`).
RETRIES = 3
S = WorkspaceState


class InvalidMessage(Exception):
    """A message no retry can apply: it goes to the dead-letter queue with this reason."""


class Parked(Exception):
    """A message that may apply later (its permit has no workspace yet): retried later."""


class Retry(Exception):
    """A race with another consumer was lost; handling the message again settles it."""


@dataclass(frozen=True)
class Handled:
    outcome: InboxOutcome
    detail: str
    workspace_id: uuid.UUID | None = None


def permit_refused(
    *, event: PermitEvent, message_id: str, reasons: list[str], usage: Any = None
) -> dict[str, Any]:
    """The outbox row of a refused permit event: type `permit.refused`, keyed by tenant."""
    return outbox_event(
        tenant_id=event.tenant_id,
        type=PERMIT_REFUSED,
        key=event.tenant_id,
        payload={
            "permit_id": event.permit_id,
            "tenant_id": event.tenant_id,
            "template_id": event.template_id,
            "event_type": event.type.value,
            "message_id": message_id,
            "stage": event.stage,
            "reasons": reasons,
            "usage": usage,
        },
    )


def dead_letter_entry(
    *,
    tenant_id: uuid.UUID | None,
    message_id: str | None,
    reason: str,
    event_type: str | None,
    permit_id: str | None,
) -> AuditDraft:
    """The audit entry of a dead-lettered message (on the platform chain without a tenant)."""
    return AuditDraft(
        tenant_id=tenant_id,
        actor_type="system",
        actor_id=CONSUMER,
        action="permit.dead_lettered",
        resource_type="permit",
        resource_id=permit_id,
        result="failed",
        reason=reason[:500],
        details={"message_id": message_id, "type": event_type},
    )


class PermitService:
    """Applies one permit event in the session's unit of work (which commits it)."""

    def __init__(self, rows: PermitRows, *, policy: PolicyEngine, max_job_attempts: int = 5):
        self.rows = rows
        self.session = rows.session
        self.policy = policy
        self.max_job_attempts = max_job_attempts

    async def handle(self, *, message_id: str, event: PermitEvent, attempt: int = 1) -> Handled:
        """Apply `event` once; return what it did (also written to the inbox).

        A spawn commits the unit of work itself (with the inbox row, the permit's row and
        the audit entry, written first), as `POST /api/spawn` does, so the tenant's lock is
        held no longer than for a spawn through the API.

        Raises:
            InvalidMessage: the tenant, template or stage does not exist, or the event is
                dated in the future; nothing was written.
            Parked: a stage change for a permit that has no workspace yet.
            Retry: another consumer created the permit's row or workspace meanwhile.
        """
        if event.occurred_at > utcnow() + MAX_CLOCK_SKEW:
            raise InvalidMessage(f"occurred_at {event.occurred_at.isoformat()} is in the future")
        facts = await self.rows.facts(
            message_id=message_id, tenant_id=event.tenant_id, permit_id=event.permit_id
        )
        if facts.handled is not None:
            return Handled(InboxOutcome.ignored, "already handled")
        if not facts.tenant_found:
            raise InvalidMessage(f"no tenant has id {event.tenant_id}")
        account = facts.account or await self.rows.create_account(event.tenant_id)
        if account.status != UserStatus.active:
            raise InvalidMessage(f"the tenant's service account {account.id} is disabled")
        actor = Principal(user_id=account.id, tenant_id=event.tenant_id, role=Role(account.role))
        scope = TenantScope(tenant_id=event.tenant_id, all_tenants=False)
        workspaces = WorkspaceService(
            WorkspaceRepository(self.session, scope),
            TemplateRepository(self.session, scope),
            policy=self.policy,
            max_job_attempts=self.max_job_attempts,
        )
        permit = facts.permit
        if permit is not None:
            permit = await self.rows.permit_for_update(event.tenant_id, event.permit_id)
        handled = self._settled(permit, event)
        if handled is None and event.type is PermitType.approved:
            return await self._approve(
                workspaces, actor, permit, facts.workspace_id, message_id, event, attempt
            )
        if handled is None and event.type is PermitType.stage_changed:
            handled = await self._change_stage(
                workspaces, actor, permit, facts.workspace_id, message_id, event
            )
        elif handled is None:
            handled = await self._close(
                workspaces, actor, permit, facts.workspace_id, message_id, event
            )
        self._record(message_id, event, handled)
        return handled

    def _record(
        self, message_id: str, event: PermitEvent, handled: Handled
    ) -> tuple[InboxMessage, AuditDraft | None]:
        """The message's inbox row and (unless it changed nothing) its audit entry."""
        inbox = self.rows.add_inbox(
            message_id=message_id,
            outcome=handled.outcome.value,
            type=event.type.value,
            permit_id=event.permit_id,
            tenant_id=event.tenant_id,
            occurred_at=event.occurred_at,
            detail=handled.detail[:2000],
        )
        if handled.outcome is InboxOutcome.ignored:
            log.info(
                "permit event ignored: %s",
                handled.detail,
                extra={"permit_id": event.permit_id, "message_id": message_id},
            )
            return inbox, None
        draft = system_action(
            tenant_id=event.tenant_id,
            action=event.type.value,
            resource_type="permit",
            resource_id=event.permit_id,
            reason=handled.detail[:500],
            actor_id=CONSUMER,
            message_id=message_id,
            workspace_id=handled.workspace_id,
            outcome=handled.outcome.value,
        )
        unit_of(self.session).record(draft)
        return inbox, draft

    @staticmethod
    def _settled(permit: Permit | None, event: PermitEvent) -> Handled | None:
        """The outcome of an event that its permit's row decides (stale, closed), or None."""
        if permit is None:
            return None
        if event.occurred_at < permit.last_occurred_at:
            return Handled(
                InboxOutcome.ignored,
                f"{event.type.value} of {event.occurred_at.isoformat()} is older than the "
                f"permit's last applied event ({permit.last_occurred_at.isoformat()})",
                permit.workspace_id,
            )
        if permit.state == PermitState.closed:
            return Handled(InboxOutcome.ignored, "the permit is closed", permit.workspace_id)
        return None

    def _remember(
        self,
        permit: Permit | None,
        event: PermitEvent,
        message_id: str,
        *,
        state: PermitState,
        workspace_id: uuid.UUID | None,
    ) -> Permit:
        if permit is None:
            return self.rows.add_permit(
                tenant_id=event.tenant_id,
                permit_id=event.permit_id,
                state=state,
                workspace_id=workspace_id,
                last_type=event.type.value,
                last_message_id=message_id,
                last_occurred_at=event.occurred_at,
            )
        permit.state = state.value
        permit.workspace_id = workspace_id
        permit.last_type = event.type.value
        permit.last_message_id = message_id
        permit.last_occurred_at = event.occurred_at
        permit.updated_at = utcnow()
        return permit

    async def _approve(
        self,
        workspaces: WorkspaceService,
        actor: Principal,
        permit: Permit | None,
        workspace_id: uuid.UUID | None,
        message_id: str,
        event: PermitEvent,
        attempt: int,
    ) -> Handled:
        done: Handled | None = None
        if permit is not None and permit.state == PermitState.active:
            done = Handled(InboxOutcome.ignored, "the permit is approved already", workspace_id)
        elif workspace_id is not None:
            # Spawned through the API with this external_ref, or by a consumer that won a race.
            self._remember(
                permit, event, message_id, state=PermitState.active, workspace_id=workspace_id
            )
            done = Handled(InboxOutcome.ignored, "the permit has a workspace already", workspace_id)
        if done is not None:
            self._record(message_id, event, done)
            return done
        try:
            spawn_in = SpawnRequest(
                template_id=event.template_id,
                external_ref=event.permit_id,
                parameters=event.parameters,
                stage=event.stage,
            )
        except ValidationError as exc:
            raise InvalidMessage(f"not a valid spawn: {exc.errors(include_url=False)}") from exc
        # Written first, so that the spawn commits with its last round trip.
        inbox, draft = self._record(
            message_id, event, Handled(InboxOutcome.applied, "spawned the permit's workspace")
        )
        row = self._remember(permit, event, message_id, state=PermitState.active, workspace_id=None)
        await self.session.flush()
        uow = unit_of(self.session)
        try:
            workspace, _ = await workspaces.spawn(actor=actor, spawn_in=spawn_in, final=True)
        except Unprocessable as exc:
            errors = exc.extra.get("errors") or []
            raise InvalidMessage("; ".join(e["detail"] for e in errors) or exc.detail) from exc
        except (QuotaExceeded, Forbidden, Conflict) as exc:
            if isinstance(exc, Conflict) and attempt < RETRIES:
                # Most likely another consumer's spawn for this permit (its insert failed,
                # and with it this transaction): look again in a new one.
                raise Retry(exc.detail) from exc
            uow.refusals.clear()
            reasons = [str(r) for r in exc.extra.get("reasons") or [exc.detail]]
            uow.emit(
                permit_refused(
                    event=event,
                    message_id=message_id,
                    reasons=reasons,
                    usage=exc.extra.get("usage"),
                )
            )
            detail = "; ".join(reasons)
            inbox.outcome, inbox.detail = InboxOutcome.refused.value, detail[:2000]
            row.state = PermitState.refused.value
            if draft is not None:
                draft.reason = detail[:500]
                draft.details["outcome"] = InboxOutcome.refused.value
            return Handled(InboxOutcome.refused, detail)
        return Handled(InboxOutcome.applied, f"spawned workspace {workspace.id}", workspace.id)

    async def _change_stage(
        self,
        workspaces: WorkspaceService,
        actor: Principal,
        permit: Permit | None,
        workspace_id: uuid.UUID | None,
        message_id: str,
        event: PermitEvent,
    ) -> Handled:
        assert event.stage is not None  # the schema requires it
        if workspace_id is None:
            if permit is not None and permit.state == PermitState.refused:
                return Handled(InboxOutcome.ignored, "the permit's spawn was refused")
            raise Parked(f"permit {event.permit_id} has no workspace yet")
        workspace = await workspaces.repository.get_for_update(workspace_id)
        if workspace.state in (S.deleting, S.deleted):
            return Handled(
                InboxOutcome.ignored, f"the workspace is {workspace.state}", workspace.id
            )
        try:
            version = await workspaces.templates.get_version(
                workspace.template_id, workspace.template_version
            )
        except NotFound as exc:
            raise InvalidMessage("the workspace's template version is gone") from exc
        if not defines_stage(version.spec, event.stage):
            raise InvalidMessage(f"the template defines no stage {event.stage!r}")
        storage = stage_storage_gb(version.spec, event.stage)
        if storage > workspace.storage_gb:
            refusal = await self._storage_refusal(workspace, storage)
            if refusal is not None:
                reason = refusal.reason("the plan")
                unit_of(self.session).emit(
                    permit_refused(event=event, message_id=message_id, reasons=[reason])
                )
                self._remember(
                    permit, event, message_id, state=PermitState.active, workspace_id=workspace.id
                )
                return Handled(InboxOutcome.refused, reason, workspace.id)
        previous = workspace.stage
        workspace.stage = event.stage
        workspace.storage_gb = storage
        if workspace.state == S.running:
            move(
                self.session,
                workspace,
                S.provisioning,
                actor="user",
                actor_id=actor.user_id,
                reason=f"permit {event.permit_id} moved to stage {event.stage}",
            )
        if workspace.state == S.provisioning:
            # From running, or already provisioning with what may be the old stage.
            await enqueue(
                self.session,
                job_type="workspace.provision",
                payload={"workspace_id": str(workspace.id)},
                tenant_id=workspace.tenant_id,
                actor_id=actor.user_id,
                project_id=workspace.project_id,
                max_attempts=self.max_job_attempts,
            )
        self._remember(
            permit, event, message_id, state=PermitState.active, workspace_id=workspace.id
        )
        return Handled(
            InboxOutcome.applied,
            f"stage {previous or 'none'} -> {event.stage} ({workspace.state})",
            workspace.id,
        )

    async def _storage_refusal(self, workspace: Workspace, storage: int) -> QuotaViolation | None:
        _, plan, usage = await SpawnRows(self.session).lock_tenant_with_usage(workspace.tenant_id)
        used = usage.storage_gb - workspace.storage_gb
        if used + storage <= plan.max_storage_gb:
            return None
        return QuotaViolation(
            limit="max_storage_gb",
            allowed=float(plan.max_storage_gb),
            used=float(used),
            requested=float(storage),
        )

    async def _close(
        self,
        workspaces: WorkspaceService,
        actor: Principal,
        permit: Permit | None,
        workspace_id: uuid.UUID | None,
        message_id: str,
        event: PermitEvent,
    ) -> Handled:
        if workspace_id is None:
            self._remember(permit, event, message_id, state=PermitState.closed, workspace_id=None)
            return Handled(InboxOutcome.applied, "closed before any workspace existed")
        try:
            workspace, job = await workspaces.delete(actor=actor, workspace_id=workspace_id)
        except Forbidden as exc:
            unit_of(self.session).emit(
                permit_refused(event=event, message_id=message_id, reasons=[exc.detail])
            )
            return Handled(InboxOutcome.refused, exc.detail, workspace_id)
        self._remember(
            permit, event, message_id, state=PermitState.closed, workspace_id=workspace.id
        )
        detail = (
            "deleting the workspace" if job is not None else f"the workspace is {workspace.state}"
        )
        return Handled(InboxOutcome.applied, detail, workspace.id)
