"""Reading, verifying, signing and exporting audit chains.

Which chain a caller reads is decided here, once: their own tenant's, or for operators
the tenant they name (the nil UUID names the platform chain). Verification and export
read a whole chain in one snapshot, batch by batch, so memory stays flat however long it is.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import make_url
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
    Link,
    VerifyResult,
)
from spawnpoint.audit.keys import SigningKey, checkpoint_problem, sign_checkpoint
from spawnpoint.audit.ranges import ChainRange, RangeSource, verify_range
from spawnpoint.audit.repository import AuditFilters, AuditLog, RangeQuery
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


# Chains this long are verified in several processes, one contiguous range of `seq` each.
PARALLEL_MIN_ENTRIES = 200_000


async def verify_chain(
    database: Database,
    key: SigningKey,
    chain_id: uuid.UUID,
    *,
    ranges: int | None = None,
    processes: bool | None = None,
) -> VerifyResult:
    """Recompute `chain_id` from its first stored entry to its head.

    An entry's hash covers its predecessor's hash, which it stores, so a chain can be
    checked in contiguous ranges of `seq` independently: each range is checked from the
    stored hash of the entry before it, which the range before it proves genuine. A long
    chain (`PARALLEL_MIN_ENTRIES`) is split into one range per CPU, each verified in its own
    process; the first break, in `seq` order, is the one reported, exactly as a single pass
    would report it. `ranges` (and `processes`) override `split_for`'s choice.
    """
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
        # A chain without a head never had an entry appended: any entry is forged.
        last = Link(0, GENESIS_HASH) if head is None else Link(head.seq, head.hash)
        signed = None if checkpoint is None else Link(checkpoint.seq, checkpoint.hash)
        span = last.seq - start.seq
        parts, use_processes = split_for(span) if ranges is None else (ranges, bool(processes))
        parts = max(1, min(parts, span))
        bounds = [start.seq + span * i // parts for i in range(parts + 1)]
        plans: list[tuple[RangeSource, ChainRange]] = []
        for i in range(parts):
            first_link, before = start, None
            if i > 0:
                # The stored link where the range starts; the range before it vouches for it
                # (a missing or altered entry there is that range's first break).
                entry = await log.entry(chain_id, bounds[i])
                first_link = Link(bounds[i], "" if entry is None else entry.hash)
                before = None if entry is None else entry.prev_hash
            last_seq = None if i == parts - 1 else bounds[i + 1]
            query = log.range_query(chain_id, first_seq=first_link.seq + 1, last_seq=last_seq)
            plan = ChainRange(
                chain_id=chain_id,
                start=first_link,
                before=before,
                last_seq=last_seq,
                checkpoint=signed,
                head=last if i == parts - 1 else None,
            )
            plans.append((_source(database, query), plan))
    if len(plans) == 1 or not use_processes:
        results = [await asyncio.to_thread(verify_range, *plan) for plan in plans]
    else:
        results = await _in_processes(plans)
    checked = 0
    for result in results:
        if not result.valid:
            return VerifyResult(
                valid=False,
                checked=checked + result.checked,
                first_invalid_seq=result.first_invalid_seq,
                reason=result.reason,
            )
        checked += result.checked
    return VerifyResult(valid=True, checked=checked, first_invalid_seq=None, reason=None)


def split_for(span: int) -> tuple[int, bool]:
    """How many ranges a chain of `span` entries is verified in, and whether in processes."""
    if span >= PARALLEL_MIN_ENTRIES:
        return os.cpu_count() or 1, True
    return 1, False


def _source(database: Database, query: RangeQuery) -> RangeSource:
    """Where a worker reads a range from: the same database, through its driver alone."""
    url = make_url(database.url)
    if database.is_sqlite:
        path = str(Path(url.database or "").resolve())
        return RangeSource("sqlite", path, query.sql, query.params, query.row_sql, query.row_params)
    address = url.set(drivername="postgresql").render_as_string(hide_password=False)
    return RangeSource("postgresql", address, query.sql, query.params)


async def _in_processes(plans: list[tuple[RangeSource, ChainRange]]) -> list[VerifyResult]:
    return list(await asyncio.gather(*(_in_process(plan) for plan in plans)))


async def _in_process(plan: tuple[RangeSource, ChainRange]) -> VerifyResult:
    """One range, verified by `python -m spawnpoint.audit.ranges` (see that module)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "spawnpoint.audit.ranges",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(pickle.dumps(plan))
    if process.returncode != 0:
        raise RuntimeError(f"verifying a range of the chain failed: {err.decode()[-2000:]}")
    result = pickle.loads(out)  # noqa: S301 -- our own child's answer
    if not isinstance(result, VerifyResult):
        raise TypeError(f"not a verification result: {type(result).__name__}")
    return result


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
