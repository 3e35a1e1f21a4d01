"""Reading an artifact create or update body: JSON, or multipart/form-data streamed to a blob.

A multipart body is parsed as it arrives (python-multipart's push parser): the `file` part
goes straight into a staged blob, hashed on the way, never held whole in memory, and is
refused with 413 at the first byte past ARTIFACT_MAX_BYTES. The other parts are small form
fields (`name`, `type`, `metadata` as JSON text, `content_type`), bounded in size. A JSON
body is read up to MAX_BODY_BYTES and checked as every JSON route's is (`kit/routing.py`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from spawnpoint.artifacts.blobstore import BlobStore, StagedBlob
from spawnpoint.kit.errors import ProblemError
from spawnpoint.kit.routing import UnsupportedMediaType, scan

M = TypeVar("M", bound=BaseModel)
FILE_FIELD = "file"
FORM_FIELDS = frozenset({"name", "type", "metadata", "content_type"})
MAX_PARTS = 16
MAX_PART_HEADER_BYTES = 8192
# What a multipart body may carry beyond its file: boundaries, part headers, form fields.
MULTIPART_OVERHEAD_BYTES = 1024 * 1024


class PayloadTooLarge(ProblemError):
    status = 413
    slug = "payload-too-large"


class BadUpload(ProblemError):
    status = 400
    slug = "bad-upload"


@dataclass
class Upload:
    """A parsed body: its validated fields, and the file part's staged blob if one came."""

    fields: BaseModel
    staged: StagedBlob | None = None
    file_content_type: str | None = None


@dataclass
class _Part:
    headers: dict[str, str] = field(default_factory=dict)
    name: str | None = None
    is_file: bool = False
    content_type: str | None = None
    data: bytearray = field(default_factory=bytearray)


def _validation_error(exc: ValidationError, source: str) -> RequestValidationError:
    return RequestValidationError(
        [
            {**error, "loc": (source, *error["loc"]), "input": None}
            for error in exc.errors(include_url=False)
        ]
    )


def _validate(model: type[M], document: Any, *, source: str) -> M:
    if not isinstance(document, dict):
        raise RequestValidationError(
            [{"type": "model_type", "loc": (source,), "msg": "must be an object", "input": None}]
        )
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise _validation_error(exc, source) from exc


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect as exc:
        raise BadUpload("The client disconnected before the body was complete.") from exc


async def read_json(request: Request, model: type[M], *, limit: int, max_depth: int) -> M:
    body = bytearray()
    async for chunk in _chunks(request):
        body += chunk
        if len(body) > limit:
            raise PayloadTooLarge(
                f"A JSON body may hold at most {limit} bytes; upload large content as "
                "multipart/form-data with a `file` part."
            )
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body",),
                    "msg": f"not JSON (or a number past a double's range): {exc.msg}",
                    "input": None,
                }
            ]
        ) from exc
    errors, _ = scan(document, max_depth=max_depth)
    if errors:
        raise RequestValidationError(errors)
    return _validate(model, document, source="body")


