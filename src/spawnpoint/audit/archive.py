"""Retention: months past AUDIT_RETENTION_DAYS leave the database for JSONL files.

A month is past retention once it ended AUDIT_RETENTION_DAYS ago or earlier. For each
chain with entries in it, its entries go to `DATA_DIR/audit-archive/<chain>/<YYYY-MM>.jsonl`
(`<chain>` is the tenant id, or `platform`), followed by a signed checkpoint of the
month's last entry; then the head records that the chain now begins after that entry,
and the month leaves the database: its partition is dropped (PostgreSQL), or its rows
deleted (SQLite). Verification then starts from the archived checkpoint.

Files are written (and synced) before the rows go, in the same transaction that drops
them; a run that fails after writing leaves the rows, and the next run writes the same
files again. The lines have the shape of `spawnpoint audit export`, so the README's
stand-alone check reads an archive file too.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.audit.chain import ENTRY_COLUMNS_WITH_HASHES, json_time
from spawnpoint.audit.keys import SigningKey, sign_checkpoint
from spawnpoint.audit.repository import AuditLog, month_start
from spawnpoint.models import AuditCheckpoint
from spawnpoint.models.audit import PLATFORM_CHAIN

ARCHIVE_DIR = "audit-archive"
PARTITIONS_AHEAD = 3


def entry_record(row: Sequence[Any]) -> dict[str, Any]:
    """An entry as an export line, from a row of `AuditLog.stream` (canonical form)."""
    record: dict[str, Any] = {"type": "entry"}
    record.update(zip(ENTRY_COLUMNS_WITH_HASHES, row, strict=True))
    record["details"] = orjson.loads(record["details"])
    return record


def checkpoint_record(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    return {
        "type": "checkpoint",
        "tenant_id": None if checkpoint.tenant_id is None else str(checkpoint.tenant_id),
        "seq": checkpoint.seq,
        "hash": checkpoint.hash,
        "time": json_time(checkpoint.time),
        "key_id": checkpoint.key_id,
        "signature": checkpoint.signature,
    }


def record_line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False) + "\n"


def chain_directory(chain_id: uuid.UUID) -> str:
    return "platform" if chain_id == PLATFORM_CHAIN else str(chain_id)


def retention_cutoff(now: datetime, retention_days: int) -> datetime:
    """Months that ended at or before this instant are past retention; it is a month start."""
    return month_start(now - timedelta(days=retention_days))


async def create_partitions_ahead(
    session: AsyncSession, *, now: datetime, ahead: int = PARTITIONS_AHEAD
) -> list[str]:
    """Make sure this month's partition and `ahead` more exist (PostgreSQL; no-op elsewhere).

    Returns:
        The partitions that now exist for those months.
    """
    log = AuditLog(session)
    if not log.is_postgres:
        return []
    return [await log.create_partition(month_start(now, shift)) for shift in range(ahead + 1)]


@dataclass
class ArchiveReport:
    months: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    entries: int = 0


async def _write_month(
    log: AuditLog,
    key: SigningKey,
    *,
    start: datetime,
    end: datetime,
    directory: Path,
    now: datetime,
    report: ArchiveReport,
) -> None:
    """Archive every chain's entries of [start, end) to files, and mark the heads."""
    ends = await log.chain_ends(start, end)
    for chain_id, last_seq in ends:
        last = await log.entry(chain_id, last_seq)
        assert last is not None
        checkpoint = await log.checkpoint_at(chain_id, last_seq)
        if checkpoint is None or checkpoint.hash != last.hash:
            checkpoint = await log.add_checkpoint(
                sign_checkpoint(key, chain_id=chain_id, seq=last_seq, hash=last.hash, now=now)
            )
        path = directory / chain_directory(chain_id) / f"{start:%Y-%m}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".jsonl.partial")
        with partial.open("w", encoding="utf-8") as file:
            async for batch in log.stream(chain_id, since=start, until=end):
                for row in batch:
                    file.write(record_line(entry_record(row)))
                    report.entries += 1
            file.write(record_line(checkpoint_record(checkpoint)))
            file.flush()
            os.fsync(file.fileno())
        partial.replace(path)
        report.files.append(path)
        await log.mark_archived(chain_id, seq=last_seq, hash=last.hash)
    if ends:
        report.months.append(f"{start:%Y-%m}")


async def archive_expired(
    session: AsyncSession,
    key: SigningKey,
    *,
    data_dir: Path,
    retention_days: int,
    now: datetime,
) -> ArchiveReport:
    """Archive, then drop, every month past retention, in the caller's write transaction."""
    log = AuditLog(session)
    cutoff = retention_cutoff(now, retention_days)
    directory = data_dir / ARCHIVE_DIR
    report = ArchiveReport()
    if log.is_postgres:
        for partition in await log.partitions():
            if partition.end > cutoff:
                continue
            await _write_month(
                log,
                key,
                start=partition.start,
                end=partition.end,
                directory=directory,
                now=now,
                report=report,
            )
            await log.drop_partition(partition.name)
        return report
    oldest = await log.oldest_time()
    if oldest is None:
        return report
    start = month_start(oldest)
    while start < cutoff:
        end = month_start(start, 1)
        await _write_month(
            log, key, start=start, end=end, directory=directory, now=now, report=report
        )
        await log.delete_between(start, end)
        start = end
    return report
