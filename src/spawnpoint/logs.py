"""Structured logs: one JSON object per line, carrying who and what the line is about.

`configure_logging` routes the standard library's loggers (ours, uvicorn's, SQLAlchemy's)
through structlog's formatter, so every line has the same shape whoever wrote it. Each line
logged while a request is served carries its `request_id`, `route` template, `method`,
`reason` (the X-Reason header) and, once the caller is authenticated, `tenant_id` and
`actor_id`; a line logged while a job runs carries `job_id`, `job_type`, `tenant_id`,
`project_id` and `actor_id`. The fields come from `RequestContext` / `JobLogContext` objects
held in a context variable, which the request middleware and the worker set.
"""

from __future__ import annotations

import logging
import re
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from spawnpoint import tracing
from spawnpoint.kit.ids import uuid7

if TYPE_CHECKING:
    from spawnpoint.config import Settings
    from spawnpoint.jobs.queue import ClaimedJob
    from spawnpoint.security import Principal

# What a client may send as X-Request-ID: bounded, and safe to echo in headers and logs.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}")
MAX_REASON = 512
EXTRA_FIELDS = ("status", "duration_ms")


@dataclass(slots=True)
class RequestContext:
    """What the lines logged during one request are about (mutated as it is learnt)."""

    request_id: str
    method: str
    path: str
    reason: str | None = None
    route: str | None = None
    tenant_id: str | None = None
    actor_id: str | None = None
    span: Any = None  # the request's server span, when tracing

    def fields(self) -> dict[str, Any]:
        found = {
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "path": self.path,
            "tenant_id": self.tenant_id,
            "actor_id": self.actor_id,
            "reason": self.reason,
        }
        return {key: value for key, value in found.items() if value is not None}


class JobLogContext:
    """The fields of a job's log lines, formatted only when a line is logged (a worker sets
    one per attempt; most attempts log nothing)."""

    __slots__ = ("job",)

    def __init__(self, job: ClaimedJob) -> None:
        self.job = job

    def fields(self) -> dict[str, Any]:
        job = self.job
        found = {
            "job_id": job.id,
            "job_type": job.type,
            "attempt": job.attempt,
            "tenant_id": job.tenant_id,
            "project_id": job.project_id,
            "actor_id": job.actor_id,
        }
        return {
            key: value if isinstance(value, str | int) else str(value)
            for key, value in found.items()
            if value is not None
        }


def job_log_context(job: ClaimedJob) -> JobLogContext:
    return JobLogContext(job)


current: ContextVar[RequestContext | JobLogContext | None] = ContextVar(
    "spawnpoint_log_context", default=None
)


def accepted_request_id(value: str | None) -> str:
    """The client's X-Request-ID when it is short and plain, else a new one."""
    if value is not None and REQUEST_ID_PATTERN.fullmatch(value):
        return value
    return str(uuid7())


def request_context() -> RequestContext | None:
    found = current.get()
    return found if isinstance(found, RequestContext) else None


def bind_principal(principal: Principal) -> None:
    """Name the authenticated caller on the lines the current request logs from now on."""
    found = request_context()
    if found is None:
        return
    found.tenant_id = str(principal.tenant_id)
    found.actor_id = str(principal.user_id)
    if found.span is not None:
        tracing.annotate(found.span, tenant_id=principal.tenant_id, actor_id=principal.user_id)


def add_context(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the current request's or job's fields, unless the line has them."""
    found = current.get()
    if found is not None:
        for key, value in found.fields().items():
            event_dict.setdefault(key, value)
    return event_dict


def _dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def _processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_context,
    ]


def configure_logging(settings: Settings, *, stream: Any = None) -> None:
    """Send every log line, structlog's and the standard library's, to `stream` (stderr)
    as JSON (LOG_FORMAT=json) or aligned text (console), at LOG_LEVEL."""
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=_dumps)
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    shared = _processors()
    formatter = structlog.stdlib.ProcessorFormatter(
        # Fields a standard-library caller passes as `extra=` (the access log's).
        foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder(allow=EXTRA_FIELDS)],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own handlers are off (log_config=None): its lines come through ours.
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
