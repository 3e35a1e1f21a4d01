"""Dependencies, declared once as `Annotated` aliases and reused by every router."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.kit.errors import Forbidden
from spawnpoint.kit.ratelimit import RateLimiter, refuse, remember
from spawnpoint.logs import bind_principal
from spawnpoint.models import Role
from spawnpoint.scope import TenantScope
from spawnpoint.security import AccountCache, Principal, authenticate
from spawnpoint.uow import ReadOnDemand, UnitOfWork

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Every dependency is `async def`: FastAPI runs plain `def` dependencies in a thread pool,
# and twenty thread hops per request cost more than the request's own work.


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_session(request: Request) -> AsyncSession:
    """The request's one transaction, committed before the response is sent.

    A mutating route's unit of work is opened by its route (`kit/routing.py`), which also
    commits it; a read gets a read-only transaction, begun here when first asked for and
    ended by its route.
    """
    state = request.state
    uow: UnitOfWork | None = getattr(state, "uow", None)
    if uow is not None:
        return uow.session
    reads: ReadOnDemand | None = getattr(state, "reads", None)
    if reads is not None:
        return await reads.session()
    # A route of another class: the transaction ends with the endpoint function, on the
    # exit stack FastAPI closes then (as a dependency with scope="function" would).
    database: Database = request.app.state.database
    stack: AsyncExitStack = request.scope["fastapi_function_astack"]
    return await stack.enter_async_context(
        database.transaction(write=request.method not in READ_METHODS)
    )


AppSettings = Annotated[Settings, Depends(get_settings)]
DB = Annotated[Database, Depends(get_database)]
# The route ends the transaction once the handler returns, before the response starts. A
# commit that fails (the database went away) then still answers 503, never after a 2xx was
# sent for work that was lost.
Session = Annotated[AsyncSession, Depends(get_session)]


async def get_principal(request: Request) -> Principal:
    """The caller, from a bearer JWT or an API key; each call counts in its rate limits.

    The session is asked for only when the account cache cannot answer: not declared as a
    dependency, which every route that needs the caller would solve on every request.
    """
    state = request.app.state
    headers = request.headers
    principal = await authenticate(
        state.settings,
        functools.partial(get_session, request),
        state.accounts,
        headers.get("authorization"),
        headers.get("x-api-key"),
    )
    uow: UnitOfWork | None = getattr(request.state, "uow", None)
    if uow is not None and uow.request is not None:
        uow.request.principal = principal
    bind_principal(principal)
    if principal.api_key_id is not None:
        state.key_usage.touch(principal.api_key_id)
    limiter: RateLimiter = state.rate_limiter
    if limiter.enabled:
        window = await limiter.hit(principal.limit_key, str(principal.tenant_id))
        if window is not None:
            remember(request.scope, window)
            if window.exceeded:
                raise refuse(window)
    return principal


async def get_unit_of_work(request: Request) -> UnitOfWork:
    """The mutating request's unit of work (for `on_commit`, `describe`, `emit`)."""
    uow: UnitOfWork | None = getattr(request.state, "uow", None)
    if uow is None:
        raise RuntimeError("only a mutating route has a unit of work")
    return uow


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require(role: Role) -> Callable[[Principal], Awaitable[Principal]]:
    async def check(principal: CurrentPrincipal) -> Principal:
        if not principal.has(role):
            raise Forbidden(f"This action needs the {role.value} role.")
        return principal

    return check


async def require_operator(principal: CurrentPrincipal) -> Principal:
    if not principal.operator:
        raise Forbidden("This action needs platform-operator rights.")
    return principal


# Reading the audit log is not a rank: a member outranks an auditor but may not read it.
AUDIT_READERS = frozenset({Role.admin, Role.auditor})


async def require_audit_reader(principal: CurrentPrincipal) -> Principal:
    if principal.operator or principal.role in AUDIT_READERS:
        return principal
    raise Forbidden("Reading the audit log needs the admin or auditor role.")


RequireViewer = Annotated[Principal, Depends(require(Role.viewer))]
RequireMember = Annotated[Principal, Depends(require(Role.member))]
RequirePublisher = Annotated[Principal, Depends(require(Role.publisher))]
RequireAdmin = Annotated[Principal, Depends(require(Role.admin))]
RequireOperator = Annotated[Principal, Depends(require_operator)]
RequireAuditReader = Annotated[Principal, Depends(require_audit_reader)]


async def get_scope(principal: CurrentPrincipal) -> TenantScope:
    return TenantScope.of(principal)


Scope = Annotated[TenantScope, Depends(get_scope)]


async def get_account_cache(request: Request) -> AccountCache:
    cache: AccountCache = request.app.state.accounts
    return cache


Accounts = Annotated[AccountCache, Depends(get_account_cache)]


async def forget_accounts_on_commit(request: Request) -> None:
    """For a route that changes users or tenants: once its unit of work commits, drop the
    cached account rows (sessions elsewhere may still hold the old ones)."""
    uow = await get_unit_of_work(request)
    uow.on_commit(request.app.state.accounts.clear, key="accounts.clear")


ChangesAccounts = Annotated[None, Depends(forget_accounts_on_commit)]
