"""Identity: passwords, refresh tokens, API keys, invites and set-password tokens.

No secret is stored: a password as its argon2id hash, every token and key as the SHA-256
of a high-entropy secret (hex), which is enough for a value nobody can guess.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from spawnpoint.db import Base, IdMixin, TimestampMixin
from spawnpoint.kit.clock import utcnow

SHA256_HEX = 64
ROLES_CHECK = "role IN ('viewer', 'auditor', 'member', 'publisher', 'admin', 'operator')"


class Credential(Base):
    """A user's password hash; a user without one cannot log in with a password."""

    __tablename__ = "credentials"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    password_hash: Mapped[str] = mapped_column(String(255))
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)


class RefreshToken(IdMixin, Base):
    """One refresh token of a login session (`family_id`); each use replaces it.

    A token presented again after its use means it was copied: the whole family is revoked.
    """

    __tablename__ = "refresh_tokens"
    __table_args__ = (
        Index("ix_refresh_tokens_family_id", "family_id"),
        Index("ix_refresh_tokens_user_id", "user_id"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    family_id: Mapped[uuid.UUID]
    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ApiKey(IdMixin, TimestampMixin, Base):
    """A revocable key for programs, acting with at most its creator's role."""

    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(ROLES_CHECK, name="role"),
        Index("ix_api_keys_tenant_id_id", "tenant_id", "id"),
        Index("ix_api_keys_tenant_id_user_id_id", "tenant_id", "user_id", "id"),
        Index("ix_api_keys_user_id", "user_id"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(SHA256_HEX), unique=True)
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class Invite(IdMixin, Base):
    """A tenant admin's invitation: registering with its token joins the tenant in `role`."""

    __tablename__ = "invites"
    __table_args__ = (
        CheckConstraint(ROLES_CHECK, name="role"),
        Index("ix_invites_tenant_id_id", "tenant_id", "id"),
        Index("ix_invites_created_by", "created_by"),
    )

    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(254))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX), unique=True)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None]


class PasswordToken(IdMixin, Base):
    """A one-time token that sets a user's password (users an admin created)."""

    __tablename__ = "password_tokens"
    __table_args__ = (Index("ix_password_tokens_user_id", "user_id"),)

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    token_hash: Mapped[str] = mapped_column(String(SHA256_HEX), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
