"""Admission of reads, so a flood of polls cannot starve the in-process worker.

In the embedded mode one event loop serves the API and runs the worker. With SQLite on the
loop's thread a read runs start to finish in one turn of the loop, and every turn runs each
request that is ready: with 32 clients polling, the worker's next step waits behind 32
reads, every step of every spawn. Here at most `limit` reads of the API are handled at once;
the others wait their turn (costing nothing meanwhile), so a turn of the loop stays short
and the worker moves on every few reads. The reads themselves are no slower in sum: the
process was busy with them either way.

Writes are not held back (they queue on the database's write gate), nor are the probes and
metrics (they must answer while the API is busy), nor the streamed reads (followed job logs
and downloads last as long as their clients want), nor the polls `spawnpoint serve` answers
on a loop the worker does not share (kit/loops.py).
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Receive, Scope, Send

from spawnpoint.kit.loops import served_here

READ_METHODS = frozenset({"GET", "HEAD"})
STREAMED_SUFFIXES = ("/logs", "/download")


class ReadAdmission:
    """Pure ASGI middleware: at most `limit` API reads in the handlers at once."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.gate = asyncio.Semaphore(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _admitted(scope):
            await self.app(scope, receive, send)
            return
        async with self.gate:
            await self.app(scope, receive, send)


def _admitted(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["method"] not in READ_METHODS or served_here(scope):
        # The serving loop's polls do not share a loop with the worker (kit/loops.py).
        return False
    path: str = scope["path"]
    return path.startswith("/api/") and not path.endswith(STREAMED_SUFFIXES)
