from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Query, Request, Response, status
from fastapi.responses import StreamingResponse

from spawnpoint.artifacts.blobstore import BlobStore, StagedBlob
from spawnpoint.artifacts.repository import ArtifactRepository
from spawnpoint.artifacts.schemas import (
    DEFAULT_CONTENT_TYPE,
    ArtifactCreate,
    ArtifactRead,
    ArtifactType,
    ArtifactUpdate,
    decode_base64,
)
from spawnpoint.artifacts.service import ArtifactService, stage_bytes
from spawnpoint.artifacts.upload import Upload, read_upload
from spawnpoint.deps import RequirePublisher, RequireViewer, Scope, Session
from spawnpoint.kit.errors import ProblemError
from spawnpoint.kit.methods import asked_head
from spawnpoint.kit.pagination import Page, Pagination
from spawnpoint.kit.routing import StrictRouter

router = StrictRouter(prefix="/api/artifacts", tags=["artifacts"])
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(ProblemError):
    status = 416
    slug = "range-not-satisfiable"


async def get_blob_store(request: Request) -> BlobStore:
    store: BlobStore = request.app.state.blobs
    return store


Blobs = Annotated[BlobStore, Depends(get_blob_store)]


async def get_artifact_service(
    request: Request, session: Session, scope: Scope, store: Blobs
) -> ArtifactService:
    return ArtifactService(
        ArtifactRepository(session, scope), store=store, uow=getattr(request.state, "uow", None)
    )


Artifacts = Annotated[ArtifactService, Depends(get_artifact_service)]


async def staged_blobs() -> AsyncIterator[list[StagedBlob]]:
    """Blobs an upload staged; whatever was not published by the commit is removed.

    Request-scoped: this runs after the response, so after the unit of work has committed
    and published (or rolled back, or never started because the body was refused).
    """
    staged: list[StagedBlob] = []
    try:
        yield staged
    finally:
        for blob in staged:
            await blob.discard()


Staged = Annotated[list[StagedBlob], Depends(staged_blobs)]


def _body_schema(model: type[Any]) -> dict[str, Any]:
    """The two bodies a create or update takes: JSON, or multipart with a `file` part."""
    json_schema = model.model_json_schema()
    form = {
        "type": "object",
        "properties": {
            **{
                name: prop
                for name, prop in json_schema["properties"].items()
                if name not in {"content", "metadata"}
            },
            "metadata": {"type": "string", "description": "A JSON object, as text."},
            "file": {"type": "string", "format": "binary", "description": "The content."},
        },
        "required": json_schema.get("required", []),
    }
    return {
        "responses": {
            "400": {"description": "The multipart body is malformed, or was cut off."},
            "413": {
                "description": "The body is larger than MAX_BODY_BYTES (JSON) or the content "
                "larger than ARTIFACT_MAX_BYTES (multipart)."
            },
        },
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": form},
            },
        },
    }


async def _read(
    request: Request,
    model: type[ArtifactCreate] | type[ArtifactUpdate],
    store: BlobStore,
    staged: list[StagedBlob],
) -> Upload:
    """The body, with inline content staged too (so a failed commit removes it as well)."""
    upload = await read_upload(request, model, store=store, keep=staged)
    inline = getattr(upload.fields, "content", None)
    if upload.staged is None and inline is not None:
        upload.staged = await stage_bytes(store, decode_base64(inline))
        staged.append(upload.staged)
    return upload


@router.get("", summary="List artifacts")
async def list_artifacts(
    _: RequireViewer,
    artifacts: Artifacts,
    page: Pagination,
    type: Annotated[ArtifactType | None, Query(description="Only artifacts of this type.")] = None,
    name: Annotated[
        str | None,
        Query(max_length=200, description="Only artifacts whose name starts with this."),
    ] = None,
) -> Page[ArtifactRead]:
    """List the artifacts of the caller's tenant, oldest first."""
    items, cursor = await artifacts.list_page(params=page, type=type, name_prefix=name)
    return Page(items=[ArtifactRead.model_validate(a) for a in items], next_cursor=cursor)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create artifact",
    openapi_extra=_body_schema(ArtifactCreate),
)
async def create_artifact(
    request: Request, actor: RequirePublisher, artifacts: Artifacts, staged: Staged
) -> ArtifactRead:
    """Create an artifact: JSON (inline base64 `content`) or multipart with a `file` part."""
    upload = await _read(request, ArtifactCreate, artifacts.store, staged)
    assert isinstance(upload.fields, ArtifactCreate)
    artifact = await artifacts.create(
        tenant_id=actor.tenant_id,
        actor_id=actor.user_id,
        artifact_in=upload.fields,
        staged=upload.staged,
        file_content_type=upload.file_content_type,
    )
    return ArtifactRead.model_validate(artifact)


