"""Register, log in, rotate refresh tokens, log out, change and set passwords, invites.

A refusal that must leave a trace in the database (a failed login's audit entry, the
revoked family of a reused refresh token) is returned as a `ProblemError`, not raised:
raising would roll the request's unit of work back, and with it the trace. The endpoint
answers it as a problem document; the unit of work commits.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta
from typing import Any

from spawnpoint.apikeys.repository import ApiKeyRepository
from spawnpoint.apikeys.schemas import ApiKeyCreate
from spawnpoint.apikeys.service import ApiKeyService
from spawnpoint.audit.chain import AuditDraft
from spawnpoint.auth.passwords import Passwords, new_token, token_hash
from spawnpoint.auth.repository import (
    InviteLookup,
    InviteRepository,
    PasswordTokenRepository,
    RefreshTokenRepository,
    RegistrationRepository,
    SignInRepository,
)
from spawnpoint.auth.schemas import InviteCreate, RegisterIn, TokenRead
from spawnpoint.config import Settings
from spawnpoint.kit.auditing import system_action
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.errors import (
    Conflict,
    Forbidden,
    ProblemError,
    ServiceUnavailable,
    Unauthorized,
)
from spawnpoint.kit.ids import uuid7
from spawnpoint.kit.pagination import PageParams
from spawnpoint.kit.ratelimit import LoginThrottle, TooManyRequests
from spawnpoint.models import (
    ApiKey,
    Invite,
    PasswordToken,
    RefreshToken,
    Role,
    Tenant,
    TenantStatus,
    User,
    UserStatus,
)
from spawnpoint.scope import TenantScope
from spawnpoint.security import Principal, mint_token
from spawnpoint.tenants.service import slugify
from spawnpoint.uow import UnitOfWork
from spawnpoint.users.repository import AccountRepository

BAD_LOGIN = "Incorrect email or password."
BAD_REFRESH = "The refresh token is invalid, expired or revoked."


def _unknown_ip(ip: str | None) -> str:
    return ip or "unknown"


class AuthService:
    def __init__(
        self,
        uow: UnitOfWork,
        *,
        settings: Settings,
        passwords: Passwords,
        throttle: LoginThrottle,
    ) -> None:
        self.uow = uow
        self.settings = settings
        self.passwords = passwords
        self.throttle = throttle
        session = uow.session
        self.signin = SignInRepository(session)
        self.registration = RegistrationRepository(session)
        self.tokens = RefreshTokenRepository(session)
        self.invites = InviteLookup(session)
        self.password_tokens = PasswordTokenRepository(session)
        self.accounts = AccountRepository(session)

    # ------------------------------------------------------------------ audit

    def _acting(self, principal: Principal) -> None:
        """The request's audit entry names `principal` (and goes on its tenant's chain)."""
        if self.uow.request is not None:
            self.uow.request.principal = principal

    def _denied(
        self, *, tenant_id: uuid.UUID | None, actor_id: uuid.UUID | None, **details: Any
    ) -> None:
        """Record this request's refusal itself: no principal vouches for the caller."""
        audit = self.uow.request
        if audit is None:
            return
        self.uow.record(
            AuditDraft(
                tenant_id=tenant_id,
                actor_type="user",
                actor_id=None if actor_id is None else str(actor_id),
                action=audit.what.action,
                resource_type=audit.what.resource_type,
                resource_id=None,
                result="denied",
                reason=audit.reason,
                ip=audit.ip,
                user_agent=audit.user_agent,
                request_id=audit.request_id,
                details=details,
            )
        )

    # ------------------------------------------------------------------ sessions

    async def _issue(
        self, *, user_id: uuid.UUID, tenant_id: uuid.UUID, family_id: uuid.UUID
    ) -> TokenRead:
        now = utcnow()
        refresh = new_token()
        self.uow.session.add(
            RefreshToken(
                user_id=user_id,
                family_id=family_id,
                token_hash=token_hash(refresh),
                created_at=now,
                expires_at=now + timedelta(days=self.settings.refresh_token_days),
            )
        )
        minutes = self.settings.access_token_minutes
        access = mint_token(
            self.settings,
            user_id=user_id,
            tenant_id=tenant_id,
            ttl=timedelta(minutes=minutes),
            session_id=family_id,
        )
        await self.uow.session.flush()
        return TokenRead(access_token=access, expires_in=minutes * 60, refresh_token=refresh)

    async def login(self, *, email: str, password: str, ip: str | None) -> TokenRead | ProblemError:
        """One code path whatever the account: an unknown email verifies a dummy hash."""
        email = email.strip().lower()
        ip = _unknown_ip(ip)
        # Counted before the password is checked, so parallel guesses cannot overrun the
        # limit; a success gives its attempt back.
        wait, attempts = await self.throttle.attempt(account=email, ip=ip)
        row = await self.signin.for_login(email)
        tenant_id = row.tenant_id if row is not None else None
        actor_id = row.user_id if row is not None else None
        if wait is not None:
            # Refused whether or not the password is right: a success never tells that
            # the account was locked.
            self._denied(tenant_id=tenant_id, actor_id=actor_id, email=email, status=429)
            return TooManyRequests(
                f"Too many failed logins; retry after {wait} s.", retry_after=wait
            )
        stored = row.password_hash if row is not None and row.password_hash else None
        verified = await self.passwords.verify(stored or self.passwords.dummy_hash, password)
        usable = (
            row is not None
            and stored is not None
            and row.user_status == UserStatus.active
            and row.tenant_status == TenantStatus.active
        )
        if not (verified and usable):
            self._denied(tenant_id=tenant_id, actor_id=actor_id, email=email, status=401)
            return Unauthorized(BAD_LOGIN)
        assert row is not None
        assert stored is not None
        await self.throttle.succeeded(attempts)
        if self.passwords.needs_rehash(stored):
            new_hash = await self.passwords.hash(password)
            await self.signin.set_password(row.user_id, new_hash, now=utcnow())
        self._acting(
            Principal(
                user_id=row.user_id,
                tenant_id=row.tenant_id,
                role=Role(row.role),
                operator=row.role == Role.operator,
            )
        )
        return await self._issue(user_id=row.user_id, tenant_id=row.tenant_id, family_id=uuid7())

    async def _principal_of(self, user_id: uuid.UUID) -> Principal | None:
        account = await self.accounts.account(user_id)
        if account is None:
            return None
        tenant_id, role, user_status, tenant_status = account
        if user_status != UserStatus.active or (
            tenant_status != TenantStatus.active and role != Role.operator
        ):
            return None
        return Principal(
            user_id=user_id, tenant_id=tenant_id, role=Role(role), operator=role == Role.operator
        )

    async def refresh(self, *, refresh_token: str) -> TokenRead | ProblemError:
        """Rotate: the token is spent and a new one of the same family is issued.

        A spent token presented again was copied (by a thief, or from the owner): the
        whole family is revoked, so neither copy works any more, and the attempt audited.
        """
        digest = token_hash(refresh_token)
        now = utcnow()
        used = await self.tokens.use(digest, now=now)
        if used is None:
            known = await self.tokens.by_hash(digest)
            if known is None:
                raise Unauthorized(BAD_REFRESH)
            account = await self.accounts.account(known.user_id)
            tenant_id = account[0] if account is not None else None
            if known.used_at is not None and known.revoked_at is None:
                await self.tokens.revoke_family(known.family_id, now=now)
                self._denied(
                    tenant_id=tenant_id,
                    actor_id=known.user_id,
                    status=401,
                    reuse=True,
                    family_id=str(known.family_id),
                )
            else:
                self._denied(
                    tenant_id=tenant_id,
                    actor_id=known.user_id,
                    status=401,
                    family_id=str(known.family_id),
                )
            return Unauthorized(BAD_REFRESH)
        principal = await self._principal_of(used.user_id)
        if principal is None:
            raise Unauthorized("The account is not active.")
        self._acting(principal)
        return await self._issue(
            user_id=principal.user_id, tenant_id=principal.tenant_id, family_id=used.family_id
        )

    async def logout(self, *, refresh_token: str) -> None:
        """Revoke the session (the token's whole family)."""
        known = await self.tokens.by_hash(token_hash(refresh_token))
        if known is None:
            raise Unauthorized(BAD_REFRESH)
        await self.tokens.revoke_family(known.family_id, now=utcnow())
        account = await self.accounts.account(known.user_id)
        if account is not None:
            tenant_id, role, _, _ = account
            self._acting(
                Principal(
                    user_id=known.user_id,
                    tenant_id=tenant_id,
                    role=Role(role),
                    operator=role == Role.operator,
                )
            )

    # ------------------------------------------------------------------ passwords

    async def change_password(
        self, *, actor: Principal, old_password: str, new_password: str
    ) -> None:
        """Change the caller's password and end their other sessions."""
        if actor.api_key_id is not None:
            raise Forbidden("An API key cannot change a password; log in as the user.")
        stored = await self.signin.password_hash(actor.user_id)
        verified = await self.passwords.verify(stored or self.passwords.dummy_hash, old_password)
        if not (verified and stored is not None):
            raise Forbidden("The current password is wrong.")
        now = utcnow()
        await self.signin.set_password(
            actor.user_id, await self.passwords.hash(new_password), now=now
        )
        await self.tokens.revoke_user(actor.user_id, keep=actor.session_id, now=now)

    async def set_password(self, *, token: str, password: str) -> None:
        """Redeem a set-password token (once)."""
        now = utcnow()
        user_id = await self.password_tokens.use(token_hash(token), now=now)
        principal = None if user_id is None else await self._principal_of(user_id)
        if principal is None:
            raise Unauthorized("The set-password token is invalid, used or expired.")
        await self.signin.set_password(
            principal.user_id, await self.passwords.hash(password), now=now
        )
        await self.tokens.revoke_user(principal.user_id, keep=None, now=now)
        self._acting(principal)

    # ------------------------------------------------------------------ registration

    async def register(self, *, register_in: RegisterIn) -> User:
        mode = self.settings.registration_mode
        if mode == "closed":
            raise Forbidden("Registration is closed.")
        now = utcnow()
        if mode == "invite":
            invite = None
            if register_in.invite_token is not None:
                invite = await self.invites.live(token_hash(register_in.invite_token), now=now)
            if invite is None or invite.email != register_in.email:
                raise Forbidden("Registration needs a valid invite for this email.")
            invite.accepted_at = now
            tenant_id, role = invite.tenant_id, Role(invite.role)
        else:
            if register_in.invite_token is not None:
                raise Conflict("Registration is open: register without an invite token.")
            tenant_id, role = await self._new_tenant(register_in), Role.admin
        if await self.signin.email_taken(register_in.email):
            raise Conflict("This email cannot be registered.")
        user = await self.registration.add_user(
            User(
                tenant_id=tenant_id,
                email=register_in.email,
                display_name=register_in.display_name,
                role=role,
            )
        )
        password_hash = await self.passwords.hash(register_in.password)
        await self.signin.set_password(user.id, password_hash, now=now)
        self._acting(Principal(user_id=user.id, tenant_id=tenant_id, role=role))
        self.uow.describe(resource_id=user.id, registration=mode)
        return user

    async def _new_tenant(self, register_in: RegisterIn) -> uuid.UUID:
        plan_id = self.settings.default_plan_id
        if not await self.registration.plan_exists(plan_id):
            raise ServiceUnavailable(
                "Registration is misconfigured: DEFAULT_PLAN_ID names no plan."
            )
        suffix = secrets.token_hex(3)
        local = register_in.email.split("@", 1)[0]
        name = register_in.tenant_name or f"{local[:80]}-{suffix}"
        tenant = await self.registration.add_tenant(
            Tenant(name=name, slug=f"{slugify(name)[:50].strip('-')}-{suffix}", plan_id=plan_id)
        )
        return tenant.id


