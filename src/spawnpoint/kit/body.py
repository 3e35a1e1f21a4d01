"""The request body limit: MAX_BODY_BYTES, enforced before and while the body is read."""

from __future__ import annotations

import re
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spawnpoint.kit.errors import problem_document, problem_response


def _too_large(limit: int) -> str:
    return f"The request body is larger than {limit} bytes."


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=_too_large(limit))


class BodyLimitMiddleware:
    """Answer 413 when the declared or the received body exceeds `limit` bytes.

    A declared Content-Length over the limit is refused before the route runs; a body sent
    without one (chunked) is counted as it arrives and refused at the first chunk past
    the limit, so nothing larger is ever buffered or parsed. (FastAPI's own `max_body_size`
    answers a plain-text 413 when a route that reads no body meets a large Content-Length;
    this answers a problem document on every route.)

    `uploads` names the routes (method, path pattern) that stream large bodies to storage
    rather than parse them (artifact content): those get `upload_limit` instead.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit: int,
        uploads: Sequence[tuple[str, re.Pattern[str]]] = (),
        upload_limit: int = 0,
    ) -> None:
        self.app = app
        self.default_limit = limit
        self.uploads = uploads
        self.upload_limit = upload_limit

    def limit_for(self, scope: Scope) -> int:
        for method, pattern in self.uploads:
            if scope["method"] == method and pattern.match(scope["path"]):
                return max(self.upload_limit, self.default_limit)
        return self.default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            detail = _too_large(limit) if declared.isdigit() else "Bad Content-Length."
            status = 413 if declared.isdigit() else 400
            await problem_response(problem_document(status, detail))(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)
