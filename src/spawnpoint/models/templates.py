from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from spawnpoint.db import Base, IdMixin, TimestampMixin
from spawnpoint.kit.clock import utcnow
from spawnpoint.models.tenancy import pending_deletion_index


class Template(IdMixin, TimestampMixin, Base):
    """A named, versioned workspace recipe; `tenant_id` NULL makes it a platform template."""

    __tablename__ = "templates"
    __table_args__ = (
        Index("uq_templates_tenant_id_name", "tenant_id", "name", unique=True),
        Index(
            "uq_templates_platform_name",
            "name",
            unique=True,
            sqlite_where=text("tenant_id IS NULL"),
            postgresql_where=text("tenant_id IS NULL"),
        ),
        Index("ix_templates_tenant_id_id", "tenant_id", "id"),
        pending_deletion_index("templates"),
    )

    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(100))
    description: Mapped[str] = mapped_column(Text, default="")
    provisioner: Mapped[str] = mapped_column(String(63))
    current_version: Mapped[int] = mapped_column(default=1)
    # Set by a cascading delete; the row goes once none of its workspaces is live.
    deletion_requested_at: Mapped[datetime | None]


class TemplateVersion(Base):
    """An immutable snapshot of a template's spec; rows are only ever inserted.

    `tenant_id` copies the template's (NULL for a platform template), so reads of versions
    are scoped by their own column instead of trusting that the template was checked.
    """

    __tablename__ = "template_versions"
    __table_args__ = (Index("ix_template_versions_tenant_id", "tenant_id"),)

    template_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE")
    )
    provisioner: Mapped[str] = mapped_column(String(63))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
