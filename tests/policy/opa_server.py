"""A real HTTP server speaking OPA's Data API, evaluating Rego with regopy.

    POST /v1/data/{path}  {"input": {...}}  ->  200 {"result": <document>}  ({} if undefined)
    GET  /health                            ->  200 {}

It loads spawnpoint's default policy plus any extra modules, so answers match the embedded
engine. `mode` switches behaviour at run time for failure tests: "ok", "error" (500),
"slow" (answers after `delay` seconds), "undefined" ({} for every document), "malformed"
(200 with a body that is not JSON).

Use in tests (from another test folder: `from policy.opa_server import FakeOpa`):

    with FakeOpa() as opa:
        engine = OpaPolicyEngine(opa.url)

Or as a process (the benchmark does): `python tests/policy/opa_server.py --port 8181`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from spawnpoint.policy._rego import CompiledQuery, RegoRuntimeError, RegoUndefined
from spawnpoint.policy.embedded import DEFAULT_MODULE, default_policy

Mode = Literal["ok", "error", "slow", "undefined", "malformed"]
LOCALHOST = "127.0.0.1"


@dataclass(frozen=True)
class OpaRequest:
    path: str
    input: Any


def _json(status: int, body: object) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


class FakeOpa:
    """The Data API on a free loopback port, served by uvicorn on a background thread."""

    def __init__(self, modules: Mapping[str, str] | None = None, *, port: int = 0) -> None:
        self.modules = {DEFAULT_MODULE: default_policy(), **(modules or {})}
        self.mode: Mode = "ok"
        self.delay = 5.0
        self.requests: list[OpaRequest] = []
        self._queries: dict[str, CompiledQuery] = {}
        self._queries_lock = threading.Lock()
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((LOCALHOST, port))
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://{LOCALHOST}:{self.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._release: asyncio.Event | None = None
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app(),
                log_level="warning",
                access_log=False,
                lifespan="on",
                timeout_graceful_shutdown=2,
            )
        )
        self._thread: threading.Thread | None = None

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/data/{path:path}", self._data, methods=["POST"]),
                Route("/health", self._health, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        self._release = asyncio.Event()
        yield

    async def _health(self, _request: Request) -> Response:
        return _json(200, {})

    async def _data(self, request: Request) -> Response:
        path = request.path_params["path"].strip("/")
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _json(400, {"code": "invalid_parameter", "message": "body is not JSON"})
        policy_input = body.get("input") if isinstance(body, dict) else None
        self.requests.append(OpaRequest(path=path, input=policy_input))
        if self.mode == "error":
            return _json(500, {"code": "internal_error", "message": "injected failure"})
        if self.mode == "malformed":
            return Response(b"<html>not json</html>", media_type="text/html")
        if self.mode == "undefined":
            return _json(200, {})
        if self.mode == "slow" and self._release is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), self.delay)
        try:
            result = await asyncio.to_thread(self._evaluate, path, policy_input or {})
        except RegoUndefined:
            return _json(200, {})
        except RegoRuntimeError as exc:
            return _json(500, {"code": "internal_error", "message": str(exc)})
        return _json(200, {"result": result})

    def _evaluate(self, path: str, policy_input: dict[str, Any]) -> Any:
        with self._queries_lock:
            query = self._queries.get(path)
            if query is None:
                ref = "data" + "".join(f'["{segment}"]' for segment in path.split("/"))
                query = self._queries[path] = CompiledQuery(self.modules, f"[{ref}]")
        return query.evaluate(policy_input)[0]

    def serve(self) -> None:
        """Serve on the calling thread until SIGINT/SIGTERM (or `stop` from another thread)."""
        self._socket.listen(128)
        self._server.run(sockets=[self._socket])

    def start(self) -> FakeOpa:
        """Serve on a background thread and return at once.

        The socket listens before the thread starts: a client connecting early waits in the
        backlog until uvicorn accepts, so there is nothing to poll for.
        """
        self._socket.listen(128)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> FakeOpa:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8181)
    args = parser.parse_args()
    FakeOpa(port=args.port).serve()


if __name__ == "__main__":
    main()
