"""The request body limit: MAX_BODY_BYTES, enforced before and while the body is read."""

from __future__ import annotations

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
    """

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            detail = _too_large(self.limit) if declared.isdigit() else "Bad Content-Length."
            status = 413 if declared.isdigit() else 400
            await problem_response(problem_document(status, detail))(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)
