"""The route class every router uses: strict JSON bodies, known query parameters only.

A request body is parsed once, by orjson, which refuses `NaN`, `Infinity` and numbers that
overflow a double; then one walk refuses NUL characters (PostgreSQL text cannot hold
them), integers past 64 bits and nesting deeper than MAX_JSON_DEPTH, each with a pointer
to where it is. A body on a JSON route must say it is JSON (415 otherwise), and a query
parameter the route does not know is a 422, so `?tenant_id=` is never silently ignored.
"""

from __future__ import annotations

import email.message
import json
import logging
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import (
    APIRoute,
    APIRouter,
    _EffectiveRouteContext,
    _get_scope_included_router,
)
from sqlalchemy.ext.asyncio import AsyncSession
from starlette._utils import get_route_path
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from spawnpoint.db import is_unavailable
from spawnpoint.kit.auditing import REQUEST_ID, AuditedAction, RequestAudit, audited_action
from spawnpoint.kit.errors import ProblemError
from spawnpoint.kit.metrics import UNAUTHENTICATED_WRITES
from spawnpoint.kit.schemas import json_field_limit
from spawnpoint.logs import request_context
from spawnpoint.security import authenticate
from spawnpoint.uow import ReadOnDemand

log = logging.getLogger("spawnpoint.audit")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Refusals of the caller's rights or quota; any other failure is recorded as `failed`.
DENIED = frozenset({403, 429})
NON_FINITE = "numbers must be finite: no NaN, no Infinity, nothing past a double's range"


class UnsupportedMediaType(ProblemError):
    status = 415
    slug = "unsupported-media-type"


def _error(loc: tuple[Any, ...], kind: str, message: str) -> dict[str, Any]:
    return {"type": kind, "loc": loc, "msg": message, "input": None}


def scan(document: Any, *, max_depth: int) -> tuple[list[dict[str, Any]], bool]:
    """What a parsed JSON document holds that no column can store, with where it is.

    Returns:
        The errors (at most 20), and whether the document holds any float at all.
    """
    errors: list[dict[str, Any]] = []
    floats = False
    stack: list[tuple[Any, tuple[Any, ...]]] = [(document, ("body",))]
    while stack and len(errors) < 20:
        value, loc = stack.pop()
        if len(loc) - 1 > max_depth:
            errors.append(_error(loc, "json_too_deep", f"nesting deeper than {max_depth} levels"))
            continue
        if isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    errors.append(_error((*loc, key), "string_nul", "keys may not contain NUL"))
                stack.append((item, (*loc, key)))
        elif isinstance(value, list):
            stack.extend((item, (*loc, index)) for index, item in enumerate(value))
        elif isinstance(value, str):
            if "\x00" in value:
                errors.append(_error(loc, "string_nul", "strings may not contain NUL"))
        elif isinstance(value, float):
            floats = True
            if not math.isfinite(value):
                errors.append(_error(loc, "finite_number", NON_FINITE))
        elif isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            errors.append(_error(loc, "int_range", "integers must fit in 64 bits"))
    return errors, floats


def _lenient(body: bytes) -> Any:
    """`body` parsed as Python's json module would (NaN, Infinity, 1e309 become floats).

    Used only to say where a body orjson refused is wrong; None when it is not JSON at all.
    """
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def query_names(dependant: Dependant) -> frozenset[str]:
    """Every query parameter a route reads, its dependencies' included."""
    names: set[str] = set()
    stack = [dependant]
    while stack:
        current = stack.pop()
        names.update(param.alias for param in current.query_params)
        stack.extend(current.dependencies)
    return frozenset(names)


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            # orjson.JSONDecodeError is a json.JSONDecodeError: FastAPI answers it with 422.
            self._json = orjson.loads(await self.body())
        return self._json


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def _check_body(request: StrictJSONRequest, *, max_depth: int) -> None:
    if not _is_json(request.headers.get("content-type")):
        raise UnsupportedMediaType(
            "This route takes a JSON body: send it with Content-Type: application/json."
        )
    try:
        document = await request.json()
    except orjson.JSONDecodeError as exc:
        # Point at the non-finite number when that is all that is wrong, else at the syntax.
        errors, _ = scan(_lenient(await request.body()), max_depth=max_depth)
        raise RequestValidationError(
            errors
            or [_error(("body",), "json_invalid", f"not JSON: {exc.msg} at character {exc.pos}")]
        ) from exc
    errors, floats = scan(document, max_depth=max_depth)
    if floats and not errors:
        # orjson reads an integer past 64 bits as a float; Python's parser keeps it exact,
        # so it can be refused rather than stored rounded.
        errors, _ = scan(_lenient(await request.body()), max_depth=max_depth)
    if errors:
        raise RequestValidationError(errors)


