from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AliasChoices, Field

from spawnpoint.kit.schemas import NAME_PATTERN, InputSchema, JSONObject, ReadSchema, UpdateSchema
from spawnpoint.models.artifacts import CONTENT_TYPE_LENGTH, NAME_LENGTH, TYPE_LENGTH

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_TOKEN = r"[A-Za-z0-9!#$%&'*+.^_`|~-]+"  # noqa: S105  (RFC 9110 token, not a secret)
# `type/subtype`, then `; name=value` parameters (value a token or a quoted string): what a
# Content-Type header may carry, and nothing (CR, LF) that could split the header.
CONTENT_TYPE_PATTERN = rf'^{_TOKEN}/{_TOKEN}(\s*;\s*{_TOKEN}=({_TOKEN}|"[^"\\\r\n]*"))*$'

ArtifactName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=NAME_LENGTH,
        pattern=NAME_PATTERN,
        description="Free text; lists filter by its prefix.",
    ),
]
ArtifactType = Annotated[
    str,
    Field(
        min_length=1,
        max_length=TYPE_LENGTH,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._/+-]*$",
        description="What kind of artifact this is (`build-plan`, `audit-report`, ...).",
    ),
]
ContentType = Annotated[
    str,
    Field(
        max_length=CONTENT_TYPE_LENGTH,
        pattern=CONTENT_TYPE_PATTERN,
        description="Media type the download is served with. Default: the file part's, "
        f"else {DEFAULT_CONTENT_TYPE}.",
    ),
]


def decode_base64(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("must be standard base64 (RFC 4648 section 4, with padding)") from exc


Base64Content = Annotated[
    str,
    AfterValidator(lambda value: decode_base64(value) and value),
    Field(
        description="Inline content, base64-encoded. For large content use a multipart "
        "upload with a `file` part instead.",
        json_schema_extra={"contentEncoding": "base64"},
    ),
]


class ArtifactCreate(InputSchema):
    name: ArtifactName
    type: ArtifactType
    metadata: JSONObject = Field(default_factory=dict)
    content: Base64Content | None = None
    content_type: ContentType | None = None


class ArtifactUpdate(UpdateSchema):
    """Fields left out keep their value; `content` (or a `file` part) replaces the content."""

    name: ArtifactName | None = None
    type: ArtifactType | None = None
    metadata: JSONObject | None = None
    content: Base64Content | None = None
    content_type: ContentType | None = None


class ArtifactRead(ReadSchema):
    id: uuid.UUID
    tenant_id: uuid.UUID
    name: str
    type: str
    metadata: dict[str, Any] = Field(validation_alias=AliasChoices("metadata_", "metadata"))
    content_type: str | None
    size: int | None = Field(description="Bytes of content; null without content.")
    sha256: str | None = Field(description="SHA-256 of the content, hex; the download's ETag.")
    manifest: str | None = Field(description="The content's key in the blob store.")
    has_content: bool
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