class InviteService:
    def __init__(self, repository: InviteRepository, *, settings: Settings) -> None:
        self.repository = repository
        self.settings = settings

    async def create(self, *, actor: Principal, invite_in: InviteCreate) -> tuple[Invite, str]:
        if invite_in.role == Role.operator or (
            invite_in.role.rank > actor.role.rank and not actor.operator
        ):
            raise Forbidden("An invite's role cannot be higher than yours, nor operator.")
        token = new_token()
        now = utcnow()
        invite = Invite(
            tenant_id=actor.tenant_id,
            email=invite_in.email,
            role=invite_in.role,
            token_hash=token_hash(token),
            created_by=actor.user_id,
            created_at=now,
            expires_at=now + timedelta(days=self.settings.invite_days),
        )
        return await self.repository.add(invite), token

    async def list_page(self, *, params: PageParams) -> tuple[list[Invite], str | None]:
        return await self.repository.page_of_tenant(params)

    async def delete(self, *, invite_id: uuid.UUID) -> None:
        await self.repository.delete(await self.repository.get(invite_id))


async def issue_password_token(
    repository: PasswordTokenRepository, *, user_id: uuid.UUID, settings: Settings
) -> tuple[str, PasswordToken]:
    """A one-time set-password token for a user an admin created (no password in a body)."""
    token = new_token()
    now = utcnow()
    row = PasswordToken(
        user_id=user_id,
        token_hash=token_hash(token),
        created_at=now,
        expires_at=now + timedelta(hours=settings.password_token_hours),
    )
    await repository.add(row)
    return token, row


