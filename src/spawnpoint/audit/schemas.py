from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from spawnpoint.kit.schemas import ReadSchema


class AuditEntryRead(ReadSchema):
    seq: int = Field(description="Position in the tenant's chain: 1, 2, 3, ... without gaps.")
    time: datetime
    tenant_id: uuid.UUID | None = Field(description="None: the platform chain.")
    actor_type: Literal["user", "api_key", "system"]
    actor_id: str | None
    action: str = Field(description="What was done, `<resource>.<verb>`: `workspace.spawn`.")
    resource_type: str
    resource_id: str | None
    result: Literal["success", "denied", "failed"]
    ip: str | None
    user_agent: str | None
    reason: str = Field(description="The request's X-Reason header; `unspecified` without one.")
    request_id: str | None
    details: dict[str, Any] = Field(
        description="What changed (for updates, each field's old and new value); never secrets."
    )
    prev_hash: str = Field(description="The previous entry's hash (64 zeros before the first).")
    hash: str = Field(
        description="SHA-256 (hex) over prev_hash and this entry's canonical JSON; the README "
        "says exactly how to recompute it."
    )


class AuditVerifyRead(BaseModel):
    valid: bool
    checked: int = Field(description="Entries recomputed before the answer was known.")
    first_invalid_seq: int | None = Field(
        description="The first entry that is edited, missing, inserted, out of order or "
        "beyond a truncated end; null when the chain is valid."
    )
    reason: str | None = Field(description="What is wrong there; null when valid.")


class AuditCheckpointRead(ReadSchema):
    id: uuid.UUID
    tenant_id: uuid.UUID | None = Field(description="None: the platform chain.")
    seq: int = Field(description="The chain's last entry when the checkpoint was signed.")
    hash: str = Field(description="That entry's hash.")
    time: datetime
    key_id: str = Field(description="Which key signed it: see GET /api/audit/public-key.")
    signature: str = Field(
        description="Ed25519 signature (base64, 64 bytes) of the canonical JSON of "
        '{"hash", "key_id", "seq", "tenant_id", "time"} (see the README).'
    )


class AuditPublicKeyRead(BaseModel):
    algorithm: Literal["Ed25519"]
    key_id: str = Field(
        description="The first 16 hex digits of SHA-256 over the raw 32-byte public key."
    )
    public_key: str = Field(description="The raw 32-byte Ed25519 public key, in base64.")
    public_key_pem: str = Field(description="The same key as a SubjectPublicKeyInfo PEM.")
