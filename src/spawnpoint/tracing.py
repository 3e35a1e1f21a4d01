"""OpenTelemetry spans, optional: `pip install spawnpoint[otel]`.

Requests are traced by FastAPI's own OpenTelemetry support (`create_app` hands it
`tracer_provider()`); this module adds spans around enqueueing (`job.enqueue`) and running
(`job.execute`) jobs, with tenant, project and job type attributes, and puts the caller's
tenant on the request's span. Spans are exported by OTLP (HTTP) when
OTEL_EXPORTER_OTLP_ENDPOINT is set (`configure_tracing`), or to whatever provider `install`
is given (tests use the SDK's in-memory exporter). Without the extra, or with neither, every
call here is a no-op that costs one attribute check.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer, TracerProvider

    from spawnpoint.config import Settings

log = logging.getLogger("spawnpoint.tracing")
TRACER_NAME = "spawnpoint"
SERVICE_NAME = "spawnpoint"

P = ParamSpec("P")
R = TypeVar("R")
_provider: TracerProvider | None = None
_tracer: Tracer | None = None


def install(provider: TracerProvider | None) -> None:
    """Trace into `provider` from now on (None: stop tracing)."""
    global _provider, _tracer
    _provider = provider
    _tracer = None if provider is None else provider.get_tracer(TRACER_NAME)


def tracer_provider() -> TracerProvider | None:
    return _provider


def enabled() -> bool:
    return _tracer is not None


def configure_tracing(settings: Settings) -> bool:
    """Export spans by OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set and the extra installed.

    Returns whether tracing is on. The exporter reads the other OTEL_* variables itself
    (headers, timeout, compression).
    """
    if _provider is not None:
        return True
    endpoint = settings.otel_exporter_otlp_endpoint
    if not endpoint:
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed "
            "(pip install 'spawnpoint[otel]'); spans are not exported"
        )
        return False
    provider = SdkTracerProvider(
        resource=Resource.create({"service.name": settings.otel_service_name})
    )
    traces = endpoint.rstrip("/")
    if not traces.endswith("/v1/traces"):
        traces += "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces)))
    install(provider)
    return True


def shutdown() -> None:
    """Flush and stop the exporter `configure_tracing` started."""
    provider = _provider
    if provider is not None and hasattr(provider, "shutdown"):
        provider.shutdown()


def _attributes(
    *,
    tenant_id: object = None,
    project_id: object = None,
    job_type: str | None = None,
    **more: Any,
) -> dict[str, Any]:
    found: dict[str, Any] = {
        "spawnpoint.tenant_id": tenant_id,
        "spawnpoint.project_id": project_id,
        "spawnpoint.job_type": job_type,
        **{f"spawnpoint.{key}": value for key, value in more.items()},
    }
    return {
        key: value if isinstance(value, str | bool | int | float) else str(value)
        for key, value in found.items()
        if value is not None
    }


@contextlib.contextmanager
def span(name: str, **attributes: Any) -> Iterator[None]:
    """A span named `name` around the block, when tracing is on; errors are recorded."""
    tracer = _tracer
    if tracer is None:
        yield
        return
    with tracer.start_as_current_span(name, attributes=_attributes(**attributes)):
        yield


def request_span(scope: Mapping[str, Any]) -> Any:
    """The server span FastAPI opened for the request of `scope` (None when not tracing).

    FastAPI keeps it in the scope rather than making it the current span.
    """
    telemetry = scope.get("fastapi.telemetry")
    return getattr(telemetry, "span", None)


def annotate(target: Any = None, **attributes: Any) -> None:
    """Add attributes (tenant_id, actor_id, ...) to `target` (default: the current span),
    if it is recording."""
    if _tracer is None:
        return
    if target is None:
        from opentelemetry import trace

        target = trace.get_current_span()
    if target.is_recording():
        target.set_attributes(_attributes(**attributes))


def traced(
    name: str, attributes: Callable[[tuple[Any, ...], Mapping[str, Any]], dict[str, Any]]
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate a coroutine function to run in a span named `name` when tracing is on;
    `attributes(args, kwargs)` names its tenant, project and job type."""

    def decorate(function: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(function)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if _tracer is None:
                return await function(*args, **kwargs)
            with span(name, **attributes(args, kwargs)):
                return await function(*args, **kwargs)

        return wrapper

    return decorate


def enqueue_attributes(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`jobs.queue.enqueue`'s keyword arguments, or `enqueue_with`'s job values (`args[2]`)."""
    job: Mapping[str, Any] = args[2] if len(args) > 2 else kwargs.get("job", kwargs)
    return {
        "tenant_id": job.get("tenant_id"),
        "project_id": job.get("project_id"),
        "job_type": job.get("job_type", job.get("type")),
    }
