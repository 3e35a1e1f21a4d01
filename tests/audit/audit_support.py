"""Chains for the audit tests: each test writes its own (a random tenant id), then edits it."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update

from spawnpoint.audit.chain import AuditDraft
from spawnpoint.audit.keys import SigningKey
from spawnpoint.audit.repository import AuditLog
from spawnpoint.audit.service import sign_checkpoint
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.models import AuditEntry, AuditHead


def draft(tenant_id: uuid.UUID | None, n: int = 0, **values: Any) -> AuditDraft:
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "actor_type": "user",
        "actor_id": str(uuid.UUID(int=n)),
        "action": "workspace.spawn",
        "resource_type": "workspace",
        "resource_id": f"ws-{n}",
        "result": "success",
        "details": {"n": n, "name": "ünïcode ✓"},
        **values,
    }
    return AuditDraft(**fields)


async def append(database: Database, drafts: list[AuditDraft]) -> None:
    async with database.transaction(write=True) as session:
        await AuditLog(session).append(drafts)


async def chain(database: Database, n: int, **values: Any) -> uuid.UUID:
    """A new tenant chain of `n` entries, appended a few per transaction."""
    tenant_id = uuid.uuid4()
    for start in range(0, n, 3):
        await append(
            database, [draft(tenant_id, i, **values) for i in range(start, min(n, start + 3))]
        )
    return tenant_id


def key(settings: Settings) -> SigningKey:
    return SigningKey.from_settings(settings)


async def checkpoint(database: Database, settings: Settings, tenant_id: uuid.UUID) -> int:
    """Sign the chain's head now; returns its seq."""
    async with database.transaction(write=True) as session:
        head = await session.get(AuditHead, tenant_id)
        assert head is not None
        await AuditLog(session).add_checkpoint(
            sign_checkpoint(
                key(settings),
                chain_id=tenant_id,
                seq=head.seq,
                hash=head.hash,
                now=head.time or datetime.now().astimezone(),
            )
        )
        return head.seq


async def entries(database: Database, tenant_id: uuid.UUID) -> list[AuditEntry]:
    async with database.transaction(write=False) as session:
        rows = await session.execute(
            select(AuditEntry).where(AuditEntry.chain_id == tenant_id).order_by(AuditEntry.seq)
        )
        return list(rows.scalars())


async def edit(database: Database, tenant_id: uuid.UUID, at: int, **values: Any) -> None:
    """Change the stored entry `at` of a chain, as someone with database access could."""
    async with database.transaction(write=True) as session:
        await session.execute(
            update(AuditEntry)
            .where(AuditEntry.chain_id == tenant_id, AuditEntry.seq == at)
            .values(**values)
        )


async def remove(database: Database, tenant_id: uuid.UUID, *seqs: int) -> None:
    async with database.transaction(write=True) as session:
        await session.execute(
            delete(AuditEntry).where(AuditEntry.chain_id == tenant_id, AuditEntry.seq.in_(seqs))
        )


async def move_head(database: Database, tenant_id: uuid.UUID, *, seq: int, hash: str) -> None:
    async with database.transaction(write=True) as session:
        await session.execute(
            update(AuditHead).where(AuditHead.chain_id == tenant_id).values(seq=seq, hash=hash)
        )
