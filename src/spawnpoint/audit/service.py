"""Reading, verifying, signing and exporting audit chains.

Which chain a caller reads is decided here, once: their own tenant's, or for operators
the tenant they name (the nil UUID names the platform chain). Verification and export
read a whole chain in one snapshot, batch by batch, so memory stays flat however long it is.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.audit.archive import (
    archive_expired,
    checkpoint_record,
    create_partitions_ahead,
    entry_record,
    record_line,
)
from spawnpoint.audit.chain import (
    GENESIS_HASH,
    ChainVerifier,
    Link,
    VerifyResult,
    tenant_of,
)
from spawnpoint.audit.keys import SigningKey, checkpoint_problem, sign_checkpoint
from spawnpoint.audit.repository import AuditFilters, AuditLog
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.scheduler import PeriodicTask
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.errors import field_error
from spawnpoint.kit.pagination import PageParams
from spawnpoint.models import AuditCheckpoint, AuditEntry
from spawnpoint.models.audit import PLATFORM_CHAIN
from spawnpoint.scope import TenantScope

DAILY = timedelta(days=1)


def readable_chain(scope: TenantScope, tenant_id: uuid.UUID | None) -> uuid.UUID:
    """The chain a caller reads: their tenant's, or (operators) the one they name.

    Raises:
        Unprocessable: a caller who is no operator named another tenant. The answer is
            the same whether or not that tenant exists.
    """
    if tenant_id is None or tenant_id == scope.tenant_id:
        return scope.tenant_id
    if not scope.all_tenants:
        raise field_error(
            "#/query/tenant_id", "Only operators can read another tenant's audit log."
        )
    return tenant_id


async def write_checkpoints(
    session: AsyncSession, key: SigningKey, *, now: datetime | None = None
) -> list[AuditCheckpoint]:
    """Sign a checkpoint of every chain head that moved since its last one.

    Runs in the caller's write transaction (the scheduler's, or the CLI's). A head read
    here is committed, so the entry it names exists.
    """
    log = AuditLog(session)
    now = now or utcnow()
    written = []
    for head in await log.unsigned_heads():
        checkpoint = sign_checkpoint(
            key, chain_id=head.chain_id, seq=head.seq, hash=head.hash, now=now
        )
        written.append(await log.add_checkpoint(checkpoint))
    return written


async def verify_chain(database: Database, key: SigningKey, chain_id: uuid.UUID) -> VerifyResult:
    """Recompute `chain_id` from its first stored entry to its head, in one snapshot."""
    async with database.transaction(write=False) as session:
        log = AuditLog(session)
        await log.snapshot()
        head = await log.head(chain_id)
        checkpoint = await log.latest_checkpoint(chain_id)
        start = Link(0, GENESIS_HASH)
        if head is not None and head.archived_seq > 0:
            boundary = await log.checkpoint_at(chain_id, head.archived_seq)
            if (
                boundary is None
                or boundary.hash != head.archived_hash
                or checkpoint_problem(key, boundary) is not None
            ):
                return VerifyResult(
                    valid=False,
                    checked=0,
                    first_invalid_seq=head.archived_seq + 1,
                    reason=f"no valid signed checkpoint vouches for the archived entries up to "
                    f"{head.archived_seq}, where the stored chain begins",
                )
            start = Link(head.archived_seq, head.archived_hash)
        if checkpoint is not None:
            problem = checkpoint_problem(key, checkpoint)
            if problem is not None:
                return VerifyResult(
                    valid=False, checked=0, first_invalid_seq=checkpoint.seq, reason=problem
                )
        verifier = ChainVerifier(
            tenant_id=tenant_of(chain_id),
            start=start,
            checkpoint=None if checkpoint is None else Link(checkpoint.seq, checkpoint.hash),
            # A chain without a head never had an entry appended: any entry is forged.
            head=Link(0, GENESIS_HASH) if head is None else Link(head.seq, head.hash),
        )
        async for batch in log.stream(chain_id):
            if not verifier.feed(batch):
                break
        return verifier.finish()


async def chain_ids(database: Database) -> list[uuid.UUID]:
    """Every chain that has a head, the platform chain first."""
    async with database.transaction(write=False) as session:
        heads = await AuditLog(session).heads()
    return sorted((head.chain_id for head in heads), key=lambda c: (c != PLATFORM_CHAIN, str(c)))


@dataclass(frozen=True)
class Export:
    entries: int
    checkpoint: AuditCheckpoint | None


async def export_chain(
    database: Database,
    key: SigningKey,
    chain_id: uuid.UUID,
    *,
    write: Callable[[str], object],
    since: datetime | None = None,
    until: datetime | None = None,
) -> Export:
    """Write a chain's entries from `since` as JSON lines, then the checkpoint covering them.

    The checkpoint is the first one at or after the last entry before `until` (the head,
    without `until`); one is signed now when none exists yet. Entries run up to exactly
    that checkpoint, so its signature covers every line: those after `until` but before
    the checkpoint are included.
    """
    async with database.transaction(write=True) as session:
        log = AuditLog(session)
        head = await log.head(chain_id)
        if head is None or head.seq == 0:
            return Export(entries=0, checkpoint=None)
        last = head.seq if until is None else await log.last_seq_before(chain_id, until)
        if last is None:
            return Export(entries=0, checkpoint=None)
        checkpoint = await log.first_checkpoint_from(chain_id, last)
        if checkpoint is None:
            checkpoint = await log.add_checkpoint(
                sign_checkpoint(key, chain_id=chain_id, seq=head.seq, hash=head.hash, now=utcnow())
            )
    async with database.transaction(write=False) as session:
        log = AuditLog(session)
        await log.snapshot()
        first = 1 if since is None else await log.first_seq_since(chain_id, since)
        if first is None or first > checkpoint.seq:
            return Export(entries=0, checkpoint=None)
        count = 0
        async for batch in log.stream(chain_id, first_seq=first, last_seq=checkpoint.seq):
            for row in batch:
                write(record_line(entry_record(row)))
                count += 1
        write(record_line(checkpoint_record(checkpoint)))
    return Export(entries=count, checkpoint=checkpoint)


class AuditService:
    """The audit API's reads, for one caller's scope."""

    def __init__(self, log: AuditLog, *, scope: TenantScope) -> None:
        self.log = log
        self.scope = scope

    async def list_page(
        self, *, tenant_id: uuid.UUID | None, filters: AuditFilters, params: PageParams
    ) -> tuple[list[AuditEntry], str | None]:
        if (
            filters.since is not None
            and filters.until is not None
            and filters.since > filters.until
        ):
            raise field_error("#/query/since", "`since` is later than `until`.")
        chain_id = readable_chain(self.scope, tenant_id)
        return await self.log.page(chain_id, filters, params)

    async def list_checkpoints(
        self, *, tenant_id: uuid.UUID | None, params: PageParams
    ) -> tuple[list[AuditCheckpoint], str | None]:
        return await self.log.page_checkpoints(readable_chain(self.scope, tenant_id), params)


def as_utc(value: datetime | None, pointer: str) -> datetime | None:
    """`value` in UTC; a 422 when that falls outside the calendar (year 1 at +14:00)."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise field_error(pointer, "The time is outside the years 1 to 9999 in UTC.") from exc


def audit_tasks(settings: Settings) -> list[PeriodicTask]:
    """The scheduler's audit tasks: checkpoints every AUDIT_CHECKPOINT_INTERVAL_SECONDS;
    daily, partitions three months ahead and retention.

    Raises:
        SigningKeyError: no signing key is configured (production) or it is unreadable.
    """
    key = SigningKey.from_settings(settings)

    async def checkpoints(session: AsyncSession, now: datetime) -> None:
        await write_checkpoints(session, key, now=now)

    async def partitions(session: AsyncSession, now: datetime) -> None:
        await create_partitions_ahead(session, now=now)

    async def retention(session: AsyncSession, now: datetime) -> None:
        await archive_expired(
            session,
            key,
            data_dir=settings.data_dir,
            retention_days=settings.audit_retention_days,
            now=now,
        )

    return [
        PeriodicTask(
            "audit.checkpoints",
            timedelta(seconds=settings.audit_checkpoint_interval_seconds),
            checkpoints,
        ),
        PeriodicTask("audit.partitions", DAILY, partitions),
        PeriodicTask("audit.retention", DAILY, retention),
    ]
