"""Appending and verifying chains on both databases, and every kind of tampering found."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import uuid
from datetime import timedelta

import pytest
from audit_support import append, chain, checkpoint, draft, edit, entries, key, move_head, remove
from sqlalchemy import update

from spawnpoint.audit import service
from spawnpoint.audit.chain import GENESIS_HASH, entry_hash
from spawnpoint.audit.repository import AuditLog
from spawnpoint.audit.service import verify_chain, write_checkpoints
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.models import AuditCheckpoint, AuditEntry, AuditHead


@pytest.fixture(autouse=True, params=[1, 3], ids=["one-pass", "three-ranges"])
def ranges(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Every check also in three ranges (in this process), as long chains are verified:
    a break must be reported at the same `seq` whichever range finds it."""
    parts: int = request.param
    monkeypatch.setattr(service, "split_for", lambda span: (parts, False))
    return parts


async def verify(database: Database, settings: Settings, tenant_id: uuid.UUID) -> tuple:
    result = await verify_chain(database, key(settings), tenant_id)
    return result.valid, result.first_invalid_seq


async def test_entries_are_numbered_and_linked_per_chain(
    database: Database, backend_settings: Settings
) -> None:
    tenant_id = await chain(database, 5)
    other = await chain(database, 2)
    rows = await entries(database, tenant_id)
    assert [row.seq for row in rows] == [1, 2, 3, 4, 5]
    assert rows[0].prev_hash == GENESIS_HASH
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
    assert rows[2].details == {"n": 2, "name": "ünïcode ✓"}
    assert [row.seq for row in await entries(database, other)] == [1, 2]
    result = await verify_chain(database, key(backend_settings), tenant_id)
    assert (result.valid, result.checked, result.reason) == (True, 5, None)


async def test_an_entry_never_goes_back_in_time(database: Database) -> None:
    tenant_id = uuid.uuid4()
    first = draft(tenant_id, 1)
    earlier = draft(tenant_id, 2, time=first.time - timedelta(seconds=5))
    await append(database, [first])
    await append(database, [earlier])
    rows = await entries(database, tenant_id)
    assert rows[1].time == rows[0].time


async def test_32_concurrent_writers_keep_one_gapless_chain(
    database: Database, backend_settings: Settings
) -> None:
    tenant_id, neighbour = uuid.uuid4(), uuid.uuid4()

    async def writer(n: int) -> None:
        # Half the writers also append to a second chain, in either order: heads are
        # locked in one fixed order, so none of them deadlocks.
        drafts = [draft(tenant_id, n)]
        if n % 2:
            drafts = (
                [draft(neighbour, n), *drafts] if n % 4 == 1 else [*drafts, draft(neighbour, n)]
            )
        await append(database, drafts)

    await asyncio.gather(*(writer(n) for n in range(32)))
    rows = await entries(database, tenant_id)
    assert [row.seq for row in rows] == list(range(1, 33))
    assert sorted(int(row.resource_id.removeprefix("ws-")) for row in rows) == list(range(32))
    assert [row.seq for row in await entries(database, neighbour)] == list(range(1, 17))
    assert await verify(database, backend_settings, tenant_id) == (True, None)
    assert await verify(database, backend_settings, neighbour) == (True, None)


async def test_an_edited_entry_is_found_at_its_seq(
    database: Database, backend_settings: Settings
) -> None:
    tenant_id = await chain(database, 6)
    await edit(database, tenant_id, 4, details={"n": 4, "name": "forged"})
    result = await verify_chain(database, key(backend_settings), tenant_id)
    assert (result.valid, result.first_invalid_seq, result.checked) == (False, 4, 3)
    assert "altered" in (result.reason or "")


async def test_an_edited_entry_with_a_recomputed_hash_breaks_the_next_link(
    database: Database, backend_settings: Settings
) -> None:
    tenant_id = await chain(database, 6)
    rows = await entries(database, tenant_id)
    fields = {c.key: getattr(rows[2], c.key) for c in AuditEntry.__table__.c}
    fields["action"] = "workspace.stop"
    await edit(
        database, tenant_id, 3, action="workspace.stop", hash=entry_hash(rows[2].prev_hash, fields)
    )
    assert await verify(database, backend_settings, tenant_id) == (False, 4)


