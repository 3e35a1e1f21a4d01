"""RFC 9457 problem details: the one shape every error response takes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from spawnpoint.db import first_line, is_unavailable

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("spawnpoint.errors")


class ProblemError(Exception):
    """An error the API reports to its caller as a problem document."""

    status: int = 500
    slug: str | None = None

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail)
        self.detail = detail
        self.headers = headers
        self.extra = extra

    def document(self) -> dict[str, Any]:
        return problem_document(self.status, self.detail, slug=self.slug, **self.extra)


class Unauthorized(ProblemError):
    status = 401
    slug = "unauthorized"

    def __init__(self, detail: str = "Missing or invalid credentials.") -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ProblemError):
    status = 403
    slug = "forbidden"


class NotFound(ProblemError):
    status = 404
    slug = "not-found"


class Conflict(ProblemError):
    status = 409
    slug = "conflict"


class Unprocessable(ProblemError):
    status = 422
    slug = "validation-error"


class ServiceUnavailable(ProblemError):
    status = 503
    slug = "unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    slug = "database-unavailable"


DATABASE_RETRY_AFTER_SECONDS = 2


def problem_document(
    status: int, detail: str | None = None, *, slug: str | None = None, **extra: Any
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "type": f"urn:spawnpoint:problem:{slug}" if slug else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        doc["detail"] = detail
    doc.update(extra)
    return doc


def problem_response(doc: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(doc, status_code=doc["status"], headers=headers, media_type=PROBLEM_JSON)


def _pointer(loc: tuple[Any, ...]) -> str:
    # ("body", "spec", "cpu") -> "#/spec/cpu"; query and path parameters keep their source.
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return "#/" + "/".join(parts)


async def _on_problem(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.document(), exc.headers)


def _message(error: Any) -> str:
    # A JSON syntax error's message says what is wrong: "number is infinity when parsed ...".
    reason = (error.get("ctx") or {}).get("error")
    if error["type"] == "json_invalid" and isinstance(reason, str):
        return f"{error['msg']}: {reason}"
    return str(error["msg"])


async def _on_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"pointer": _pointer(tuple(err["loc"])), "detail": _message(err), "type": err["type"]}
        for err in exc.errors()
    ]
    doc = problem_document(
        422, "The request is invalid; see errors.", slug="validation-error", errors=errors
    )
    return problem_response(doc)


async def _on_http(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail: str | None = exc.detail if isinstance(exc.detail, str) else None
    if detail == HTTPStatus(exc.status_code).phrase:
        detail = None
    return problem_response(problem_document(exc.status_code, detail), dict(exc.headers or {}))


def _contended(error: BaseException) -> bool:
    """A deadlock or serialisation failure: the database undid this request to let a
    concurrent one through. Nothing was written; the same request may succeed if retried."""
    if isinstance(error, DBAPIError) and error.orig is not None:
        error = error.orig
    return isinstance(error, psycopg.Error) and error.sqlstate in {"40P01", "40001"}


async def _on_database_error(request: Request, exc: Exception) -> JSONResponse:
    # A restart or failover is the caller's to retry, not a bug: 503, one log line. So is
    # losing a race the database broke (409). Any other database error stays unexpected
    # (500 with its traceback, below).
    if _contended(exc):
        log.warning("%s %s lost a race: %s", request.method, request.url.path, first_line(exc))
        conflict = Conflict("A concurrent change got in the way; nothing was written, retry.")
        return problem_response(conflict.document(), conflict.headers)
    if not is_unavailable(exc):
        raise exc
    log.warning(
        "database unavailable on %s %s: %s", request.method, request.url.path, first_line(exc)
    )
    problem = DatabaseUnavailable(
        "The database is unavailable; retry shortly.",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )
    return problem_response(problem.document(), problem.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(problem_document(500, "An unexpected error occurred."))


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    for database_error in (DBAPIError, SQLAlchemyTimeoutError, psycopg.Error):
        app.add_exception_handler(database_error, _on_database_error)
    app.add_exception_handler(Exception, _on_unexpected)


def field_error(pointer: str, detail: str) -> Unprocessable:
    """A 422 about one field of the request body, shaped like validation errors."""
    return Unprocessable(
        "The request is invalid; see errors.",
        errors=[{"pointer": pointer, "detail": detail, "type": "value_error"}],
    )


def as_utc(value: datetime | None, pointer: str) -> datetime | None:
    """`value` in UTC; a 422 when that falls outside the calendar (year 1 at +14:00)."""
    if value is None:
        return None
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise field_error(pointer, "The time is outside the years 1 to 9999 in UTC.") from exc
