from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import Depends, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from spawnpoint.auth.passwords import Passwords
from spawnpoint.auth.repository import InviteRepository
from spawnpoint.auth.schemas import (
    InviteCreate,
    InviteCreated,
    InviteRead,
    LoginIn,
    MeRead,
    PasswordChange,
    PasswordSet,
    RefreshIn,
    RegisterIn,
    TokenRead,
)
from spawnpoint.auth.service import AuthService, InviteService
from spawnpoint.deps import (
    AppSettings,
    ChangesAccounts,
    CurrentPrincipal,
    RequireAdmin,
    RequireViewer,
    Scope,
    Session,
    get_unit_of_work,
)
from spawnpoint.kit.errors import ProblemError, Unauthorized, problem_response
from spawnpoint.kit.pagination import Page, Pagination
from spawnpoint.kit.ratelimit import LoginThrottle, RateLimiter, refuse, remember
from spawnpoint.kit.routing import StrictRouter, UnsupportedMediaType, _is_json, scan
from spawnpoint.plans.repository import PlanRepository
from spawnpoint.plans.schemas import PlanRead
from spawnpoint.tenants.repository import TenantRepository
from spawnpoint.tenants.schemas import TenantRead
from spawnpoint.uow import UnitOfWork
from spawnpoint.users.repository import UserRepository
from spawnpoint.users.schemas import UserRead


async def limit_by_address(request: Request) -> None:
    """Public routes count against their client address (no principal to count against)."""
    limiter: RateLimiter = request.app.state.rate_limiter
    window = await limiter.hit_address(request.client.host if request.client else "unknown")
    if window is not None:
        remember(request.scope, window)
        if window.exceeded:
            raise refuse(window)


ByAddress = Annotated[None, Depends(limit_by_address)]
router = StrictRouter(prefix="/api/v1/auth", tags=["auth"])
invites_router = StrictRouter(prefix="/api/invites", tags=["auth"])
UoW = Annotated[UnitOfWork, Depends(get_unit_of_work)]
FORM = "application/x-www-form-urlencoded"


def _audit(action: str, resource: str = "auth", *, public: bool = True) -> dict[str, Any]:
    extra: dict[str, Any] = {"x-audit-action": action, "x-audit-resource": resource}
    if public:
        # No credentials: the body (a password, a token) is what authenticates.
        extra["security"] = []
    return extra


REFUSED: dict[int | str, dict[str, Any]] = {
    401: {"description": "Wrong credentials, or an invalid, spent or revoked token."},
    403: {"description": "Registration is closed, or needs a valid invite."},
    409: {"description": "The email cannot be registered (it is in use), or the tenant name."},
    429: {"description": "Too many requests from the address, or failed logins for the account."},
}


async def get_auth_service(request: Request, uow: UoW, settings: AppSettings) -> AuthService:
    state = request.app.state
    passwords: Passwords = state.passwords
    throttle: LoginThrottle = state.login_throttle
    return AuthService(uow, settings=settings, passwords=passwords, throttle=throttle)


Auth = Annotated[AuthService, Depends(get_auth_service)]


def _answer(outcome: TokenRead | ProblemError) -> TokenRead | Response:
    # A refusal answered, not raised: its audit entry commits with the unit of work.
    if isinstance(outcome, ProblemError):
        return problem_response(outcome.document(), outcome.headers)
    return outcome


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    summary="Register",
    openapi_extra=_audit("auth.register", "user"),
    responses={403: REFUSED[403], 409: REFUSED[409], 429: REFUSED[429]},
)
async def register(_: ByAddress, auth: Auth, register_in: RegisterIn) -> UserRead:
    """Create an account: a new tenant (REGISTRATION=open) or an invite's (invite)."""
    return UserRead.model_validate(await auth.register(register_in=register_in))


LOGIN_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": LoginIn.model_json_schema()},
        FORM: {
            "schema": {
                "type": "object",
                "required": ["username", "password"],
                "properties": {
                    "grant_type": {"type": "string", "enum": ["password"]},
                    "username": {"type": "string", "description": "The email."},
                    "password": {"type": "string", "format": "password"},
                    "scope": {"type": "string"},
                    "client_id": {"type": "string"},
                    "client_secret": {"type": "string"},
                },
            }
        },
    },
}


