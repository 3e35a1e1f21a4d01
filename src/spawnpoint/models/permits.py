"""Permit events from RabbitMQ: the inbox of handled messages and each permit's last state.

An inbound message's effect and its inbox row commit together, so a message delivered
twice (a redelivery after a lost ack, a publisher's retry) finds its row and changes
nothing the second time. `permits` keeps, per tenant and permit id, what the last applied
event said and when it happened, so an older event arriving late is recognised and
ignored, and a permit revoked before its approval arrived stays revoked.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, PrimaryKeyConstraint, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from spawnpoint.db import Base, IdMixin
from spawnpoint.kit.clock import utcnow

MESSAGE_ID_LENGTH = 255
PERMIT_ID_LENGTH = 200
STAGE_LENGTH = 63


class InboxOutcome(StrEnum):
    """What handling a message did; the inbox row keeps it."""

    applied = "applied"
    refused = "refused"  # quota, policy or budget: recorded on a permit.refused event
    ignored = "ignored"  # older than the permit's last applied event, or nothing to do
    dead_lettered = "dead_lettered"


class PermitState(StrEnum):
    active = "active"  # approved: a workspace was spawned for it
    refused = "refused"  # approved, but the spawn was refused
    closed = "closed"  # revoked or closed: final


class InboxMessage(IdMixin, Base):
    """One inbound message handled, by its AMQP `message_id`.

    `tenant_id` has no foreign key: a dead-lettered message may name a tenant that does
    not exist, and the row must outlive the tenant to keep recognising redeliveries.
    """

    __tablename__ = "permit_inbox"
    __table_args__ = (Index("ix_permit_inbox_received_at", "received_at"),)

    message_id: Mapped[str] = mapped_column(String(MESSAGE_ID_LENGTH), unique=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[str | None] = mapped_column(String(100))
    permit_id: Mapped[str | None] = mapped_column(String(PERMIT_ID_LENGTH))
    tenant_id: Mapped[uuid.UUID | None]
    occurred_at: Mapped[datetime | None]
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)


class Permit(Base):
    """A tenant's permit as the inbound events left it."""

    __tablename__ = "permits"
    __table_args__ = (
        PrimaryKeyConstraint("tenant_id", "permit_id"),
        Index("ix_permits_workspace_id", "workspace_id"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    permit_id: Mapped[str] = mapped_column(String(PERMIT_ID_LENGTH))
    workspace_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("workspaces.id", ondelete="SET NULL")
    )
    state: Mapped[str] = mapped_column(String(16))
    last_type: Mapped[str] = mapped_column(String(100))
    last_message_id: Mapped[str] = mapped_column(String(MESSAGE_ID_LENGTH))
    last_occurred_at: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