class AccountAdmin:
    """What the CLI does to accounts, as the system, audited on the tenant's chain."""

    def __init__(self, uow: UnitOfWork, *, settings: Settings) -> None:
        self.uow = uow
        self.settings = settings
        self.registration = RegistrationRepository(uow.session)
        self.signin = SignInRepository(uow.session)
        self.accounts = AccountRepository(uow.session)

    def _record(
        self,
        tenant_id: uuid.UUID,
        action: str,
        resource_type: str,
        resource_id: object,
        **details: Any,
    ) -> None:
        self.uow.record(
            system_action(
                tenant_id=tenant_id,
                action=action,
                resource_type=resource_type,
                resource_id=resource_id,
                reason="cli",
                actor_id="cli",
                **details,
            )
        )

    async def create_user(
        self,
        *,
        email: str,
        role: Role,
        tenant: str,
        password_hash: str | None,
        display_name: str = "",
    ) -> tuple[User, str | None]:
        """The new user, and a set-password token unless a password was given."""
        found = await self.registration.by_reference(tenant)
        if found is None:
            raise LookupError(f"no tenant with id or slug {tenant!r}")
        if await self.signin.email_taken(email):
            raise Conflict(f"a user with email {email!r} exists")
        user = await self.registration.add_user(
            User(tenant_id=found.id, email=email.lower(), display_name=display_name, role=role)
        )
        token = None
        if password_hash is not None:
            await self.signin.set_password(user.id, password_hash, now=utcnow())
        else:
            token, _ = await issue_password_token(
                PasswordTokenRepository(self.uow.session), user_id=user.id, settings=self.settings
            )
        self._record(found.id, "user.create", "user", user.id, email=user.email, role=role.value)
        return user, token

    async def create_api_key(
        self, *, email: str, name: str, role: Role | None
    ) -> tuple[ApiKey, str]:
        user = await self.accounts.by_email(email)
        if user is None:
            raise LookupError(f"no user with email {email!r}")
        creator = Principal(
            user_id=user.id,
            tenant_id=user.tenant_id,
            role=Role(user.role),
            operator=user.role == Role.operator,
        )
        scope = TenantScope.of(creator)
        key, secret = await ApiKeyService(ApiKeyRepository(self.uow.session, scope)).create(
            actor=creator, key_in=ApiKeyCreate(name=name, role=role)
        )
        self._record(
            user.tenant_id, "api_key.create", "api_key", key.id, user_id=str(user.id), role=key.role
        )
        return key, secret
