"""Dependencies, declared once as `Annotated` aliases and reused by every router."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.kit.errors import Forbidden
from spawnpoint.models import Role
from spawnpoint.scope import TenantScope
from spawnpoint.security import Principal, authenticate

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_bearer = HTTPBearer(auto_error=False, description="A JWT, or DEV_BYPASS_TOKEN in development.")


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request, committed before the response is sent."""
    database: Database = request.app.state.database
    async with database.transaction(write=request.method not in READ_METHODS) as session:
        yield session


AppSettings = Annotated[Settings, Depends(get_settings)]
DB = Annotated[Database, Depends(get_database)]
Session = Annotated[AsyncSession, Depends(get_session, scope="function")]


async def get_principal(
    settings: AppSettings,
    session: Session,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    request: Request,
) -> Principal:
    return await authenticate(settings, session, request.headers.get("authorization"))


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require(role: Role) -> Callable[[Principal], Principal]:
    def check(principal: CurrentPrincipal) -> Principal:
        if not principal.has(role):
            raise Forbidden(f"This action needs the {role.value} role.")
        return principal

    return check


def require_operator(principal: CurrentPrincipal) -> Principal:
    if not principal.operator:
        raise Forbidden("This action needs platform-operator rights.")
    return principal


RequireViewer = Annotated[Principal, Depends(require(Role.viewer))]
RequireMember = Annotated[Principal, Depends(require(Role.member))]
RequirePublisher = Annotated[Principal, Depends(require(Role.publisher))]
RequireAdmin = Annotated[Principal, Depends(require(Role.admin))]
RequireOperator = Annotated[Principal, Depends(require_operator)]


def get_scope(principal: CurrentPrincipal) -> TenantScope:
    return TenantScope.of(principal)


Scope = Annotated[TenantScope, Depends(get_scope)]
