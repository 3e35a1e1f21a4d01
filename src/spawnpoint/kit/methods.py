"""Method semantics the router leaves out: HEAD wherever GET, and a 405 naming every method.

Starlette adds HEAD to its own routes but FastAPI's routes declare only GET, and on a 405
Starlette's `Allow` lists the methods of the first route whose path matched, not of every
route sharing that path. Both are fixed here once, for every route, rather than per route,
and without adding HEAD operations to the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spawnpoint.kit.errors import problem_document, problem_response

METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Set in the scope of a HEAD answered as GET: a handler streaming a large body checks it
# (`asked_head`) to send its headers without reading the content only to drop it.
HEAD_KEY = "spawnpoint.head"


class HeadAsGet:
    """Answer HEAD as GET would, with the same status and headers and no body (RFC 9110 9.3.2).

    The GET handler runs (GET is safe), so `Content-Length` is the one GET would send.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET", HEAD_KEY: True}, receive, send_without_body)


def asked_head(request: Request) -> bool:
    """Whether this GET is answering a HEAD (its body will be dropped)."""
    return bool(request.scope.get(HEAD_KEY))


def allowed_methods(routes: Sequence[BaseRoute], path: str) -> list[str]:
    """Every method the routes matching `path` serve, HEAD wherever GET, in a fixed order."""
    methods: set[str] = set()
    # FastAPI keeps included routers as nested route objects; their contexts are the
    # effective routes, with the prefix applied.
    for route in iter_route_contexts(routes):
        if route.methods and route.path_regex.match(path):
            methods |= route.methods
    if "GET" in methods:
        methods.add("HEAD")
    rank = {method: index for index, method in enumerate(METHOD_ORDER)}
    return sorted(methods, key=lambda method: (rank.get(method, len(rank)), method))


async def _on_method_not_allowed(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    # A mounted app (the docs' static files) raises its own 405 with its own Allow.
    allow = ", ".join(allowed_methods(request.app.routes, _route_path(request.scope))) or (
        (exc.headers or {}).get("Allow", "")
    )
    doc = problem_document(405, f"This path serves {allow}." if allow else None)
    return problem_response(doc, {**(exc.headers or {}), "Allow": allow})


def _route_path(scope: Scope) -> str:
    # ASGI paths include the root path a proxy mounts the app under; routes do not.
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        return path[len(root) :]
    return path


def install_method_semantics(app: FastAPI) -> None:
    app.add_middleware(HeadAsGet)
    app.add_exception_handler(405, _on_method_not_allowed)