async def _login_in(request: Request) -> LoginIn:
    """The JSON body, or the OAuth2 password form (`username` is the email)."""
    content_type = request.headers.get("content-type")
    try:
        document: Any
        if (content_type or "").split(";")[0].strip().lower() == FORM:
            form = await request.form()
            document = {"email": form.get("username"), "password": form.get("password")}
        elif not _is_json(content_type):
            raise UnsupportedMediaType(
                "Log in with a JSON body or the OAuth2 password form "
                f"(Content-Type: application/json or {FORM})."
            )
        else:
            try:
                document = await request.json()
            except ValueError as exc:
                raise RequestValidationError(
                    [{"type": "json_invalid", "loc": ("body",), "msg": "not JSON", "input": None}]
                ) from exc
        # NUL characters, too deep nesting: refused as on every JSON route.
        errors, _ = scan(document, max_depth=request.app.state.settings.max_json_depth)
        if errors:
            raise RequestValidationError(errors)
        return LoginIn.model_validate(document)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from exc


@router.post(
    "/login",
    summary="Log in",
    response_model=TokenRead,
    openapi_extra={**_audit("auth.login"), "requestBody": LOGIN_BODY},
    responses={401: REFUSED[401], 429: REFUSED[429]},
)
async def login(_: ByAddress, request: Request, auth: Auth) -> TokenRead | Response:
    """Exchange an email and password for an access token and a refresh token."""
    login_in = await _login_in(request)
    client = request.client.host if request.client else None
    return _answer(await auth.login(email=login_in.email, password=login_in.password, ip=client))


@router.post(
    "/refresh",
    summary="Refresh tokens",
    response_model=TokenRead,
    openapi_extra=_audit("auth.refresh"),
    responses={401: REFUSED[401], 429: REFUSED[429]},
)
async def refresh(_: ByAddress, auth: Auth, refresh_in: RefreshIn) -> TokenRead | Response:
    """Spend a refresh token for a new access token and refresh token."""
    return _answer(await auth.refresh(refresh_token=refresh_in.refresh_token))


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Log out",
    openapi_extra=_audit("auth.logout"),
    responses={401: REFUSED[401], 429: REFUSED[429]},
)
async def logout(_: ByAddress, auth: Auth, refresh_in: RefreshIn) -> Response:
    """End the session the refresh token belongs to."""
    await auth.logout(refresh_token=refresh_in.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", summary="Current user")
async def me(principal: CurrentPrincipal, session: Session, scope: Scope) -> MeRead:
    """Who you are: your user, tenant, role and your plan's quotas."""
    user = await UserRepository(session, scope).find(principal.user_id)
    tenant = await TenantRepository(session, scope).find(principal.tenant_id)
    if user is None or tenant is None:
        # Only the dev bypass token outlives its account (the demo tenant deleted).
        raise Unauthorized("The account no longer exists.")
    plan = await PlanRepository(session, scope).get(tenant.plan_id)
    return MeRead(
        user=UserRead.model_validate(user),
        tenant=TenantRead.model_validate(tenant),
        role=principal.role,
        operator=principal.operator,
        api_key_id=principal.api_key_id,
        plan=PlanRead.model_validate(plan),
    )


@router.post(
    "/password",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Change password",
    openapi_extra=_audit("auth.password", public=False),
)
async def change_password(actor: RequireViewer, auth: Auth, change_in: PasswordChange) -> Response:
    """Change your password (the current one is needed); your other sessions end."""
    await auth.change_password(
        actor=actor, old_password=change_in.old_password, new_password=change_in.new_password
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/set-password",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Set password",
    openapi_extra=_audit("auth.set_password"),
    responses={401: REFUSED[401], 429: REFUSED[429]},
)
async def set_password(
    _: ByAddress, auth: Auth, _accounts: ChangesAccounts, set_in: PasswordSet
) -> Response:
    """Set a password with the one-time token given when an admin created the user."""
    await auth.set_password(token=set_in.token, password=set_in.password)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def get_invite_service(
    session: Session, scope: Scope, settings: AppSettings
) -> InviteService:
    return InviteService(InviteRepository(session, scope), settings=settings)


Invites = Annotated[InviteService, Depends(get_invite_service)]


@invites_router.get("", summary="List invites")
async def list_invites(_: RequireAdmin, invites: Invites, page: Pagination) -> Page[InviteRead]:
    """List the invites of your tenant."""
    items, cursor = await invites.list_page(params=page)
    return Page(items=[InviteRead.model_validate(i) for i in items], next_cursor=cursor)


@invites_router.post("", status_code=status.HTTP_201_CREATED, summary="Create invite")
async def create_invite(
    actor: RequireAdmin, invites: Invites, invite_in: InviteCreate
) -> InviteCreated:
    """Invite someone to your tenant; they register with the token in the answer."""
    invite, token = await invites.create(actor=actor, invite_in=invite_in)
    return InviteCreated.model_validate(
        {**InviteRead.model_validate(invite).model_dump(), "token": token}
    )


@invites_router.delete(
    "/{invite_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete invite"
)
async def delete_invite(_: RequireAdmin, invites: Invites, invite_id: uuid.UUID) -> Response:
    """Withdraw an invite."""
    await invites.delete(invite_id=invite_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