async def test_a_deleted_entry_is_found_at_its_seq(
    database: Database, backend_settings: Settings
) -> None:
    tenant_id = await chain(database, 6)
    await remove(database, tenant_id, 3)
    result = await verify_chain(database, key(backend_settings), tenant_id)
    assert (result.valid, result.first_invalid_seq) == (False, 3)
    assert "missing" in (result.reason or "")


async def test_reordered_entries_are_found_where_the_order_breaks(
    database: Database, backend_settings: Settings
) -> None:
    tenant_id = await chain(database, 6)
    await edit(database, tenant_id, 2, seq=-2)
    await edit(database, tenant_id, 3, seq=2)
    await edit(database, tenant_id, -2, seq=3)
    assert await verify(database, backend_settings, tenant_id) == (False, 2)


async def test_an_inserted_entry_is_found_at_its_seq(
    database: Database, backend_settings: Settings
) -> None:
    """Even one forged with the right hash, its successors renumbered and the head moved."""
    tenant_id = await chain(database, 5)
    rows = await entries(database, tenant_id)
    for seq in range(5, 2, -1):
        await edit(database, tenant_id, seq, seq=seq + 1)
    forged = {c.key: getattr(rows[2], c.key) for c in AuditEntry.__table__.c}
    forged.update(seq=3, action="user.delete", prev_hash=rows[1].hash)
    forged["hash"] = entry_hash(rows[1].hash, forged)
    async with database.transaction(write=True) as session:
        session.add(AuditEntry(**forged))
    await move_head(database, tenant_id, seq=6, hash=rows[4].hash)
    result = await verify_chain(database, key(backend_settings), tenant_id)
    assert (result.valid, result.first_invalid_seq) == (False, 3)
    assert "inserted" in (result.reason or "")


async def test_a_duplicated_seq_is_found(database: Database, backend_settings: Settings) -> None:
    tenant_id = await chain(database, 4)
    rows = await entries(database, tenant_id)
    copy = {c.key: getattr(rows[1], c.key) for c in AuditEntry.__table__.c}
    copy["time"] = copy["time"] + timedelta(microseconds=1)
    async with database.transaction(write=True) as session:
        session.add(AuditEntry(**copy))
    assert await verify(database, backend_settings, tenant_id) == (False, 2)


async def test_a_truncated_tail_is_found_against_the_signed_checkpoint(
    database: Database, backend_settings: Settings
) -> None:
    tenant_id = await chain(database, 6)
    assert await checkpoint(database, backend_settings, tenant_id) == 6
    rows = await entries(database, tenant_id)
    await remove(database, tenant_id, 5, 6)
    await move_head(database, tenant_id, seq=4, hash=rows[3].hash)
    result = await verify_chain(database, key(backend_settings), tenant_id)
    assert (result.valid, result.first_invalid_seq, result.checked) == (False, 5, 4)
    assert "checkpoint" in (result.reason or "")


async def test_a_tail_truncated_below_the_head_is_found(
    database: Database, backend_settings: Settings
) -> None:
    tenant_id = await chain(database, 4)
    await remove(database, tenant_id, 4)
    assert await verify(database, backend_settings, tenant_id) == (False, 4)


async def test_a_forged_checkpoint_signature_is_refused(
    database: Database, backend_settings: Settings
) -> None:
    tenant_id = await chain(database, 3)
    await checkpoint(database, backend_settings, tenant_id)
    async with database.transaction(write=True) as session:
        await session.execute(
            update(AuditCheckpoint)
            .where(AuditCheckpoint.chain_id == tenant_id)
            .values(signature=base64.b64encode(bytes(64)).decode())
        )
    result = await verify_chain(database, key(backend_settings), tenant_id)
    assert (result.valid, result.first_invalid_seq) == (False, 3)
    assert "signature" in (result.reason or "")


async def test_checkpoints_are_signed_for_heads_that_moved_only(
    database: Database, backend_settings: Settings
) -> None:
    tenant_id = await chain(database, 2)
    async with database.transaction(write=True) as session:
        first = {c.chain_id: c.seq for c in await write_checkpoints(session, key(backend_settings))}
    assert first[tenant_id] == 2
    async with database.transaction(write=True) as session:
        again = await write_checkpoints(session, key(backend_settings))
    assert tenant_id not in {c.chain_id for c in again}
    await append(database, [draft(tenant_id, 9)])
    async with database.transaction(write=True) as session:
        moved = {c.chain_id: c.seq for c in await write_checkpoints(session, key(backend_settings))}
    assert moved[tenant_id] == 3
    assert await verify(database, backend_settings, tenant_id) == (True, None)


