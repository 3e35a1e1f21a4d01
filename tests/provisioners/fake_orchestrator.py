"""An orchestrator that speaks the contract, on a real loopback socket, with fault injection.

It runs under uvicorn in a thread of its own, so the driver under test talks to it over
TCP exactly as it would to the real service.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

PATH = "/api/scenarios"


@dataclass
class Scenario:
    id: str
    status: str
    body: dict[str, Any]
    polls_left: int
    error: str | None = None
    report_url: bool = True

    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.status == "running" and self.report_url:
            document["url"] = f"https://scenarios.example.test:8443/{self.id}/"
        if self.error:
            document["error"] = self.error
        return document


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeOrchestrator:
    """The orchestrator's state and the faults to inject; tests set the fields directly.

    Requests are handled on the server thread's event loop; the test thread only sets
    faults before it calls the driver and reads the record afterwards.
    """

    polls_to_running: int = 2
    outcome: str = "running"
    delete_async: bool = False
    report_urls: bool = True
    unavailable: int = 0
    """The next N requests answer 503 without doing anything."""
    lose_responses: int = 0
    """The next N creates happen, but their response is a 503 (the reply is lost)."""
    throttle: int = 0
    """The next N requests answer 429 with Retry-After: 0."""
    slow: int = 0
    """The next N requests take `slow_seconds` to answer."""
    slow_seconds: float = 1.0
    reject_creates_with: int | None = None
    malformed: bool = False
    scenarios: dict[str, Scenario] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def requests(self, method: str, path: str = PATH) -> list[Seen]:
        return [seen for seen in self.seen if seen.method == method and seen.path == path]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.middleware("http")
        async def faults(
            request: Request, call_next: Callable[[Request], Awaitable[Response]]
        ) -> Response:
            body = await request.body()
            self.seen.append(Seen(request.method, request.url.path, dict(request.headers), body))
            delay = self._take("slow")
            unavailable = self._take("unavailable")
            throttled = self._take("throttle")
            if delay:
                await asyncio.sleep(self.slow_seconds)
            if unavailable:
                return JSONResponse({"detail": "try later"}, status_code=503)
            if throttled:
                return JSONResponse(
                    {"detail": "slow down"}, status_code=429, headers={"Retry-After": "0"}
                )
            if self.malformed:
                return Response("<html>proxy error page</html>", media_type="text/html")
            return await call_next(request)

        @app.post(PATH)
        async def create(request: Request) -> Response:
            key = request.headers.get("idempotency-key")
            if not key:
                return JSONResponse({"detail": "Idempotency-Key required"}, status_code=400)
            if self.reject_creates_with is not None:
                return JSONResponse({"detail": "bad spec"}, status_code=self.reject_creates_with)
            body = await request.json()
            # No await between the lookup and the insert: the server runs on one event loop,
            # so a concurrent retry cannot slip in between and create a second scenario.
            if key in self.keys:
                return JSONResponse(self.scenarios[self.keys[key]].document())
            scenario = Scenario(
                id=f"sc-{next(self._ids)}",
                status="pending",
                body=body,
                polls_left=self.polls_to_running,
                report_url=self.report_urls,
            )
            self.scenarios[scenario.id] = scenario
            self.keys[key] = scenario.id
            if self._take("lose_responses"):
                return JSONResponse({"detail": "gateway timeout"}, status_code=503)
            return JSONResponse(scenario.document(), status_code=201)

        @app.get(PATH + "/{scenario_id}")
        async def read(scenario_id: str) -> Response:
            scenario = self.scenarios.get(scenario_id)
            if scenario is None:
                return JSONResponse({"detail": "no such scenario"}, status_code=404)
            self._advance(scenario)
            if scenario.status == "deleted":
                del self.scenarios[scenario_id]
            return JSONResponse(scenario.document())

        @app.post(PATH + "/{scenario_id}/stop")
        async def stop(scenario_id: str) -> Response:
            scenario = self.scenarios.get(scenario_id)
            if scenario is None:
                return JSONResponse({"detail": "no such scenario"}, status_code=404)
            if scenario.status != "stopped":
                scenario.status = "stopping"
            return JSONResponse(scenario.document(), status_code=202)

        @app.post(PATH + "/{scenario_id}/start")
        async def start(scenario_id: str) -> Response:
            scenario = self.scenarios.get(scenario_id)
            if scenario is None:
                return JSONResponse({"detail": "no such scenario"}, status_code=404)
            if scenario.status != "running":
                scenario.status = "starting"
                scenario.polls_left = self.polls_to_running
            return JSONResponse(scenario.document(), status_code=202)

        @app.delete(PATH + "/{scenario_id}")
        async def delete(scenario_id: str) -> Response:
            scenario = self.scenarios.get(scenario_id)
            if scenario is None:
                return JSONResponse({"detail": "no such scenario"}, status_code=404)
            if self.delete_async:
                scenario.status = "deleting"
                return JSONResponse(scenario.document(), status_code=202)
            del self.scenarios[scenario_id]
            return Response(status_code=204)

        return app

    def _take(self, fault: str) -> bool:
        remaining: int = getattr(self, fault)
        if remaining > 0:
            setattr(self, fault, remaining - 1)
            return True
        return False

    def _advance(self, scenario: Scenario) -> None:
        """Each read moves a scenario one step along, as a real one moves with time."""
        if scenario.status in ("pending", "starting"):
            if scenario.polls_left > 0:
                scenario.polls_left -= 1
                scenario.status = "starting"
            elif self.outcome == "failed":
                scenario.status = "failed"
                scenario.error = "image pull failed: example/scenario:1 not found"
            else:
                scenario.status = "running"
        elif scenario.status == "stopping":
            scenario.status = "stopped"
        elif scenario.status == "deleting":
            scenario.status = "deleted"


class ServedOrchestrator:
    """Serves a FakeOrchestrator with uvicorn on a free loopback port, in a thread."""

    def __init__(self, fake: FakeOrchestrator) -> None:
        self.fake = fake
        # IPPROTO_TCP spelled out: asyncio only sets TCP_NODELAY on accepted sockets whose
        # protocol says TCP, and without it every response waits ~40 ms for a delayed ACK.
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.socket.getsockname()[1]}"
        config = uvicorn.Config(
            fake.app(), log_level="warning", lifespan="off", loop="asyncio", http="h11"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )

    def __enter__(self) -> ServedOrchestrator:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake orchestrator did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()
