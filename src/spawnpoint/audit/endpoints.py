from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import Depends, Query
from pydantic import AwareDatetime, BeforeValidator

from spawnpoint.audit.keys import SigningKey
from spawnpoint.audit.repository import AuditFilters, AuditLog
from spawnpoint.audit.schemas import (
    AuditCheckpointRead,
    AuditEntryRead,
    AuditPublicKeyRead,
    AuditVerifyRead,
)
from spawnpoint.audit.service import AuditService, readable_chain, verify_chain
from spawnpoint.deps import DB, AppSettings, RequireAuditReader, Scope, Session
from spawnpoint.kit.errors import as_utc
from spawnpoint.kit.pagination import Page, Pagination
from spawnpoint.kit.routing import StrictRouter
from spawnpoint.models.audit import ACTION_LENGTH, RESOURCE_TYPE_LENGTH

router = StrictRouter(prefix="/api/audit", tags=["audit"])
TEXT_FILTER_LENGTH = 500


def _not_a_number(value: object) -> object:
    # pydantic reads a bare number as Unix time; the schema says date-time, so refuse it.
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("must be an RFC 3339 date-time with an offset, not a number")
    return value


Time = Annotated[AwareDatetime, BeforeValidator(_not_a_number)]


TenantChain = Annotated[
    uuid.UUID | None,
    Query(
        description="Operators only: this tenant's chain (the nil UUID: the platform's). "
        "Default: your tenant's."
    ),
]


async def get_audit_service(session: Session, scope: Scope) -> AuditService:
    return AuditService(AuditLog(session), scope=scope)


Audit = Annotated[AuditService, Depends(get_audit_service)]


@router.get("", summary="List audit entries")
async def list_audit_entries(
    _: RequireAuditReader,
    audit: Audit,
    page: Pagination,
    since: Annotated[
        Time | None,
        Query(description="Only entries at or after this time (with a UTC offset)."),
    ] = None,
    until: Annotated[
        Time | None,
        Query(description="Only entries before this time (with a UTC offset)."),
    ] = None,
    actor_id: Annotated[
        str | None, Query(max_length=TEXT_FILTER_LENGTH, description="Only this actor's entries.")
    ] = None,
    action: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=ACTION_LENGTH,
            pattern=r"^[!-~]+$",
            description="Only actions starting with this, taken literally "
            "(`workspace.` matches `workspace.spawn`).",
        ),
    ] = None,
    resource_type: Annotated[
        str | None, Query(max_length=RESOURCE_TYPE_LENGTH, description="Only this resource type.")
    ] = None,
    resource_id: Annotated[
        str | None, Query(max_length=TEXT_FILTER_LENGTH, description="Only this resource.")
    ] = None,
    result: Annotated[
        Literal["success", "denied", "failed"] | None, Query(description="Only this outcome.")
    ] = None,
    tenant_id: TenantChain = None,
) -> Page[AuditEntryRead]:
    """List a tenant's audit entries, newest first."""
    filters = AuditFilters(
        since=as_utc(since, "#/query/since"),
        until=as_utc(until, "#/query/until"),
        actor_id=actor_id,
        action_prefix=action,
        resource_type=resource_type,
        resource_id=resource_id,
        result=result,
    )
    items, cursor = await audit.list_page(tenant_id=tenant_id, filters=filters, params=page)
    return Page(items=[AuditEntryRead.model_validate(e) for e in items], next_cursor=cursor)


@router.get("/verify", summary="Verify audit chain")
async def verify_audit_chain(
    _: RequireAuditReader,
    scope: Scope,
    database: DB,
    settings: AppSettings,
    tenant_id: TenantChain = None,
) -> AuditVerifyRead:
    """Recompute a tenant's chain and compare it with its latest signed checkpoint."""
    chain_id = readable_chain(scope, tenant_id)
    result = await verify_chain(database, SigningKey.from_settings(settings), chain_id)
    return AuditVerifyRead(
        valid=result.valid,
        checked=result.checked,
        first_invalid_seq=result.first_invalid_seq,
        reason=result.reason,
    )


@router.get("/checkpoints", summary="List audit checkpoints")
async def list_audit_checkpoints(
    _: RequireAuditReader, audit: Audit, page: Pagination, tenant_id: TenantChain = None
) -> Page[AuditCheckpointRead]:
    """List a tenant chain's signed checkpoints, newest first."""
    items, cursor = await audit.list_checkpoints(tenant_id=tenant_id, params=page)
    return Page(items=[AuditCheckpointRead.model_validate(c) for c in items], next_cursor=cursor)


@router.get("/public-key", summary="Retrieve audit public key")
async def read_audit_public_key(_: RequireAuditReader, settings: AppSettings) -> AuditPublicKeyRead:
    """Retrieve the Ed25519 public key that checks checkpoint signatures."""
    key = SigningKey.from_settings(settings)
    return AuditPublicKeyRead(
        algorithm="Ed25519",
        key_id=key.key_id,
        public_key=key.public_base64,
        public_key_pem=key.public_pem,
    )