@router.get("/{artifact_id}", summary="Retrieve artifact")
async def read_artifact(
    _: RequireViewer, artifacts: Artifacts, artifact_id: uuid.UUID
) -> ArtifactRead:
    """Retrieve one artifact's record."""
    return ArtifactRead.model_validate(await artifacts.get(artifact_id=artifact_id))


@router.put(
    "/{artifact_id}",
    summary="Update artifact",
    openapi_extra=_body_schema(ArtifactUpdate),
)
async def update_artifact(
    request: Request,
    _: RequirePublisher,
    artifacts: Artifacts,
    staged: Staged,
    artifact_id: uuid.UUID,
) -> ArtifactRead:
    """Update an artifact's fields; new content (inline or a `file` part) replaces the old."""
    await artifacts.get(artifact_id=artifact_id)  # 404 before a large body is read
    upload = await _read(request, ArtifactUpdate, artifacts.store, staged)
    assert isinstance(upload.fields, ArtifactUpdate)
    artifact = await artifacts.update(
        artifact_id=artifact_id,
        artifact_in=upload.fields,
        staged=upload.staged,
        file_content_type=upload.file_content_type,
    )
    return ArtifactRead.model_validate(artifact)


@router.delete("/{artifact_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete artifact")
async def delete_artifact(
    _: RequirePublisher, artifacts: Artifacts, artifact_id: uuid.UUID
) -> Response:
    """Delete an artifact; its content is removed once the delete has committed."""
    await artifacts.delete(artifact_id=artifact_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _etag_matches(header: str, etag: str) -> bool:
    candidates = [value.strip() for value in header.split(",")]
    return "*" in candidates or any(value.removeprefix("W/") == etag for value in candidates)


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one range `header` asks for, as (start, stop); None to send everything.

    A header this does not understand (several ranges, another unit) is ignored, as RFC
    9110 allows; a range that lies outside the content is a 416.
    """
    if header is None:
        return None
    match = RANGE.match(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        length = int(last)
        if length == 0 or size == 0:
            raise _unsatisfiable(size)
        return max(size - length, 0), size
    start = int(first)
    stop = size if last == "" else min(int(last) + 1, size)
    if last != "" and int(last) < start:
        return None
    if start >= size:
        raise _unsatisfiable(size)
    return start, stop


def _unsatisfiable(size: int) -> RangeNotSatisfiable:
    return RangeNotSatisfiable(
        f"The content holds {size} bytes; the range asked for lies outside it.",
        headers={"Content-Range": f"bytes */{size}"},
    )


@router.get(
    "/{artifact_id}/download",
    summary="Download artifact content",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The content."},
        206: {"content": {"application/octet-stream": {}}, "description": "The range asked."},
        304: {"description": "Unchanged: the ETag matches If-None-Match."},
        416: {"description": "The range asked for lies outside the content."},
    },
)
async def download_artifact(
    request: Request, _: RequireViewer, artifacts: Artifacts, artifact_id: uuid.UUID
) -> Response:
    """Stream an artifact's content; honours Range (206) and If-None-Match (304)."""
    artifact, reader = await artifacts.open_content(artifact_id=artifact_id)
    etag = f'"{artifact.sha256}"'
    headers = {"ETag": etag, "Accept-Ranges": "bytes", "Cache-Control": "private, no-cache"}
    try:
        match = request.headers.get("if-none-match")
        if match is not None and _etag_matches(match, etag):
            await reader.close()
            return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers=headers)
        wanted = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if if_range is not None and if_range.strip() != etag:
            wanted = None
        size = reader.size
        span = _byte_range(wanted, size)
    except BaseException:
        await reader.close()
        raise
    start, stop = span or (0, size)
    headers["Content-Length"] = str(stop - start)
    headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(artifact.name)}"
    # As stored: Starlette would add a charset to text/* types that the content may not have.
    headers["Content-Type"] = artifact.content_type or DEFAULT_CONTENT_TYPE
    code = status.HTTP_200_OK
    if span is not None:
        code = status.HTTP_206_PARTIAL_CONTENT
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    if asked_head(request):  # the same headers, without reading the content
        await reader.close()
        return Response(status_code=code, headers=headers)
    return StreamingResponse(
        reader.iter_range(start, stop),
        status_code=code,
        headers=headers,
    )