class StrictRoute(APIRoute):
    """Strict bodies and query strings; a mutating route's request owns a unit of work.

    The unit of work opened here is the request's only transaction (`deps.get_session`
    hands out its session): it commits once the handler has produced the response, with
    the request's audit entry (`kit/auditing.py`) in the same commit. When the request
    fails, it rolls back and the refusal's entry is written in a transaction of its own.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        known = query_names(self.dependant)
        takes_body = self.body_field is not None
        what = audited_action(self)
        template = self.path

        async def strict_handler(request: Request) -> Response:
            context = request_context()
            if context is not None:
                context.route = template  # the metrics' and logs' route label
            strict = StrictJSONRequest(request.scope, request.receive)
            settings = request.app.state.settings
            token = json_field_limit.set(settings.max_json_field_bytes)
            try:
                if what is None:
                    await _check(strict, known=known, takes_body=takes_body)
                    return await _read(strict, handler)
                return await _audited(strict, handler, what, known=known, takes_body=takes_body)
            finally:
                json_field_limit.reset(token)

        return strict_handler


async def _check(request: StrictJSONRequest, *, known: frozenset[str], takes_body: bool) -> None:
    errors = [
        _error(("query", name), "unknown_parameter", "this route has no such parameter")
        for name in request.query_params
        if name not in known
    ]
    errors += [
        _error((source, name), "string_nul", "may not contain NUL")
        for source, values in (
            ("query", request.query_params.multi_items()),
            ("path", request.path_params.items()),
        )
        for name, value in values
        if isinstance(value, str) and "\x00" in value
    ]
    if errors:
        raise RequestValidationError(errors)
    if takes_body and await request.body():
        await _check_body(request, max_depth=request.app.state.settings.max_json_depth)


async def _read(
    request: StrictJSONRequest, handler: Callable[[Request], Coroutine[Any, Any, Response]]
) -> Response:
    """Run a read; the transaction it asked for (`deps.get_session`) ends before the answer."""
    reads = request.state.reads = ReadOnDemand(request.app.state.database)
    try:
        response = await handler(request)
    except BaseException as exc:
        await reads.close(exc)
        raise
    await reads.close()
    return response


async def _audited(
    request: StrictJSONRequest,
    handler: Callable[[Request], Coroutine[Any, Any, Response]],
    what: AuditedAction,
    *,
    known: frozenset[str],
    takes_body: bool,
) -> Response:
    """Run a mutating request in its own unit of work, audited whatever the outcome."""
    audit = RequestAudit.start(
        what,
        path_params=dict(request.path_params),
        headers=request.headers,
        client_host=request.client.host if request.client else None,
        request_id=getattr(request.state, "request_id", None),
    )
    database = request.app.state.database
    refusals: list[dict[str, Any]] = []
    try:
        await _check(request, known=known, takes_body=takes_body)
        async with database.unit_of_work(write=True, request=audit) as uow:
            request.state.uow = uow
            refusals = uow.refusals
            response = await handler(request)
    except Exception as exc:
        await _record_refusal(request, audit, exc, refusals)
        raise
    finally:
        request.state.uow = None
    # The request middleware (kit/telemetry.py) puts the same id on every response.
    response.headers[REQUEST_ID] = audit.request_id
    return response


def _status(exc: Exception) -> int:
    if isinstance(exc, ProblemError):
        return exc.status
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code
    if isinstance(exc, RequestValidationError):
        return 422
    return 500


async def _record_refusal(
    request: StrictJSONRequest, audit: RequestAudit, exc: Exception, refusals: list[dict[str, Any]]
) -> None:
    """Write the audit entry (and outbox rows) of a request that failed, in a new transaction.

    Never raises: the caller's own error is what the client must see. Nothing is written
    when the database itself is what failed, or for a caller who is not authenticated
    (counted in `spawnpoint_unauthenticated_writes_total` instead: no tenant to log it to).
    """
    status = _status(exc)
    if is_unavailable(exc):
        return
    state = request.app.state
    try:
        async with state.database.unit_of_work(write=True) as uow:
            if audit.principal is None:
                own: AsyncSession = uow.session

                async def session() -> AsyncSession:
                    return own

                try:
                    audit.principal = await authenticate(
                        state.settings,
                        session,
                        state.accounts,
                        request.headers.get("authorization"),
                        request.headers.get("x-api-key"),
                    )
                except ProblemError:
                    UNAUTHENTICATED_WRITES.inc()
                    return
            for row in refusals:
                uow.emit(row)
            detail = exc.detail if isinstance(exc, ProblemError) else type(exc).__name__
            uow.record(
                audit.draft(
                    "denied" if status in DENIED else "failed",
                    status=status,
                    detail=str(detail)[:500],
                )
            )
    except Exception:
        log.exception("could not record the audit entry of a failed %s", audit.what.action)


_GROUP = re.compile(r"\(\?P<\w+>")


class StrictRouter(APIRouter):
    """A router of `StrictRoute`s that turns a path none of its routes serves away at once.

    The application asks each included router in turn whether it serves a request, and
    FastAPI asks each route of each router with a few context switches of its own: a poll
    of `GET /api/workspaces/{id}` cost some sixty route checks before its own. Here one
    regular expression, the union of the router's route paths, answers for the whole
    router first; a path it matches is looked up route by route as before.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(route_class=StrictRoute, **options)
        self._paths: tuple[object, int, re.Pattern[str] | None] | None = None

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        included = _get_scope_included_router(scope)
        if included is not None and included.original_router is self:
            paths = self._union(included)
            if paths is not None and paths.match(get_route_path(scope)) is None:
                return Match.NONE, {}
        return super().matches(scope)

    def _union(self, included: Any) -> re.Pattern[str] | None:
        """Every path the router serves where `included` includes it, as one pattern (None
        when one of its routes is not a plain path: those are asked one by one)."""
        version = self._get_routes_version()
        cached = self._paths
        if cached is not None and cached[0] is included and cached[1] == version:
            return cached[2]
        patterns: list[str] = []
        union: re.Pattern[str] | None = None
        for candidate in included.effective_candidates():
            if not (
                isinstance(candidate, _EffectiveRouteContext)
                and isinstance(candidate.original_route, APIRoute)
            ):
                break
            pattern = candidate.path_regex.pattern
            patterns.append(_GROUP.sub("(?:", pattern.removeprefix("^").removesuffix("$")))
        else:
            union = re.compile("^(?:" + "|".join(patterns) + ")$")
        self._paths = (included, version, union)
        return union
