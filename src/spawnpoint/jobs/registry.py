"""Which handler runs which job type, and where handlers come from.

Handlers are `async def handler(ctx: JobContext) -> dict | None`; the returned dict is kept
as the job's result. Built-in handlers are registered by `default_registry`; third parties
add theirs through the entry-point group `spawnpoint.jobs`, whose entry points are callables
taking the registry::

    [project.entry-points."spawnpoint.jobs"]
    reports = "acme_reports.jobs:register"

    def register(registry: HandlerRegistry) -> None:
        registry.register("acme.report", build_report, payload=ReportPayload)

A job type registered with a `payload` model is a *service* job type: callers may enqueue it
through `POST /api/jobs` (the payload is validated against the model there, so a payload
that does not fit is a 422, not a failed job), it counts against the plan's job quotas, and
its jobs write the `service_job_*` governance events. A type without one (the
`workspace.*` handlers) is enqueued only by the code that owns it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Awaitable, Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, overload

from pydantic import BaseModel, ConfigDict

from spawnpoint.config import Settings
from spawnpoint.jobs.context import JobContext

log = logging.getLogger("spawnpoint.jobs")

ENTRY_POINT_GROUP = "spawnpoint.jobs"

Handler = Callable[[JobContext], Awaitable[dict[str, Any] | None]]
Registration = Callable[["HandlerRegistry"], object]


class HandlerRegistry:
    """Job type -> handler. Built per process; nothing global is mutated."""

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}
        self._payloads: dict[str, type[BaseModel]] = {}
        self._closers: list[Callable[[], Awaitable[None]]] = []

    @overload
    def register(
        self, job_type: str, handler: Handler, *, payload: type[BaseModel] | None = None
    ) -> Handler: ...

    @overload
    def register(
        self, job_type: str, handler: None = None, *, payload: type[BaseModel] | None = None
    ) -> Callable[[Handler], Handler]: ...

    def register(
        self,
        job_type: str,
        handler: Handler | None = None,
        *,
        payload: type[BaseModel] | None = None,
    ) -> Handler | Callable[[Handler], Handler]:
        """Register `handler` for `job_type`; without a handler, return a decorator.

        Args:
            job_type: The name jobs are enqueued under.
            handler: The coroutine function that runs one attempt.
            payload: The pydantic model a payload must fit; makes `job_type` a service job
                type (see the module's docstring).

        Raises:
            ValueError: `job_type` already has a handler (two plug-ins claiming one type
                is a configuration error, not something to resolve silently).
        """

        def add(fn: Handler) -> Handler:
            if job_type in self._handlers:
                raise ValueError(f"job type {job_type!r} already has a handler")
            self._handlers[job_type] = fn
            if payload is not None:
                self._payloads[job_type] = payload
            return fn

        return add if handler is None else add(handler)

    def on_close(self, closer: Callable[[], Awaitable[None]]) -> None:
        """Have `closer` run whenever a worker using this registry stops.

        For handlers that hold resources across jobs (a driver's connection pool, say). A
        registry may serve several worker runs, so a closer must leave its handlers usable:
        release now, reopen on the next job.
        """
        self._closers.append(closer)

    async def aclose(self) -> None:
        """Run every closer, the last registered first; a failing one does not stop the rest."""
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception:
                log.exception("closing job handlers failed")

    def get(self, job_type: str) -> Handler | None:
        return self._handlers.get(job_type)

    def job_types(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def payload_model(self, job_type: str) -> type[BaseModel] | None:
        """The payload model of a service job type; None for any other type."""
        return self._payloads.get(job_type)

    def service_types(self) -> frozenset[str]:
        """The job types callers may enqueue through the API (registered with a payload)."""
        return frozenset(self._payloads)

    def is_service(self, job_type: str) -> bool:
        return job_type in self._payloads

    def __contains__(self, job_type: object) -> bool:
        return job_type in self._handlers

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._handlers))

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        """Call every installed entry point of `group` with this registry.

        Raises:
            RuntimeError: An entry point failed to load or to register; a worker missing
                handlers would leave their jobs queued, so it must not start.
        """
        for entry_point in entry_points(group=group):
            try:
                entry_point.load()(self)
            except Exception as exc:
                raise RuntimeError(
                    f"job handler plug-in {entry_point.name!r} ({entry_point.value}) failed: {exc}"
                ) from exc
            log.info("loaded job handlers from %s", entry_point.value)

    def load_reference(self, reference: str) -> None:
        """Import `module:function` and call it with this registry.

        For handlers that are not installed as a package (development, tests): the
        `--handlers` option of `spawnpoint worker`.

        Raises:
            ValueError: `reference` is not of the form `module:function`.
        """
        module_name, _, attribute = reference.partition(":")
        if not module_name or not attribute:
            raise ValueError(f"expected module:function, got {reference!r}")
        registration: Registration = getattr(importlib.import_module(module_name), attribute)
        registration(self)


class NoopPayload(BaseModel):
    """`noop` takes nothing."""

    model_config = ConfigDict(extra="forbid")


async def noop(ctx: JobContext) -> None:
    """Do nothing: the built-in job type for smoke tests and the queue benchmark."""


def default_registry(settings: Settings) -> HandlerRegistry:
    """The built-in handlers plus those of every `spawnpoint.jobs` entry point."""
    # Imported here: the built-ins read templates, policies and the audit log, which import
    # the queue and so, indirectly, this module.
    from spawnpoint.jobs.builtin import register_builtins

    registry = HandlerRegistry()
    registry.register("noop", noop, payload=NoopPayload)
    register_builtins(registry)
    registry.load_entry_points()
    return registry
