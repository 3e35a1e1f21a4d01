from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from spawnpoint.db import Base, IdMixin
from spawnpoint.kit.clock import utcnow

# The relay's predicate; a query that should use the partial index spells the same literal.
UNPUBLISHED = "published_at IS NULL"
TYPE_LENGTH = 100
KEY_LENGTH = 200


class OutboxEvent(IdMixin, Base):
    """An event, written in the same transaction as the change it describes.

    `id` is a UUIDv7, so it orders events by time and is the keyset of every listing.
    `tenant_id` has no foreign key on purpose: an event outlives the tenant (or workspace)
    it describes, and a relay must still be able to send it after that row is gone.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_tenant_id_id", "tenant_id", "id"),
        Index("ix_outbox_tenant_id_type_id", "tenant_id", "type", "id"),
        # The relay reads the oldest unsent events; once sent they leave the index.
        Index(
            "ix_outbox_unpublished",
            "id",
            sqlite_where=text(UNPUBLISHED),
            postgresql_where=text(UNPUBLISHED),
        ),
    )

    tenant_id: Mapped[uuid.UUID | None]
    type: Mapped[str] = mapped_column(String(TYPE_LENGTH))
    # The aggregate's id as text (a workspace id, ...): relays keep events of one key in order.
    key: Mapped[str] = mapped_column(String(KEY_LENGTH))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
