"""Rows for identity tests and the route table: passwords, sessions, API keys, invites."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from functools import cache

from argon2 import PasswordHasher
from sqlalchemy import select

from spawnpoint.apikeys import keys
from spawnpoint.auth.passwords import new_token, token_hash
from spawnpoint.db import Database
from spawnpoint.models import (
    ApiKey,
    Credential,
    Invite,
    PasswordToken,
    RefreshToken,
    Role,
    User,
)

KNOWN_PASSWORD = "correct horse battery staple"
OTHER_PASSWORD = "another password, long enough"
# Tokens made for a route table body, by tenant: `own_params` puts, the body takes.
PENDING: dict[uuid.UUID, str] = {}


@cache
def known_hash() -> str:
    """KNOWN_PASSWORD hashed once (argon2id at OWASP's minimum: the app's default)."""
    return PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1).hash(KNOWN_PASSWORD)


def now() -> datetime:
    return datetime.now(UTC)


async def set_password(database: Database, user_id: uuid.UUID, hashed: str | None = None) -> None:
    async with database.transaction(write=True) as session:
        credential = await session.get(Credential, user_id)
        if credential is None:
            session.add(Credential(user_id=user_id, password_hash=hashed or known_hash()))
        else:
            credential.password_hash = hashed or known_hash()


def login_email(tenant_id: uuid.UUID) -> str:
    return f"login-{tenant_id}@example.test"


async def login_account(
    database: Database, tenant_id: uuid.UUID, *, role: Role = Role.member
) -> uuid.UUID:
    """The tenant's account `login_email(tenant_id)` with KNOWN_PASSWORD (made once)."""
    async with database.transaction(write=True) as session:
        found = (
            await session.execute(select(User.id).where(User.email == login_email(tenant_id)))
        ).scalar_one_or_none()
        if found is not None:
            return found
        user = User(tenant_id=tenant_id, email=login_email(tenant_id), role=role)
        session.add(user)
        await session.flush()
        session.add(Credential(user_id=user.id, password_hash=known_hash()))
        return user.id


async def make_refresh_token(database: Database, user_id: uuid.UUID) -> str:
    token = new_token()
    async with database.transaction(write=True) as session:
        session.add(
            RefreshToken(
                user_id=user_id,
                family_id=uuid.uuid4(),
                token_hash=token_hash(token),
                expires_at=now() + timedelta(days=1),
            )
        )
    return token


async def make_password_token(database: Database, user_id: uuid.UUID) -> str:
    token = new_token()
    async with database.transaction(write=True) as session:
        session.add(
            PasswordToken(
                user_id=user_id, token_hash=token_hash(token), expires_at=now() + timedelta(days=1)
            )
        )
    return token


async def make_api_key(
    database: Database,
    tenant_id: uuid.UUID,
    user_id: uuid.UUID,
    *,
    role: Role = Role.viewer,
    expires_at: datetime | None = None,
) -> tuple[uuid.UUID, str]:
    secret = keys.generate()
    async with database.transaction(write=True) as session:
        key = ApiKey(
            tenant_id=tenant_id,
            user_id=user_id,
            name="key",
            role=role,
            prefix=keys.display_prefix(secret),
            key_hash=keys.key_hash(secret),
            expires_at=expires_at,
        )
        session.add(key)
        await session.flush()
        return key.id, secret


async def make_invite(
    database: Database, tenant_id: uuid.UUID, *, email: str = "invitee@example.test"
) -> tuple[uuid.UUID, str]:
    token = new_token()
    async with database.transaction(write=True) as session:
        invite = Invite(
            tenant_id=tenant_id,
            email=email,
            role=Role.member,
            token_hash=token_hash(token),
            expires_at=now() + timedelta(days=1),
        )
        session.add(invite)
        await session.flush()
        return invite.id, token
