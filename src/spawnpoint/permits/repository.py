"""SQL of the permit consumer: the inbox, the permits and the tenants' service accounts.

The consumer is system code that serves every tenant, one message (and so one tenant) at
a time; what it reads of a tenant's workspaces and templates goes through the scoped
repositories of those domains, built for the message's tenant.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.ids import uuid7
from spawnpoint.models import InboxMessage, Permit, Role, Tenant, User, UserStatus, Workspace
from spawnpoint.models.permits import PermitState

# Service accounts get ids derived from their tenant's, so every consumer finds the same.
SERVICE_ACCOUNTS = uuid.UUID("6f7a3c1e-2b59-4c1a-9a43-5b0f2c9d7e11")
SERVICE_ACCOUNT_ROLE = Role.member


def service_account_id(tenant_id: uuid.UUID) -> uuid.UUID:
    return uuid.uuid5(SERVICE_ACCOUNTS, str(tenant_id))


def service_account_email(tenant_id: uuid.UUID) -> str:
    # `.invalid` is reserved (RFC 2606): no mail can reach it, nobody can register it.
    return f"permits.{tenant_id}@service.spawnpoint.invalid"


@dataclass(frozen=True)
class Facts:
    """What handling a message starts from, read in one round trip."""

    tenant_found: bool
    account: User | None
    handled: str | None  # the inbox outcome of this message id, when it was handled
    permit: Permit | None  # not locked
    workspace_id: uuid.UUID | None  # the tenant's workspace with the permit as external_ref


class PermitRows:
    """The permit consumer's reads and writes, in the caller's unit of work."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def _insert(self, table: Any) -> Any:
        dialect = postgresql if self.session.get_bind().dialect.name == "postgresql" else sqlite
        return dialect.insert(table)

    async def handled(self, message_id: str) -> str | None:
        """The outcome recorded for `message_id`; None when it was never handled."""
        statement = select(InboxMessage.outcome).where(InboxMessage.message_id == message_id)
        found: str | None = (await self.session.execute(statement)).scalar_one_or_none()
        return found

    async def record(
        self,
        *,
        message_id: str,
        outcome: str,
        type: str | None = None,
        permit_id: str | None = None,
        tenant_id: uuid.UUID | None = None,
        occurred_at: datetime | None = None,
        detail: str | None = None,
    ) -> None:
        """Insert the inbox row of a handled message, in the transaction of its effect.

        Raises:
            IntegrityError: another delivery of the message committed first; the caller's
                transaction must roll back (its effect already happened once).
        """
        await self.session.execute(
            insert(InboxMessage).values(
                id=uuid7(),
                message_id=message_id,
                received_at=utcnow(),
                type=type,
                permit_id=permit_id,
                tenant_id=tenant_id,
                occurred_at=occurred_at,
                outcome=outcome,
                detail=detail,
            )
        )

    async def facts(self, *, message_id: str, tenant_id: uuid.UUID, permit_id: str) -> Facts:
        """The message's inbox outcome, the tenant, its service account, the permit's row and
        its workspace, in one statement (no lock: see `permit_for_update`)."""
        handled = (
            select(InboxMessage.outcome)
            .where(InboxMessage.message_id == message_id)
            .scalar_subquery()
        )
        workspace = (
            select(Workspace.id)
            .where(Workspace.tenant_id == Tenant.id, Workspace.external_ref == permit_id)
            .scalar_subquery()
        )
        statement = (
            select(Tenant.id, User, Permit, handled, workspace)
            .outerjoin(
                User, (User.id == service_account_id(tenant_id)) & (User.tenant_id == Tenant.id)
            )
            .outerjoin(Permit, (Permit.tenant_id == Tenant.id) & (Permit.permit_id == permit_id))
            .where(Tenant.id == tenant_id)
        )
        row = (await self.session.execute(statement)).one_or_none()
        if row is None:
            return Facts(False, None, None, None, None)
        return Facts(True, row[1], row[3], row[2], row[4])

    def add_inbox(
        self,
        *,
        message_id: str,
        outcome: str,
        type: str,
        permit_id: str,
        tenant_id: uuid.UUID,
        occurred_at: datetime,
        detail: str,
    ) -> InboxMessage:
        """A pending inbox row (written with the session's next flush)."""
        row = InboxMessage(
            id=uuid7(),
            message_id=message_id,
            received_at=utcnow(),
            type=type,
            permit_id=permit_id,
            tenant_id=tenant_id,
            occurred_at=occurred_at,
            outcome=outcome,
            detail=detail,
        )
        self.session.add(row)
        return row

    async def tenant_and_account(self, tenant_id: uuid.UUID) -> tuple[Tenant | None, User | None]:
        """The tenant and its service account (either None when missing), in one query."""
        statement = (
            select(Tenant, User)
            .outerjoin(
                User, (User.id == service_account_id(tenant_id)) & (User.tenant_id == Tenant.id)
            )
            .where(Tenant.id == tenant_id)
        )
        row = (await self.session.execute(statement)).one_or_none()
        if row is None:
            return None, None
        return row[0], row[1]

    async def create_account(self, tenant_id: uuid.UUID) -> User:
        """The tenant's service account, created when missing (two consumers may race)."""
        now = utcnow()
        await self.session.execute(
            self._insert(User)
            .values(
                id=service_account_id(tenant_id),
                tenant_id=tenant_id,
                email=service_account_email(tenant_id),
                display_name="Permit events (service account)",
                role=SERVICE_ACCOUNT_ROLE.value,
                status=UserStatus.active.value,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing()
        )
        account: User = (
            await self.session.execute(select(User).where(User.id == service_account_id(tenant_id)))
        ).scalar_one()
        return account

    async def permit_for_update(self, tenant_id: uuid.UUID, permit_id: str) -> Permit | None:
        """The permit's row, locked until the transaction ends (PostgreSQL), or None."""
        statement = (
            select(Permit)
            .where(Permit.tenant_id == tenant_id, Permit.permit_id == permit_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        found: Permit | None = (await self.session.execute(statement)).scalar_one_or_none()
        return found

    def add_permit(
        self,
        *,
        tenant_id: uuid.UUID,
        permit_id: str,
        state: PermitState,
        workspace_id: uuid.UUID | None,
        last_type: str,
        last_message_id: str,
        last_occurred_at: datetime,
    ) -> Permit:
        """A new permit row, written with the transaction (its primary key settles races)."""
        permit = Permit(
            tenant_id=tenant_id,
            permit_id=permit_id,
            state=state.value,
            workspace_id=workspace_id,
            last_type=last_type,
            last_message_id=last_message_id,
            last_occurred_at=last_occurred_at,
            updated_at=utcnow(),
        )
        self.session.add(permit)
        return permit
