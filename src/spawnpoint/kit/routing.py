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
import math
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from spawnpoint.kit.errors import ProblemError
from spawnpoint.kit.schemas import json_field_limit

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
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
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        known = query_names(self.dependant)
        takes_body = self.body_field is not None

        async def strict_handler(request: Request) -> Response:
            strict = StrictJSONRequest(request.scope, request.receive)
            settings = request.app.state.settings
            errors = [
                _error(("query", name), "unknown_parameter", "this route has no such parameter")
                for name in strict.query_params
                if name not in known
            ]
            errors += [
                _error((source, name), "string_nul", "may not contain NUL")
                for source, values in (
                    ("query", strict.query_params.multi_items()),
                    ("path", strict.path_params.items()),
                )
                for name, value in values
                if "\x00" in value
            ]
            if errors:
                raise RequestValidationError(errors)
            if takes_body and await strict.body():
                await _check_body(strict, max_depth=settings.max_json_depth)
            token = json_field_limit.set(settings.max_json_field_bytes)
            try:
                return await handler(strict)
            finally:
                json_field_limit.reset(token)

        return strict_handler
