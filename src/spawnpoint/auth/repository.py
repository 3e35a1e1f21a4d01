from __future__ import annotations

import uuid
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from spawnpoint.kit.errors import Conflict
from spawnpoint.kit.pagination import PageParams
from spawnpoint.kit.repository import PlatformRepository, ScopedRepository
from spawnpoint.models import (
    Credential,
    Invite,
    PasswordToken,
    Plan,
    RefreshToken,
    Tenant,
    User,
)


class LoginRow(NamedTuple):
    user_id: uuid.UUID
    tenant_id: uuid.UUID
    role: str
    user_status: str
    tenant_status: str
    password_hash: str | None


class SignInRepository(PlatformRepository[User]):
    """Accounts by email and their passwords: unscoped, it runs before there is a caller."""

    model = User
    noun = "user"

    async def for_login(self, email: str) -> LoginRow | None:
        """The account `email` signs in to, with its password hash (None: none set)."""
        found = (
            await self.session.execute(
                select(
                    User.id,
                    User.tenant_id,
                    User.role,
                    User.status,
                    Tenant.status,
                    Credential.password_hash,
                )
                .join(Tenant, Tenant.id == User.tenant_id)
                .outerjoin(Credential, Credential.user_id == User.id)
                .where(User.email == email.lower())
            )
        ).one_or_none()
        return None if found is None else LoginRow(*found)

    async def password_hash(self, user_id: uuid.UUID) -> str | None:
        return (
            await self.session.execute(
                select(Credential.password_hash).where(Credential.user_id == user_id)
            )
        ).scalar_one_or_none()

    async def set_password(self, user_id: uuid.UUID, password_hash: str, *, now: datetime) -> None:
        credential = await self.session.get(Credential, user_id)
        if credential is None:
            self.session.add(
                Credential(user_id=user_id, password_hash=password_hash, changed_at=now)
            )
        else:
            credential.password_hash = password_hash
            credential.changed_at = now
        await self.session.flush()

    async def email_taken(self, email: str) -> bool:
        statement = select(User.id).where(User.email == email.lower())
        return (await self.session.execute(statement)).first() is not None


class RegistrationRepository(PlatformRepository[Tenant]):
    """Open registration creates a tenant before anyone in it exists: unscoped."""

    model = Tenant
    noun = "tenant"

    async def plan_exists(self, plan_id: uuid.UUID) -> bool:
        return (
            await self.session.execute(select(Plan.id).where(Plan.id == plan_id))
        ).first() is not None

    async def by_reference(self, reference: str) -> Tenant | None:
        """A tenant by id or slug (the CLI's --tenant)."""
        try:
            condition = Tenant.id == uuid.UUID(reference)
        except ValueError:
            condition = Tenant.slug == reference
        return (await self.session.execute(self.readable().where(condition))).scalar_one_or_none()

    async def add_tenant(self, tenant: Tenant) -> Tenant:
        self.session.add(tenant)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            raise Conflict("A tenant with this name already exists.") from exc
        return tenant

    async def add_user(self, user: User) -> User:
        self.session.add(user)
        try:
            await self.session.flush()
        except IntegrityError as exc:
            # Whose account it is, and where, is not the caller's business.
            raise Conflict("This email cannot be registered.") from exc
        return user


class UsedToken(NamedTuple):
    id: uuid.UUID
    user_id: uuid.UUID
    family_id: uuid.UUID


class RefreshTokenRepository(PlatformRepository[RefreshToken]):
    """Refresh tokens by hash: presenting one is the authentication, so unscoped."""

    model = RefreshToken
    noun = "refresh token"

    async def use(self, digest: str, *, now: datetime) -> UsedToken | None:
        """Mark the token used, if it is live; one statement, so two uses cannot both win."""
        found = (
            await self.session.execute(
                update(RefreshToken)
                .where(
                    RefreshToken.token_hash == digest,
                    RefreshToken.used_at.is_(None),
                    RefreshToken.revoked_at.is_(None),
                    RefreshToken.expires_at > now,
                )
                .values(used_at=now)
                .returning(RefreshToken.id, RefreshToken.user_id, RefreshToken.family_id)
            )
        ).one_or_none()
        return None if found is None else UsedToken(*found)

    async def by_hash(self, digest: str) -> RefreshToken | None:
        statement = select(RefreshToken).where(RefreshToken.token_hash == digest)
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def revoke_family(self, family_id: uuid.UUID, *, now: datetime) -> None:
        await self.session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )

    async def revoke_user(
        self, user_id: uuid.UUID, *, keep: uuid.UUID | None, now: datetime
    ) -> None:
        """Revoke every session of the user but `keep` (a family id)."""
        statement = update(RefreshToken).where(
            RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None)
        )
        if keep is not None:
            statement = statement.where(RefreshToken.family_id != keep)
        await self.session.execute(statement.values(revoked_at=now))


class InviteRepository(ScopedRepository[Invite]):
    model = Invite
    noun = "invite"

    async def page_of_tenant(self, params: PageParams) -> tuple[list[Invite], str | None]:
        return await self.page(params)


class InviteLookup(PlatformRepository[Invite]):
    """An invite by its token's hash, when registering: the registrant has no tenant yet."""

    model = Invite
    noun = "invite"

    async def live(self, digest: str, *, now: datetime) -> Invite | None:
        statement = self.readable().where(
            Invite.token_hash == digest, Invite.accepted_at.is_(None), Invite.expires_at > now
        )
        return (await self.session.execute(statement.with_for_update())).scalar_one_or_none()


class PasswordTokenRepository(PlatformRepository[PasswordToken]):
    model = PasswordToken
    noun = "set-password token"

    async def use(self, digest: str, *, now: datetime) -> uuid.UUID | None:
        """Mark the token used if it is live; the user it sets the password of."""
        return (
            await self.session.execute(
                update(PasswordToken)
                .where(
                    PasswordToken.token_hash == digest,
                    PasswordToken.used_at.is_(None),
                    PasswordToken.expires_at > now,
                )
                .values(used_at=now)
                .returning(PasswordToken.user_id)
            )
        ).scalar_one_or_none()
