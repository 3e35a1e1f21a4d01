"""The request middleware: request id, metrics, slow-request tracking and the access log.

It wraps the whole application, the error handler included (`install_request_telemetry`),
so a 500 also carries its `X-Request-ID`, is counted and is logged. Per request it costs a
header scan, three clock reads, two metric observations and (with ACCESS_LOG) one log line.

The duration metric and the access log measure the whole exchange. Slow requests are
judged by the time until the response starts instead, so a download or a followed job log
that streams for a minute is not "slow"; and an upload larger than `upload_bytes` is not
judged at all, since its time is the client's bandwidth.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spawnpoint import tracing
from spawnpoint.health.slow import SlowRequestTracker
from spawnpoint.kit.metrics import KNOWN_METHODS, SLOW_REQUESTS, UNMATCHED, observe_request
from spawnpoint.logs import MAX_REASON, RequestContext, accepted_request_id, current

access_log = logging.getLogger("spawnpoint.access")
# One warning per slow request, for alerting (the ring keeps the latest for the probes).
slow_log = logging.getLogger("spawnpoint.slow")
REQUEST_ID_HEADER = b"x-request-id"
REASON_HEADER = b"x-reason"
CONTENT_LENGTH_HEADER = b"content-length"
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
        upload_bytes: int,
    ) -> None:
        """`slow.clock` times requests too, so a test that drives it drives both."""
        self.app = app
        self.slow = slow
        self.log_requests = log_requests
        self.upload_bytes = upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        timer = self.slow.clock
        started = timer()
        supplied = reason = None
        upload = False
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                supplied = value.decode("latin-1")
            elif name == REASON_HEADER:
                reason = value.decode("latin-1")[:MAX_REASON]
            elif name == CONTENT_LENGTH_HEADER:
                upload = value.isdigit() and int(value) > self.upload_bytes
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
        answered: float | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, answered
            if message["type"] == "http.response.start":
                answered = timer()
                status = message["status"]
                headers = [h for h in message.get("headers", ()) if h[0] != REQUEST_ID_HEADER]
                headers.append(header)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            ended = timer()
            elapsed = ended - started
            route = context.route = _route_of(scope, context)
            observe_request(context.method, route, status, elapsed)
            if not upload and route not in UNTRACKED_ROUTES:
                waited = (answered or ended) - started
                if self.slow.observe(context.method, route, status, waited):
                    _report_slow(context.method, route, status, waited)
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


def _report_slow(method: str, route: str, status: int, seconds: float) -> None:
    label = method if method in KNOWN_METHODS else "other"
    SLOW_REQUESTS.labels(label, route).inc()
    duration_ms = round(seconds * 1000, 3)
    slow_log.warning(
        "slow request: %s %s %d answered after %.1fms",
        method,
        route,
        status,
        duration_ms,
        extra={"status": status, "duration_ms": duration_ms},
    )


def install_request_telemetry(
    app: FastAPI, *, slow: SlowRequestTracker, log_requests: bool, upload_bytes: int
) -> None:
    """Wrap the app's whole middleware stack, Starlette's error middleware included."""
    build = app.build_middleware_stack

    def build_with_telemetry() -> ASGIApp:
        return RequestTelemetry(
            build(), slow=slow, log_requests=log_requests, upload_bytes=upload_bytes
        )

    app.build_middleware_stack = build_with_telemetry  # type: ignore[method-assign]
