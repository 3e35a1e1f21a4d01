from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request, Response, status

from spawnpoint.apikeys.repository import ApiKeyRepository
from spawnpoint.apikeys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead
from spawnpoint.apikeys.service import ApiKeyService
from spawnpoint.deps import RequireViewer, Scope, Session, get_unit_of_work
from spawnpoint.kit.pagination import Page, Pagination
from spawnpoint.kit.routing import StrictRouter

router = StrictRouter(prefix="/api/api-keys", tags=["api keys"])
AUDIT = {"x-audit-resource": "api_key"}


async def get_api_key_service(session: Session, scope: Scope) -> ApiKeyService:
    return ApiKeyService(ApiKeyRepository(session, scope))


ApiKeys = Annotated[ApiKeyService, Depends(get_api_key_service)]


@router.get("", summary="List API keys")
async def list_api_keys(
    actor: RequireViewer, api_keys: ApiKeys, page: Pagination
) -> Page[ApiKeyRead]:
    """List your API keys (admins: every key of the tenant)."""
    items, cursor = await api_keys.list_page(actor=actor, params=page)
    return Page(items=[ApiKeyRead.model_validate(k) for k in items], next_cursor=cursor)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create API key",
    openapi_extra={**AUDIT, "x-audit-action": "api_key.create"},
)
async def create_api_key(
    actor: RequireViewer, api_keys: ApiKeys, key_in: ApiKeyCreate
) -> ApiKeyCreated:
    """Create an API key acting for you; its secret is in the answer, and only there."""
    key, secret = await api_keys.create(actor=actor, key_in=key_in)
    return ApiKeyCreated.model_validate(
        {**ApiKeyRead.model_validate(key).model_dump(), "key": secret}
    )


@router.get("/{api_key_id}", summary="Retrieve API key")
async def read_api_key(
    actor: RequireViewer, api_keys: ApiKeys, api_key_id: uuid.UUID
) -> ApiKeyRead:
    """Retrieve one API key (never its secret)."""
    return ApiKeyRead.model_validate(await api_keys.get(actor=actor, key_id=api_key_id))


@router.delete(
    "/{api_key_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke API key",
    openapi_extra={**AUDIT, "x-audit-action": "api_key.delete"},
)
async def revoke_api_key(
    actor: RequireViewer, api_keys: ApiKeys, api_key_id: uuid.UUID, request: Request
) -> Response:
    """Revoke an API key: it answers 401 from now on."""
    await api_keys.revoke(actor=actor, key_id=api_key_id)
    uow = await get_unit_of_work(request)
    uow.on_commit(request.app.state.accounts.clear, key="accounts.clear")
    return Response(status_code=status.HTTP_204_NO_CONTENT)
