"""Two event loops for the embedded mode: one serves HTTP and the polls, one does the work.

`spawnpoint serve` on SQLite runs the API, the in-process worker and every client's polls
in one process. On one event loop a poll waits for each turn of the loop ahead of it, and
under load a turn runs every spawn, job step and settlement that became ready meanwhile
(50-190 ms with 32 clients), so a status read that costs the process 1 ms took 100 ms and
more.

Here the loop uvicorn runs (the serving loop) parses HTTP and answers the polls
(`GET /api/workspaces/{id}`, `GET /api/jobs/{id}`) itself, from read-only database
connections of its own. Everything else runs on a second loop on a thread of its own (the
work loop): the application's lifespan, and so the in-process worker, the scheduler and the
relay, and every other request with its whole middleware stack, to which the serving loop
hands the request's ASGI messages. Every write therefore stays on the work loop, so the
write gate, the worker's wake-ups and each loop-bound primitive keep one loop
(`Database.work_on` refuses a write from another). The serving loop is idle most of the
time; when a poll arrives its thread takes the interpreter within the switch interval
(lowered here from Python's 5 ms), whatever the work loop is doing.

Python's interpreter lock still runs one thread's Python at a time: the loops share a
core's worth of Python, beside which SQLite's statements and the sockets' system calls run.
Not used with REDIS_URL: the Redis clients are bound to the loop that made them.
"""

from __future__ import annotations

import asyncio
import re
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spawnpoint.config import Settings
from spawnpoint.db import Database, inline_path

T = TypeVar("T")
# How long a thread that wants the interpreter waits before the holder must hand it over
# (Python's default is 5 ms, which a poll would pay at each system call it makes).
SWITCH_INTERVAL_SECONDS = 0.0005
# What the serving loop answers itself: the reads clients poll.
POLLS = re.compile(r"^/api/(?:workspaces|jobs)/[0-9a-fA-F-]{32,36}$")
SERVING_SCOPE_KEY = "spawnpoint.serving_loop"
LIFESPAN_ENDS = ("lifespan.shutdown.complete", "lifespan.shutdown.failed")


class WorkLoop:
    """An event loop running on a thread of its own until `stop`."""

    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self.loop = factory()
        self.thread = threading.Thread(target=self._run, name="spawnpoint work loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    async def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the work loop; wait for it on the calling loop."""
        return await asyncio.wrap_future(self.submit(coroutine))

    def stop(self) -> None:
        """Stop the loop once what it runs now has had its turn; close it."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _on(loop: asyncio.AbstractEventLoop, call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
    """`call()` awaited on `loop`, awaitable from another loop (cancelled with it)."""

    async def run() -> T:
        return await call()

    return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), loop))


class TwoLoops:
    """ASGI: the polls on this loop, the lifespan and every other request on `work`."""

    def __init__(self, app: ASGIApp, work: WorkLoop, database: Database) -> None:
        self.app = app
        self.work = work
        self.database = database
        database.work_on(work.loop)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_poll(scope):
            scope[SERVING_SCOPE_KEY] = True
            await self.app(scope, receive, send)
            return
        serving = asyncio.get_running_loop()
        lifespan = scope["type"] == "lifespan"
        # Held here until the work loop is done with the request, then sent from this loop:
        # a whole response (its start and its one body) crosses the threads with the
        # request's end, not in hand-overs of its own. Streamed parts go as they come.
        held: list[Message] = []
        # A request's body (or its first part) is read here first: one hand-over less.
        first: list[Message] = [] if lifespan else [await receive()]

        async def receive_there() -> Message:
            if first:
                return first.pop()
            return await _on(serving, receive)

        async def send_there(message: Message) -> None:
            if message["type"] in LIFESPAN_ENDS or _whole(held, message):
                held.append(message)
                return
            parts, held[:] = [*held, message], []

            async def in_order() -> None:
                for part in parts:
                    await send(part)

            await _on(serving, in_order)

        async def there() -> None:
            await self.app(scope, receive_there, send_there)

        try:
            await self.work.run(there())
        finally:
            if lifespan:
                # Nothing runs on the work loop after the lifespan: stop it before uvicorn
                # hears that the shutdown is complete (and ends the process).
                await self.database.dispose_serving()
                await asyncio.to_thread(self.work.stop)
            # A start without its body (the app failed) is dropped: uvicorn answers 500.
            if lifespan or (held and held[-1]["type"] == "http.response.body"):
                for message in held:
                    await send(message)


def _whole(held: list[Message], message: Message) -> bool:
    """Whether `message` starts a response or ends one started and held, unstreamed."""
    if message["type"] == "http.response.start":
        return True
    return (
        message["type"] == "http.response.body"
        and not message.get("more_body", False)
        and len(held) == 1
    )


def uses_two_loops(settings: Settings) -> bool:
    """Whether `spawnpoint serve` with its worker runs two loops: on a SQLite file, without
    Redis."""
    return inline_path(settings.sqlalchemy_url) is not None and not settings.redis_url


def is_poll(scope: Scope) -> bool:
    return scope["method"] in ("GET", "HEAD") and POLLS.match(scope["path"]) is not None


def served_here(scope: Scope) -> bool:
    """Whether the serving loop answers this request itself (see `TwoLoops`)."""
    return bool(scope.get(SERVING_SCOPE_KEY))


def lower_switch_interval() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
