"""The tamper-evident audit log: entries, the head of each chain, signed checkpoints.

Every tenant has one hash chain, and the platform one more (`PLATFORM_CHAIN`, the nil
UUID; its entries have no tenant). `chain_id` is the tenant id, or the nil UUID, so every
key and index can name a chain with a non-null column. No table has a foreign key to
`tenants`: an audit trail must outlive the tenant it describes.

On PostgreSQL `audit_log` is partitioned by month on `time` (the partitions live in the
`audit_partitions` schema, see `spawnpoint.audit.repository`); the primary key carries
`time` because a partitioned table's unique keys must include the partition key. Within
a chain `time` never decreases with `seq` (`AuditLog.append` sees to it), so a month's
partition holds one contiguous run of each chain.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from spawnpoint.audit.chain import PLATFORM_CHAIN as PLATFORM_CHAIN
from spawnpoint.db import Base, IdMixin
from spawnpoint.kit.clock import utcnow

HASH_LENGTH = 64  # SHA-256, hex
ACTOR_TYPES = ("user", "api_key", "system")
RESULTS = ("success", "denied", "failed")
ACTION_LENGTH = 100
RESOURCE_TYPE_LENGTH = 64


def _one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    return CheckConstraint(f"{column} IN ({', '.join(repr(v) for v in values)})", name=column)


class AuditEntry(Base):
    """One link of a chain: what happened, who did it, and the hashes that bind it."""

    __tablename__ = "audit_log"
    __table_args__ = (
        _one_of("actor_type", ACTOR_TYPES),
        _one_of("result", RESULTS),
        # The seed's indexes: time, actor, action, resource, and composites that serve
        # GET /api/audit's filters in its keyset order (one chain, newest seq first).
        Index("ix_audit_log_time", "time"),
        Index("ix_audit_log_chain_id_time", "chain_id", "time"),
        Index("ix_audit_log_chain_id_actor_id_seq", "chain_id", "actor_id", "seq"),
        # text_pattern_ops: the action filter is a prefix (LIKE 'x%'), which a B-tree in a
        # non-C collation can only serve with the pattern operator class.
        Index(
            "ix_audit_log_chain_id_action_seq",
            "chain_id",
            "action",
            "seq",
            postgresql_ops={"action": "text_pattern_ops"},
        ),
        Index(
            "ix_audit_log_chain_id_resource_type_resource_id_seq",
            "chain_id",
            "resource_type",
            "resource_id",
            "seq",
        ),
        Index("ix_audit_log_chain_id_result_seq", "chain_id", "result", "seq"),
        {"postgresql_partition_by": "RANGE (time)"},
    )

    chain_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    time: Mapped[datetime] = mapped_column(primary_key=True)
    tenant_id: Mapped[uuid.UUID | None]
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str | None] = mapped_column(Text)
    action: Mapped[str] = mapped_column(String(ACTION_LENGTH))
    resource_type: Mapped[str] = mapped_column(String(RESOURCE_TYPE_LENGTH))
    resource_id: Mapped[str | None] = mapped_column(Text)
    result: Mapped[str] = mapped_column(String(16))
    ip: Mapped[str | None] = mapped_column(Text)
    user_agent: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    hash: Mapped[str] = mapped_column(String(HASH_LENGTH))


class AuditHead(Base):
    """The last link of a chain, locked by every append: the point writers serialise on.

    `archived_seq` and `archived_hash` are where the chain's stored entries begin after
    retention archived (and dropped) the older ones: verification starts from there, and
    a signed checkpoint at exactly that link vouches for it. Both are 0 and the genesis
    hash while nothing was archived.
    """

    __tablename__ = "audit_heads"

    chain_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    # The last entry's time (None before the first): the floor for the next entry's time.
    time: Mapped[datetime | None]
    # The hash before the last move (None before it): the last entry's `prev_hash`, which
    # the UPDATE that appends an entry on PostgreSQL hands to the entry's INSERT.
    prev_hash: Mapped[str | None] = mapped_column(String(HASH_LENGTH))
    archived_seq: Mapped[int] = mapped_column(BigInteger)
    archived_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))


class AuditCheckpoint(IdMixin, Base):
    """A chain head at one moment, signed with the platform's Ed25519 key.

    Verification compares the chain with the latest one, so entries removed from the
    tail (and the head moved back to match) are still found missing.
    """

    __tablename__ = "audit_checkpoints"
    __table_args__ = (
        Index("ix_audit_checkpoints_chain_id_seq", "chain_id", "seq"),
        Index("ix_audit_checkpoints_chain_id_id", "chain_id", "id"),
    )

    chain_id: Mapped[uuid.UUID]
    tenant_id: Mapped[uuid.UUID | None]
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    time: Mapped[datetime] = mapped_column(default=utcnow)
    key_id: Mapped[str] = mapped_column(String(32))
    # base64 of the 64-byte signature.
    signature: Mapped[str] = mapped_column(String(100))
