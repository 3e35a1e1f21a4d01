from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Query, Response, status

from spawnpoint.auth.repository import PasswordTokenRepository
from spawnpoint.auth.schemas import UserCreated
from spawnpoint.auth.service import issue_password_token
from spawnpoint.deps import AppSettings, ChangesAccounts, RequireAdmin, Scope, Session
from spawnpoint.kit.pagination import Page, Pagination
from spawnpoint.kit.routing import StrictRouter
from spawnpoint.teardown.endpoints import Cascade, teardown_delete, teardown_response
from spawnpoint.teardown.service import WorkspaceTeardown
from spawnpoint.tenants.repository import TenantRepository
from spawnpoint.users.repository import UserRepository
from spawnpoint.users.schemas import UserCreate, UserRead, UserUpdate
from spawnpoint.users.service import UserService

router = StrictRouter(prefix="/api/users", tags=["users"])


async def get_user_service(session: Session, scope: Scope) -> UserService:
    return UserService(
        UserRepository(session, scope),
        TenantRepository(session, scope),
        teardown=WorkspaceTeardown(session),
    )


Users = Annotated[UserService, Depends(get_user_service)]


@router.get("", summary="List users")
async def list_users(
    _: RequireAdmin,
    users: Users,
    page: Pagination,
    tenant_id: Annotated[uuid.UUID | None, Query(description="Only this tenant's users.")] = None,
) -> Page[UserRead]:
    """List the users of the caller's tenant (operators: of every tenant)."""
    items, cursor = await users.list_page(params=page, tenant_id=tenant_id)
    return Page(items=[UserRead.model_validate(u) for u in items], next_cursor=cursor)


@router.post("", status_code=status.HTTP_201_CREATED, summary="Create user")
async def create_user(
    actor: RequireAdmin, users: Users, user_in: UserCreate, session: Session, settings: AppSettings
) -> UserCreated:
    """Create a user in the caller's tenant, with a one-time token to set their password."""
    user = await users.create(actor=actor, user_in=user_in)
    token, row = await issue_password_token(
        PasswordTokenRepository(session), user_id=user.id, settings=settings
    )
    return UserCreated.model_validate(
        {
            **UserRead.model_validate(user).model_dump(),
            "set_password_token": token,
            "set_password_expires_at": row.expires_at,
        }
    )


@router.get("/{user_id}", summary="Retrieve user")
async def read_user(_: RequireAdmin, users: Users, user_id: uuid.UUID) -> UserRead:
    """Retrieve one user."""
    return UserRead.model_validate(await users.get(user_id=user_id))


@router.put("/{user_id}", summary="Update user")
async def update_user(
    actor: RequireAdmin,
    users: Users,
    _accounts: ChangesAccounts,
    user_id: uuid.UUID,
    user_in: UserUpdate,
) -> UserRead:
    """Update a user's fields; fields left out keep their values."""
    user = await users.update(actor=actor, user_id=user_id, user_in=user_in)
    return UserRead.model_validate(user)


@teardown_delete(router, "/{user_id}", summary="Delete user")
async def delete_user(
    actor: RequireAdmin,
    users: Users,
    _accounts: ChangesAccounts,
    user_id: uuid.UUID,
    cascade: Cascade = False,
) -> Response:
    """Delete a user, once none of the workspaces they own is live."""
    started = await users.delete(actor=actor, user_id=user_id, cascade=cascade)
    return teardown_response(started)