async def test_the_platform_chain_has_no_tenant(
    database: Database, backend_settings: Settings
) -> None:
    await append(database, [draft(None, 1, action="plan.create", resource_type="plan")])
    async with database.transaction(write=False) as session:
        head = await session.get(AuditHead, uuid.UUID(int=0))
        assert head is not None
        latest = await AuditLog(session).entry(uuid.UUID(int=0), head.seq)
    assert latest is not None
    assert latest.tenant_id is None
    assert await verify(database, backend_settings, uuid.UUID(int=0)) == (True, None)


async def test_an_append_that_rolls_back_leaves_no_gap(
    database: Database, backend_settings: Settings
) -> None:
    tenant_id = await chain(database, 2)
    try:
        async with database.transaction(write=True) as session:
            await AuditLog(session).append([draft(tenant_id, 7)])
            raise RuntimeError("the change failed")
    except RuntimeError:
        pass
    await append(database, [draft(tenant_id, 8)])
    rows = await entries(database, tenant_id)
    assert [(row.seq, row.resource_id) for row in rows][-1] == (3, "ws-8")
    assert await verify(database, backend_settings, tenant_id) == (True, None)


async def test_any_text_hashes_alike_in_the_database_and_in_python(
    database: Database, backend_settings: Settings
) -> None:
    """Quotes, backslashes, control characters, non-ASCII and astral characters."""
    tricky = 'a"b\\c\n\t\x01\x1f\x7f é ✓ \u2028 😀 </script>'
    tenant_id = uuid.uuid4()
    await append(
        database,
        [
            draft(
                tenant_id,
                1,
                actor_id=tricky,
                reason=tricky,
                user_agent=tricky,
                ip=None,
                request_id=tricky,
                details={tricky: [tricky, 1.5, -0.0, 10**18, None, {"z": 1, "a": {}}]},
            )
        ],
    )
    result = await verify_chain(database, key(backend_settings), tenant_id)
    assert (result.valid, result.checked) == (True, 1)
    [row] = await entries(database, tenant_id)
    assert row.reason == tricky
    assert row.details == {tricky: [tricky, 1.5, -0.0, 10**18, None, {"z": 1, "a": {}}]}


async def test_a_chain_verified_in_processes_agrees_with_one_pass(
    database: Database, backend_settings: Settings
) -> None:
    tenant_id = await chain(database, 9)
    one = await verify_chain(database, key(backend_settings), tenant_id, ranges=1)
    split = await verify_chain(database, key(backend_settings), tenant_id, ranges=2, processes=True)
    assert one == split
    assert (split.valid, split.checked) == (True, 9)
    await edit(database, tenant_id, 7, details={"n": 7, "name": "forged"})
    broken = await verify_chain(
        database, key(backend_settings), tenant_id, ranges=2, processes=True
    )
    assert (broken.valid, broken.first_invalid_seq, broken.checked) == (False, 7, 6)


async def test_sqlite_writes_each_entrys_canonical_document_as_python_does(
    database: Database, backend: str
) -> None:
    """SQLite's range query builds the hashed document itself (json_quote): for the tricky
    text too it must hash to the stored hash, so verification takes no slow path."""
    tricky = 'a"b\\c\n\t\x01\x1f\x7f é ✓ \u2028 😀 </script>'
    tenant_id = uuid.uuid4()
    await append(
        database,
        [
            draft(tenant_id, 1),
            draft(tenant_id, 2, actor_id=tricky, reason=tricky, user_agent=tricky, ip=None),
            draft(None, 3),
        ],
    )
    for chain_id in (tenant_id, uuid.UUID(int=0)):
        async with database.transaction(write=False) as session:
            query = AuditLog(session).range_query(chain_id, first_seq=1, last_seq=None)
        if backend != "sqlite":  # PostgreSQL's ranges read the fields; Python writes them
            assert query.row_sql is None
            continue
        async with database.transaction(write=False) as session:
            connection = await session.connection()
            rows = (await connection.exec_driver_sql(query.sql, query.params)).all()
        assert rows
        for _seq, same_tenant, prev_hash, hash_, document in rows:
            assert same_tenant
            assert hashlib.sha256(f"{prev_hash}{document}".encode()).hexdigest() == hash_
