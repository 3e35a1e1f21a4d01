"""Audit chain verification speed over a 1,000,000-entry chain, on PostgreSQL and SQLite.

    .venv/bin/python bench/audit_verify.py [--entries 1000000] [--goal 200000]
        [--backends postgres,sqlite]

What it does, for each backend, in a few minutes:

1. creates a scratch database (PostgreSQL: on SPAWNPOINT_BENCH_PG_URL or the test server;
   SQLite: a temporary file) and migrates it;
2. builds one tenant chain of `--entries` entries in batches, each hashed exactly as
   `AuditLog.append` hashes it, and inserts them fast (PostgreSQL: COPY; SQLite: executemany
   of the precomputed rows), with the chain head and a signed checkpoint of it;
3. runs `spawnpoint.audit.service.verify_chain` on it in a fresh process and reports its
   rate and that process's peak RSS (its RSS right after start-up beside it: verification
   streams, so the difference stays flat however long the chain is);
4. as the baseline, in the same fresh process: the same streamed read of the chain with
   nothing recomputed, so the ratio is the cost of the hashing itself.

Prints a Markdown table and writes it to bench/results/audit_verify.md. Exit status: 0
when every backend meets --goal entries/s, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from sqlalchemy import create_engine, insert

from _common import markdown_table, raise_on_sigterm, scratch_database, write_result
from spawnpoint.audit.chain import GENESIS_HASH, encode_document, entry_hash
from spawnpoint.audit.keys import SigningKey
from spawnpoint.audit.repository import month_start, statements
from spawnpoint.audit.service import sign_checkpoint
from spawnpoint.config import Settings
from spawnpoint.models import AuditCheckpoint, AuditEntry, AuditHead

BATCH = 20_000
COLUMNS = tuple(c.key for c in AuditEntry.__table__.c)


def settings_for(url: str, data_dir: Path, key: str) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        database_url=url,
        data_dir=data_dir,
        audit_signing_key=key,
        environment="development",
    )


def entries(tenant_id: uuid.UUID, count: int, start: datetime) -> Iterator[list[dict[str, Any]]]:
    """The chain's rows, batch by batch, hashed as `AuditLog.write_steps` hashes them."""
    prev = GENESIS_HASH
    batch: list[dict[str, Any]] = []
    for seq in range(1, count + 1):
        fields: dict[str, Any] = {
            "seq": seq,
            "time": start + timedelta(microseconds=seq),
            "tenant_id": tenant_id,
            "actor_type": "user",
            "actor_id": str(uuid.UUID(int=seq % 50)),
            "action": "workspace.spawn" if seq % 3 else "template.update",
            "resource_type": "workspace",
            "resource_id": str(uuid.UUID(int=seq)),
            "result": "success",
            "ip": "10.0.0.7",
            "user_agent": "bench/1.0",
            "reason": "unspecified",
            "request_id": f"req-{seq}",
            "details": {"template_version": seq % 7, "name": f"ws-{seq}"},
        }
        hash_ = entry_hash(prev, fields)
        batch.append({**fields, "chain_id": tenant_id, "prev_hash": prev, "hash": hash_})
        prev = hash_
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def load(settings: Settings, tenant_id: uuid.UUID, count: int, key: SigningKey) -> float:
    """Insert the chain, its head and a checkpoint; returns the seconds it took."""
    started = time.perf_counter()
    # The chain's times start in this month, whose partition the migration created.
    first = month_start(datetime.now(UTC)) + timedelta(seconds=1)
    url = settings.sqlalchemy_url
    last: dict[str, Any] = {}
    if url.startswith("postgresql"):
        conninfo = "postgresql://" + url.partition("://")[2]
        with psycopg.connect(conninfo) as conn, conn.cursor() as cursor:
            for batch in entries(tenant_id, count, first):
                with cursor.copy(f"COPY audit_log ({', '.join(COLUMNS)}) FROM STDIN") as copy:
                    for row in batch:
                        # `details` as `append` stores it: its canonical JSON text.
                        copy.write_row(
                            [encode_document(row[c]) if c == "details" else row[c] for c in COLUMNS]
                        )
                last = batch[-1]
    else:
        engine = create_engine("sqlite:///" + url.partition(":///")[2])
        # `append`'s own INSERT, run as one executemany per batch.
        statement = statements(engine.dialect).insert_entry.clause
        with engine.begin() as connection:
            for batch in entries(tenant_id, count, first):
                connection.execute(
                    statement,
                    [
                        {
                            f"new_{c}": encode_document(row[c]) if c == "details" else row[c]
                            for c in COLUMNS
                        }
                        for row in batch
                    ],
                )
                last = batch[-1]
        engine.dispose()
    sync_url = url.replace("+aiosqlite", "")
    engine = create_engine(sync_url)
    with engine.begin() as connection:
        connection.execute(
            insert(AuditHead.__table__).values(
                chain_id=tenant_id,
                seq=last["seq"],
                hash=last["hash"],
                time=last["time"],
                archived_seq=0,
                archived_hash=GENESIS_HASH,
            )
        )
        checkpoint = sign_checkpoint(
            key, chain_id=tenant_id, seq=last["seq"], hash=last["hash"], now=datetime.now(UTC)
        )
        connection.execute(
            insert(AuditCheckpoint.__table__).values(
                id=uuid.uuid4(),
                **{
                    c: getattr(checkpoint, c)
                    for c in ("chain_id", "tenant_id", "seq", "hash", "time", "key_id", "signature")
                },
            )
        )
    engine.dispose()
    return time.perf_counter() - started


