from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from spawnpoint.db import Base, IdMixin, TimestampMixin

NAME_LENGTH = 200
TYPE_LENGTH = 100
CONTENT_TYPE_LENGTH = 255
MANIFEST_LENGTH = 500


class Artifact(IdMixin, TimestampMixin, Base):
    """A named, typed record with optional content in the blob store.

    `manifest` is the content's key in the blob store (None: no content); `size` and
    `sha256` describe that content and are None without it. The attribute is `metadata_`
    because `metadata` is SQLAlchemy's own; the column and the API field are `metadata`.
    """

    __tablename__ = "artifacts"
    __table_args__ = (
        Index("ix_artifacts_tenant_id_id", "tenant_id", "id"),
        Index("ix_artifacts_tenant_id_type_id", "tenant_id", "type", "id"),
        # Name prefixes (`LIKE 'p%'`) use it on PostgreSQL whatever the collation.
        Index(
            "ix_artifacts_tenant_id_name",
            "tenant_id",
            "name",
            postgresql_ops={"name": "text_pattern_ops"},
        ),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    type: Mapped[str] = mapped_column(String(TYPE_LENGTH))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    content_type: Mapped[str | None] = mapped_column(String(CONTENT_TYPE_LENGTH))
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    manifest: Mapped[str | None] = mapped_column(String(MANIFEST_LENGTH))
    created_by: Mapped[uuid.UUID | None]

    @property
    def has_content(self) -> bool:
        return self.manifest is not None
