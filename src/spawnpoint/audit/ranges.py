"""Verifying one contiguous range of a chain, on the database driver alone.

`verify_chain` splits a long chain into ranges of `seq` and checks each in a worker process
of its own, `python -m spawnpoint.audit.ranges` (or, for a short chain, in a thread). This
module is all such a process imports: the standard library, psycopg and the light `chain`
module, no ORM or web framework, so it starts in a fraction of a second instead of the two
an import of the application takes. (multiprocessing's "spawn" would re-import the parent's
main module in every worker, which for `spawnpoint audit verify` is the whole CLI.)
The statement it runs comes ready from the repository (`AuditLog.range_query`); here it
is only executed and its rows fed to a `ChainVerifier`.
"""

from __future__ import annotations

import pickle
import sqlite3
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from spawnpoint.audit.chain import ChainVerifier, Link, VerifyResult, tenant_of

BATCH = 5_000


@dataclass(frozen=True)
class RangeSource:
    """Where a range's rows come from: the statement and the database it runs on.

    With `row_sql` (SQLite), the rows are the database's canonical documents and
    `row_sql` reads one entry's fields by `seq` (see `AuditLog.range_query`).
    """

    backend: str  # "postgresql" or "sqlite"
    address: str  # a libpq connection string, or the SQLite file's path
    sql: str
    params: dict[str, Any]
    row_sql: str | None = None
    row_params: dict[str, Any] | None = None


@dataclass(frozen=True)
class ChainRange:
    """One contiguous run of a chain to verify: after `start` up to `last_seq` (None: the
    end); `before` is the hash preceding `start`'s (to tell an insertion from a break)."""

    chain_id: uuid.UUID
    start: Link
    before: str | None
    last_seq: int | None
    checkpoint: Link | None
    head: Link | None


def verify_range(source: RangeSource, plan: ChainRange) -> VerifyResult:
    """Check `plan`'s entries as `source` reads them; blocking (run it off the event loop)."""
    verifier = ChainVerifier(
        tenant_id=tenant_of(plan.chain_id),
        start=plan.start,
        checkpoint=plan.checkpoint,
        head=plan.head,
    )
    verifier.prev_prev = plan.before
    if source.backend == "postgresql":
        for batch in _postgres_batches(source):
            if not verifier.feed(batch):
                break
    else:
        _verify_sqlite(source, verifier)
    if plan.last_seq is None or verifier.failure is not None:
        return verifier.finish()
    if verifier.expected - 1 < plan.last_seq:
        missing = verifier.expected
        return VerifyResult(
            valid=False,
            checked=verifier.checked,
            first_invalid_seq=missing,
            reason=f"entry {missing} is missing",
        )
    return VerifyResult(valid=True, checked=verifier.checked, first_invalid_seq=None, reason=None)


def _postgres_batches(source: RangeSource) -> Iterator[Sequence[Sequence[Any]]]:
    with psycopg.connect(source.address) as connection:
        connection.read_only = True
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        # A server-side cursor: the range streams in batches, in bounded memory.
        with connection.cursor(name="audit_range") as cursor:
            cursor.itersize = BATCH
            cursor.execute(source.sql, source.params)
            while rows := cursor.fetchmany(BATCH):
                yield rows


def _verify_sqlite(source: RangeSource, verifier: ChainVerifier) -> None:
    # Read-only; one SELECT reads one snapshot (WAL lets writers go on meanwhile).
    uri = Path(source.address).resolve().as_uri() + "?mode=ro"
    connection = sqlite3.connect(uri, uri=True)
    try:
        if source.row_sql is None:
            cursor = connection.execute(source.sql, source.params)
            while rows := cursor.fetchmany(BATCH):
                if not verifier.feed(rows):
                    return
            return
        row_sql, row_params = source.row_sql, source.row_params or {}

        def entry(seq: int) -> Sequence[Any] | None:
            found: Sequence[Any] | None = connection.execute(
                row_sql, {**row_params, "entry_seq": seq}
            ).fetchone()
            return found

        cursor = connection.execute(source.sql, source.params)
        while rows := cursor.fetchmany(BATCH):
            if not verifier.feed_documents(rows, entry):
                return
    finally:
        connection.close()


def main() -> None:
    """Verify the `(RangeSource, ChainRange)` pickled on stdin; the result pickled to stdout.

    Only `verify_chain` starts this, with what it pickled itself.
    """
    source, plan = pickle.load(sys.stdin.buffer)  # noqa: S301 -- from our own parent
    pickle.dump(verify_range(source, plan), sys.stdout.buffer)


if __name__ == "__main__":
    main()
