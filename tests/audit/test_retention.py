"""Partitions ahead, and months past retention archived to files then dropped, verify intact."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from audit_support import append, draft, entries, key
from test_audit_cli import check_export

from spawnpoint.audit.archive import archive_expired, create_partitions_ahead
from spawnpoint.audit.repository import AuditLog, month_start, partition_name
from spawnpoint.audit.service import verify_chain
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.models import AuditHead


async def test_partitions_are_kept_ahead(backend: str, database: Database) -> None:
    now = datetime.now(UTC)
    async with database.transaction(write=True) as session:
        created = await create_partitions_ahead(session, now=now, ahead=5)
        existing = {p.name for p in await AuditLog(session).partitions()}
    if backend == "sqlite":
        assert (created, existing) == ([], set())
        return
    expected = [partition_name(month_start(now, shift)) for shift in range(6)]
    assert created == expected
    assert set(expected) <= existing


async def test_a_month_past_retention_is_archived_dropped_and_verify_still_passes(
    backend: str, database: Database, backend_settings: Settings, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    old = month_start(now, -4) + timedelta(days=3)
    tenant_id = uuid.uuid4()
    async with database.transaction(write=True) as session:
        await create_partitions_ahead(session, now=old, ahead=0)
    await append(database, [draft(tenant_id, n, time=old + timedelta(hours=n)) for n in range(3)])
    await append(database, [draft(tenant_id, n) for n in range(3, 5)])

    async with database.transaction(write=True) as session:
        report = await archive_expired(
            session, key(backend_settings), data_dir=tmp_path, retention_days=60, now=now
        )
    assert f"{old:%Y-%m}" in report.months
    archive = tmp_path / "audit-archive" / str(tenant_id) / f"{old:%Y-%m}.jsonl"
    assert archive in report.files
    records = [json.loads(line) for line in archive.read_text().splitlines()]
    assert [(r["type"], r["seq"]) for r in records] == [
        ("entry", 1),
        ("entry", 2),
        ("entry", 3),
        ("checkpoint", 3),
    ]
    assert check_export(tmp_path, archive, backend_settings).returncode == 0

    kept = await entries(database, tenant_id)
    assert [row.seq for row in kept] == [4, 5]
    assert kept[0].prev_hash == records[2]["hash"]
    async with database.transaction(write=False) as session:
        head = await session.get(AuditHead, tenant_id)
        partitions = {p.name for p in await AuditLog(session).partitions()}
    assert head is not None
    assert (head.archived_seq, head.archived_hash) == (3, records[2]["hash"])
    if backend == "postgres":
        assert partition_name(month_start(old)) not in partitions
        assert partition_name(month_start(now)) in partitions
    result = await verify_chain(database, key(backend_settings), tenant_id)
    assert (result.valid, result.checked) == (True, 2)

    # The archived boundary is vouched for by its checkpoint: forge it and verify fails.
    async with database.transaction(write=True) as session:
        forged = await session.get(AuditHead, tenant_id)
        assert forged is not None
        forged.archived_hash = "f" * 64
    result = await verify_chain(database, key(backend_settings), tenant_id)
    assert (result.valid, result.first_invalid_seq) == (False, 4)