def peak_rss_mb() -> float:
    """The peak RSS of this process or of the largest process it waited for (a long chain is
    verified in worker processes, one range each)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


async def measure(settings: Settings, tenant_id: uuid.UUID) -> dict[str, float]:
    """In this (fresh) process: one streamed read, then one verification."""
    from spawnpoint.audit.repository import AuditLog
    from spawnpoint.audit.service import verify_chain
    from spawnpoint.db import Database

    start_rss = peak_rss_mb()
    database = Database(settings.sqlalchemy_url, pool_size=2)
    try:
        started = time.perf_counter()
        rows = 0
        async with database.transaction(write=False) as session:
            log = AuditLog(session)
            await log.snapshot()
            async for batch in log.stream(tenant_id):
                rows += len(batch)
        read_seconds = time.perf_counter() - started
        started = time.perf_counter()
        result = await verify_chain(database, SigningKey.from_settings(settings), tenant_id)
        verify_seconds = time.perf_counter() - started
    finally:
        await database.dispose()
    if not result.valid:
        raise RuntimeError(f"the generated chain does not verify: {result}")
    return {
        "checked": result.checked,
        "rows_read": rows,
        "read_seconds": read_seconds,
        "verify_seconds": verify_seconds,
        "start_rss_mb": start_rss,
        "peak_rss_mb": peak_rss_mb(),
    }


def child(arguments: argparse.Namespace) -> None:
    settings = settings_for(arguments.url, Path(arguments.data_dir), arguments.key)
    print(json.dumps(asyncio.run(measure(settings, uuid.UUID(arguments.tenant)))))


def run_backend(backend: str, count: int, data_dir: Path) -> dict[str, Any]:
    key_text = base64.b64encode(os.urandom(32)).decode()
    tenant_id = uuid.uuid4()
    with contextlib.ExitStack() as stack:
        if backend == "postgres":
            url = stack.enter_context(scratch_database("spawnpoint_bench_audit")).sqlalchemy_url
        else:
            url = f"sqlite+aiosqlite:///{data_dir / 'audit.db'}"
        settings = settings_for(url, data_dir, key_text)
        from spawnpoint.migrations import upgrade

        upgrade(settings)
        print(f"{backend}: inserting {count:,} entries", flush=True)
        load_seconds = load(settings, tenant_id, count, SigningKey.from_settings(settings))
        print(f"{backend}: inserted in {load_seconds:.1f} s; verifying", flush=True)
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--url",
                url,
                "--data-dir",
                str(data_dir),
                "--key",
                key_text,
                "--tenant",
                str(tenant_id),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=3600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"verification process failed:\n{done.stderr[-4000:]}")
        measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    measured["load_seconds"] = load_seconds
    return measured


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--goal", type=float, default=200_000, help="entries/s to verify")
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--tenant", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        child(arguments)
        return 0
    raise_on_sigterm(deadline=3600)
    rows = []
    met = True
    for backend in arguments.backends.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-audit-{backend}-") as data_dir:
            measured = run_backend(backend, arguments.entries, Path(data_dir))
        rate = measured["checked"] / measured["verify_seconds"]
        read_rate = measured["rows_read"] / measured["read_seconds"]
        met = met and rate >= arguments.goal
        rows.append(
            [
                backend,
                f"{measured['checked']:,}",
                f"{rate:,.0f}",
                f"{measured['verify_seconds']:.2f}",
                f"{read_rate:,.0f}",
                f"{rate / read_rate:.2f}",
                f"{measured['peak_rss_mb']:.0f} MB (start {measured['start_rss_mb']:.0f} MB)",
                f"{measured['load_seconds']:.0f} s",
                "✔" if rate >= arguments.goal else "✘",
            ]
        )
    table = markdown_table(
        [
            "backend",
            "entries",
            "verify entries/s",
            "verify s",
            "baseline: streamed read rows/s",
            "ratio",
            "verify process peak RSS",
            "insert (COPY / executemany)",
            f"≥ {arguments.goal:,.0f}/s",
        ],
        rows,
    )
    header = (
        f"# Audit chain verification, {datetime.now(UTC):%Y-%m-%d}\n\n"
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs\n\n"
    )
    path = write_result("audit_verify.md", header + table + "\n")
    print(table)
    print(f"written to {path}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
