"""The request middleware: request id, metrics, slow-request tracking and the access log.

It wraps the whole application, the error handler included (`install_request_telemetry`),
so a 500 also carries its `X-Request-ID`, is counted and is logged. Per request it costs a
header scan, two clock reads, two metric observations and (with ACCESS_LOG) one log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spawnpoint import tracing
from spawnpoint.health.slow import SlowRequestTracker
from spawnpoint.kit.metrics import UNMATCHED, observe_request
from spawnpoint.logs import MAX_REASON, RequestContext, accepted_request_id, current

access_log = logging.getLogger("spawnpoint.access")
REQUEST_ID_HEADER = b"x-request-id"
REASON_HEADER = b"x-reason"
# Probes and scrapes: counted, but never "slow requests" that would fail readiness.
UNTRACKED_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/health", "/live", "/ready"})


def _route_of(scope: Scope, context: RequestContext) -> str:
    if context.route is not None:
        return context.route
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestTelemetry:
    def __init__(
        self,
        app: ASGIApp,
        *,
        slow: SlowRequestTracker,
        log_requests: bool,
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.app = app
        self.slow = slow
        self.log_requests = log_requests
        self.timer = timer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = self.timer()
        supplied = reason = None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                supplied = value.decode("latin-1")
            elif name == REASON_HEADER:
                reason = value.decode("latin-1")[:MAX_REASON]
        request_id = accepted_request_id(supplied)
        context = RequestContext(
            request_id=request_id, method=scope["method"], path=scope["path"], reason=reason
        )
        scope.setdefault("state", {})["request_id"] = request_id
        if tracing.enabled():
            context.span = tracing.request_span(scope)
            if context.span is not None:
                tracing.annotate(context.span, request_id=request_id)
        token = current.set(context)
        header = (REQUEST_ID_HEADER, request_id.encode("latin-1"))
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0] != REQUEST_ID_HEADER]
                headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = self.timer() - started
            route = context.route = _route_of(scope, context)
            observe_request(context.method, route, status, elapsed)
            if route not in UNTRACKED_ROUTES:
                self.slow.observe(context.method, route, status, elapsed)
            if self.log_requests and access_log.isEnabledFor(logging.INFO):
                duration_ms = round(elapsed * 1000, 3)
                access_log.info(
                    "%s %s %d %.1fms",
                    context.method,
                    route,
                    status,
                    duration_ms,
                    extra={"status": status, "duration_ms": duration_ms},
                )
            current.reset(token)


def install_request_telemetry(
    app: FastAPI, *, slow: SlowRequestTracker, log_requests: bool
) -> None:
    """Wrap the app's whole middleware stack, Starlette's error middleware included."""
    build = app.build_middleware_stack

    def build_with_telemetry() -> ASGIApp:
        return RequestTelemetry(build(), slow=slow, log_requests=log_requests)

    app.build_middleware_stack = build_with_telemetry  # type: ignore[method-assign]
