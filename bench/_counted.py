"""Run a `spawnpoint` command with the SQL statements it sends counted (bench/job_queue.py).

    .venv/bin/python bench/_counted.py STATS_FILE spawnpoint-arguments...

Counts every statement the process sends through psycopg (an `executemany` counts one per
row of parameters, as PostgreSQL runs one each) and every COMMIT, by the statement's first
word. On SIGUSR1 and at exit it writes `{"seq": n, "statements": {...}}` to STATS_FILE
(`seq` counts the writes, so a reader can tell a fresh snapshot from an old one).
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import signal
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psycopg

statements: collections.Counter[str] = collections.Counter()
_seq = 0
_stats = Path(sys.argv[1])
_HEADS = ("WITH", "UPDATE", "DELETE", "INSERT", "SELECT", "LISTEN", "BEGIN")


def kind(query: Any) -> str:
    text = query if isinstance(query, str) else str(getattr(query, "as_string", lambda: query)())
    words = text.lstrip().upper()
    for head in _HEADS:
        if words.startswith(head):
            return head
    return words.split(" ", 1)[0][:20] or "?"


_execute = psycopg.AsyncCursor.execute
_executemany = psycopg.AsyncCursor.executemany
_commit = psycopg.AsyncConnection.commit


async def execute(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
    statements[kind(query)] += 1
    return await _execute(self, query, params, **kwargs)


async def executemany(self: Any, query: Any, params_seq: Iterable[Any], **kwargs: Any) -> Any:
    rows = list(params_seq)
    statements[kind(query)] += len(rows)
    return await _executemany(self, query, rows, **kwargs)


async def commit(self: Any) -> None:
    statements["COMMIT"] += 1
    await _commit(self)


def dump(*_: object) -> None:
    global _seq
    _seq += 1
    tmp = _stats.with_suffix(".tmp")
    tmp.write_text(json.dumps({"seq": _seq, "statements": dict(statements)}))
    os.replace(tmp, _stats)


def main() -> None:
    psycopg.AsyncCursor.execute = execute  # type: ignore[method-assign]
    psycopg.AsyncCursor.executemany = executemany  # type: ignore[method-assign]
    psycopg.AsyncConnection.commit = commit  # type: ignore[method-assign]
    signal.signal(signal.SIGUSR1, dump)
    atexit.register(dump)
    from spawnpoint.cli import main as spawnpoint

    sys.argv = ["spawnpoint", *sys.argv[2:]]
    spawnpoint()


if __name__ == "__main__":
    main()
