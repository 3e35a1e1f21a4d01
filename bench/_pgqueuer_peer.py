"""PgQueuer's side of bench/job_queue.py; runs on the scratch venv's Python, not the project's.

    python _pgqueuer_peer.py install DSN
    python _pgqueuer_peer.py enqueue DSN COUNT
    python _pgqueuer_peer.py work DSN --batch-size N --stats FILE

`install` creates PgQueuer's schema (tables, trigger, NOTIFY channel) in the database,
`enqueue` adds COUNT `noop` jobs in one statement (PgQueuer's bulk enqueue, one transaction)
and prints the time it committed (epoch seconds), `work` runs one QueueManager with an
asyncpg connection (the driver PgQueuer recommends) and a `noop` entrypoint that does
nothing, until SIGTERM or SIGINT. On SIGUSR1 and when it stops it writes the SQL statements
it sent (counted at PgQueuer's driver, by the statement's first word) and the jobs it ran to
FILE as JSON, with `seq` counting the writes (as bench/_counted.py does for spawnpoint).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import signal
import sys
import time
from datetime import timedelta
from typing import Any

import asyncpg
from pgqueuer import AsyncpgDriver, Job, Queries, QueueManager

try:
    import uvloop
except ImportError:  # pgqueuer depends on it today; run on asyncio's own loop if not
    uvloop = None


def kind(query: str) -> str:
    words = " ".join(query.split()).upper()
    for head in ("WITH", "UPDATE", "DELETE", "INSERT", "SELECT", "LISTEN", "NOTIFY"):
        if words.startswith(head):
            return head
    return words[:20]


class CountingDriver(AsyncpgDriver):
    """PgQueuer's asyncpg driver, counting the statements sent through it."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        super().__init__(connection)
        self.statements: collections.Counter[str] = collections.Counter()

    async def fetch(self, query: str, *args: object) -> list[dict[str, object]]:
        self.statements[kind(query)] += 1
        return await super().fetch(query, *args)

    async def execute(self, query: str, *args: object) -> str:
        self.statements[kind(query)] += 1
        return await super().execute(query, *args)


async def install(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await Queries(AsyncpgDriver(conn)).install()
    finally:
        await conn.close()


async def enqueue(dsn: str, count: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.enqueue(["noop"] * count, [None] * count, [0] * count)
        print(f"{time.time():.6f}")
    finally:
        await conn.close()


async def work(dsn: str, batch_size: int, stats: str) -> None:
    conn = await asyncpg.connect(dsn)
    driver = CountingDriver(conn)
    qm = QueueManager(Queries(driver))
    ran = 0

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        nonlocal ran
        ran += 1

    seq = 0

    def dump() -> None:
        nonlocal seq
        seq += 1
        record: dict[str, Any] = {"seq": seq, "jobs": ran, "statements": dict(driver.statements)}
        with open(stats + ".tmp", "w") as out:
            json.dump(record, out)
        os.replace(stats + ".tmp", stats)

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, qm.shutdown.set)
    loop.add_signal_handler(signal.SIGUSR1, dump)
    try:
        await qm.run(batch_size=batch_size, dequeue_timeout=timedelta(seconds=30))
    finally:
        dump()
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install").add_argument("dsn")
    add = sub.add_parser("enqueue")
    add.add_argument("dsn")
    add.add_argument("count", type=int)
    run = sub.add_parser("work")
    run.add_argument("dsn")
    run.add_argument("--batch-size", type=int, default=10)
    run.add_argument("--stats", required=True)
    args = parser.parse_args()
    if args.command == "install":
        coro = install(args.dsn)
    elif args.command == "enqueue":
        coro = enqueue(args.dsn, args.count)
    else:
        coro = work(args.dsn, args.batch_size, args.stats)
    if uvloop is not None:
        uvloop.run(coro)
    else:
        asyncio.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