class _MultipartReader:
    def __init__(self, store: BlobStore, *, max_file_bytes: int, max_field_bytes: int) -> None:
        self.store = store
        self.max_file_bytes = max_file_bytes
        self.max_field_bytes = max_field_bytes
        self.events: list[tuple[str, memoryview]] = []
        self.parts: list[_Part] = []
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.header_bytes = 0
        self.staged: StagedBlob | None = None
        self.file_content_type: str | None = None
        self.ended = False

    def callbacks(self) -> dict[str, Callable[..., None]]:
        events = self.events

        def data(kind: str) -> Callable[[bytes, int, int], None]:
            # A view, not a copy: the buffers handed over are immutable `bytes`.
            return lambda buffer, start, end: events.append((kind, memoryview(buffer)[start:end]))

        def mark(kind: str) -> Callable[[], None]:
            return lambda: events.append((kind, memoryview(b"")))

        return {
            "on_part_begin": mark("part_begin"),
            "on_header_field": data("header_field"),
            "on_header_value": data("header_value"),
            "on_header_end": mark("header_end"),
            "on_headers_finished": mark("headers_finished"),
            "on_part_data": data("part_data"),
            "on_part_end": mark("part_end"),
            "on_end": mark("end"),
        }

    async def handle(self) -> None:
        events, self.events[:] = list(self.events), []
        for kind, value in events:
            if kind == "part_data":
                await self._part_data(value)
            elif kind == "part_begin":
                if len(self.parts) >= MAX_PARTS:
                    raise BadUpload(f"A multipart body may hold at most {MAX_PARTS} parts.")
                self.parts.append(_Part())
                self.header_bytes = 0
            elif kind in {"header_field", "header_value"}:
                self.header_bytes += len(value)
                if self.header_bytes > MAX_PART_HEADER_BYTES:
                    raise BadUpload(
                        f"A part's headers may hold at most {MAX_PART_HEADER_BYTES} bytes."
                    )
                (self.header_field if kind == "header_field" else self.header_value).extend(value)
            elif kind == "header_end":
                name = self.header_field.decode("latin-1").strip().lower()
                self.parts[-1].headers[name] = self.header_value.decode("latin-1").strip()
                self.header_field.clear()
                self.header_value.clear()
            elif kind == "headers_finished":
                await self._headers_finished(self.parts[-1])
            elif kind == "part_end":
                if self.parts[-1].is_file and self.staged is not None:
                    await self.staged.finish()
            elif kind == "end":
                self.ended = True

    async def _headers_finished(self, part: _Part) -> None:
        disposition, options = parse_options_header(part.headers.get("content-disposition"))
        if disposition != b"form-data" or b"name" not in options:
            raise BadUpload('Every part needs "Content-Disposition: form-data; name=...".')
        part.name = options[b"name"].decode("utf-8", "replace")
        if part.name == FILE_FIELD:
            if self.staged is not None:
                raise BadUpload("Send one `file` part.")
            part.is_file = True
            part.content_type = part.headers.get("content-type")
            self.file_content_type = part.content_type
            self.staged = await self.store.stage()
        elif part.name not in FORM_FIELDS:
            raise RequestValidationError(
                [
                    {
                        "type": "extra_forbidden",
                        "loc": ("body", part.name),
                        "msg": "no such field; a multipart body takes "
                        + ", ".join(sorted({*FORM_FIELDS, FILE_FIELD})),
                        "input": None,
                    }
                ]
            )

    async def _part_data(self, value: memoryview) -> None:
        part = self.parts[-1]
        if part.is_file:
            assert self.staged is not None
            if self.staged.size + len(value) > self.max_file_bytes:
                raise PayloadTooLarge(
                    f"Artifact content may hold at most {self.max_file_bytes} bytes "
                    "(ARTIFACT_MAX_BYTES)."
                )
            await self.staged.write(value)
            return
        part.data.extend(value)
        if len(part.data) > self.max_field_bytes:
            raise PayloadTooLarge(
                f"The form field {part.name!r} holds more than {self.max_field_bytes} bytes."
            )

    def form(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for part in self.parts:
            if part.is_file or part.name is None:
                continue
            if part.name in found:
                raise BadUpload(f"The form field {part.name!r} was sent twice.")
            try:
                text = part.data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise BadUpload(f"The form field {part.name!r} is not UTF-8.") from exc
            if part.name == "metadata":
                try:
                    found["metadata"] = orjson.loads(text)
                except orjson.JSONDecodeError as exc:
                    raise RequestValidationError(
                        [
                            {
                                "type": "json_invalid",
                                "loc": ("body", "metadata"),
                                "msg": "the metadata field must be a JSON object",
                                "input": None,
                            }
                        ]
                    ) from exc
            else:
                found[part.name] = text
        return found


async def read_multipart(
    request: Request,
    model: type[M],
    *,
    store: BlobStore,
    boundary: bytes,
    max_file_bytes: int,
    max_field_bytes: int,
    max_depth: int,
    keep: list[StagedBlob],
) -> Upload:
    """Parse the body as it streams in; the staged blob is appended to `keep` as soon as it
    exists, so the caller can discard it whatever happens after."""
    reader = _MultipartReader(store, max_file_bytes=max_file_bytes, max_field_bytes=max_field_bytes)
    try:
        parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]
    except ValueError as exc:
        raise BadUpload(f"Bad multipart boundary: {exc}") from exc
    async for chunk in _chunks(request):
        try:
            parser.write(chunk)
        except MultipartParseError as exc:
            raise BadUpload(f"Malformed multipart body: {exc}") from exc
        staged_before = reader.staged
        try:
            await reader.handle()
        finally:
            if reader.staged is not None and reader.staged is not staged_before:
                keep.append(reader.staged)
    if not reader.ended:
        raise BadUpload("The multipart body ended before its closing boundary.")
    document = reader.form()
    errors, _ = scan(document, max_depth=max_depth)
    if errors:
        raise RequestValidationError(errors)
    fields = _validate(model, document, source="body")
    if reader.staged is not None and getattr(fields, "content", None) is not None:
        raise BadUpload("Send the content either as a `file` part or inline, not both.")
    return Upload(fields=fields, staged=reader.staged, file_content_type=reader.file_content_type)


async def read_upload(
    request: Request,
    model: type[M],
    *,
    store: BlobStore,
    keep: list[StagedBlob],
) -> Upload:
    """The body of an artifact create or update, JSON or multipart (415 otherwise)."""
    settings = request.app.state.settings
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type == b"multipart/form-data":
        boundary = options.get(b"boundary")
        if not boundary:
            raise BadUpload("A multipart/form-data body needs a boundary parameter.")
        declared = request.headers.get("content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > settings.artifact_max_bytes + MULTIPART_OVERHEAD_BYTES
        ):
            raise PayloadTooLarge(
                f"Artifact content may hold at most {settings.artifact_max_bytes} bytes "
                "(ARTIFACT_MAX_BYTES)."
            )
        return await read_multipart(
            request,
            model,
            store=store,
            boundary=boundary,
            max_file_bytes=settings.artifact_max_bytes,
            max_field_bytes=settings.max_json_field_bytes + 1024,
            max_depth=settings.max_json_depth,
            keep=keep,
        )
    if content_type == b"application/json" or (
        content_type.startswith(b"application/") and content_type.endswith(b"+json")
    ):
        fields = await read_json(
            request, model, limit=settings.max_body_bytes, max_depth=settings.max_json_depth
        )
        return Upload(fields=fields)
    raise UnsupportedMediaType(
        "Send the artifact as application/json (inline base64 `content`) or as "
        "multipart/form-data with a `file` part."
    )
