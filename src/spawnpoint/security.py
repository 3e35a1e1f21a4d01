"""Who is calling: bearer JWTs, API keys, the development bypass token, and the principal."""

from __future__ import annotations

import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import jwt
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.apikeys.keys import key_hash, looks_like_key, well_formed
from spawnpoint.apikeys.repository import ApiKeyLookup, KeyRow
from spawnpoint.config import Settings
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.errors import Forbidden, Unauthorized
from spawnpoint.models import Role, TenantStatus, UserStatus
from spawnpoint.users.repository import AccountRepository, AccountRow

Sessions = Callable[[], Awaitable[AsyncSession]]
DEMO_ADMIN_ID = uuid.UUID("00000000-0000-0000-0000-000000001000")
DEMO_ADMIN_EMAIL = "admin@demo.local"


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. The role always comes from the database.

    A caller with an API key acts as the key's creator (`user_id`), with the key's role
    capped by the creator's current one; `api_key_id` names the key. `session_id` is the
    login session (refresh token family) an access token was issued for.
    """

    user_id: uuid.UUID
    tenant_id: uuid.UUID
    role: Role
    operator: bool = False
    api_key_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None

    def has(self, role: Role) -> bool:
        return self.operator or self.role.rank >= role.rank

    @property
    def limit_key(self) -> str:
        """Whose rate-limit counter this caller's requests count in."""
        return f"key:{self.api_key_id}" if self.api_key_id else f"user:{self.user_id}"


def dev_principal(settings: Settings) -> Principal:
    # The demo tenant's admin, with platform-operator rights, so one token reaches everything.
    return Principal(
        user_id=DEMO_ADMIN_ID, tenant_id=settings.demo_tenant_id, role=Role.admin, operator=True
    )


def mint_token(
    settings: Settings,
    *,
    user_id: uuid.UUID,
    tenant_id: uuid.UUID | None = None,
    ttl: timedelta = timedelta(hours=1),
    session_id: uuid.UUID | None = None,
) -> str:
    secret = settings.signing_secret
    if not secret:
        raise ValueError("JWT_SECRET is not set")
    now = utcnow()
    claims: dict[str, Any] = {"sub": str(user_id), "iat": now, "nbf": now, "exp": now + ttl}
    if tenant_id is not None:
        claims["tenant_id"] = str(tenant_id)
    if session_id is not None:
        claims["sid"] = str(session_id)
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    return jwt.encode(claims, secret, algorithm=settings.jwt_algorithm)


def decode_token(settings: Settings, token: str) -> dict[str, Any]:
    secret = settings.signing_secret
    if not secret:
        raise Unauthorized("Bearer tokens are not accepted: JWT_SECRET is not configured.")
    required = ["exp", "sub"]
    if settings.jwt_audience:
        required.append("aud")
    if settings.jwt_issuer:
        required.append("iss")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            secret,
            algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={"require": required},
        )
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"Invalid token: {exc}.") from exc
    return claims


def _uuid_claim(claims: dict[str, Any], name: str) -> uuid.UUID:
    try:
        return uuid.UUID(str(claims[name]))
    except ValueError as exc:
        raise Unauthorized(f"Invalid token: claim {name!r} is not a UUID.") from exc


class AccountCache:
    """Recently read account rows, so a burst of requests costs one lookup per user.

    Entries live `ttl` seconds (AUTH_CACHE_SECONDS; 0 disables the cache): a role change,
    a disabled user or a suspended tenant takes effect within that time on every replica,
    and at once on the replica that made the change (it clears its cache).
    """

    def __init__(self, ttl: float, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._rows: dict[uuid.UUID, tuple[float, AccountRow | None]] = {}
        # Verified claims by token, so a client's burst verifies its signature once.
        self._claims: dict[str, tuple[float, dict[str, Any]]] = {}
        # API keys by hash, with their creator's account.
        self._keys: dict[str, tuple[float, KeyRow | None]] = {}

    def get(self, user_id: uuid.UUID) -> tuple[bool, AccountRow | None]:
        entry = self._rows.get(user_id)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def put(self, user_id: uuid.UUID, row: AccountRow | None) -> None:
        if self.ttl <= 0:
            return
        if len(self._rows) >= self.max_entries:
            self._rows.clear()
        self._rows[user_id] = (time.monotonic() + self.ttl, row)

    def clear(self) -> None:
        self._rows.clear()
        self._claims.clear()
        self._keys.clear()

    def key(self, digest: str) -> tuple[bool, KeyRow | None]:
        entry = self._keys.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return False, None
        return True, entry[1]

    def put_key(self, digest: str, row: KeyRow | None) -> None:
        if self.ttl <= 0:
            return
        if len(self._keys) >= self.max_entries:
            self._keys.clear()
        self._keys[digest] = (time.monotonic() + self.ttl, row)

    def claims(self, token: str) -> dict[str, Any] | None:
        """Claims of a token verified within `ttl` seconds and not yet expired."""
        entry = self._claims.get(token)
        if entry is None:
            return None
        valid_until, claims = entry
        if valid_until < time.time():
            del self._claims[token]
            return None
        return claims

    def remember_claims(self, token: str, claims: dict[str, Any]) -> None:
        if self.ttl <= 0:
            return
        if len(self._claims) >= self.max_entries:
            self._claims.clear()
        self._claims[token] = (min(float(claims["exp"]), time.time() + self.ttl), claims)


async def _account(
    sessions: Sessions, cache: AccountCache, user_id: uuid.UUID
) -> AccountRow | None:
    hit, row = cache.get(user_id)
    if hit:
        return row
    row = await AccountRepository(await sessions()).account(user_id)
    cache.put(user_id, row)
    return row


async def _key_principal(sessions: Sessions, cache: AccountCache, key: str) -> Principal:
    if not well_formed(key):
        # A typo or a truncated key: refused without a database read.
        raise Unauthorized("Invalid API key.")
    digest = key_hash(key)
    hit, row = cache.key(digest)
    if not hit:
        row = await ApiKeyLookup(await sessions()).by_hash(digest)
        cache.put_key(digest, row)
    if row is None:
        raise Unauthorized("Invalid API key.")
    if row.revoked_at is not None:
        raise Unauthorized("The API key has been revoked.")
    if row.expires_at is not None and row.expires_at <= utcnow():
        raise Unauthorized("The API key has expired.")
    if row.user_status != UserStatus.active:
        raise Unauthorized("The API key's user is not active.")
    # Never more than the creator has now: a demoted creator's keys are demoted too.
    role = min(Role(row.role), Role(row.user_role), key=lambda r: r.rank)
    principal = Principal(
        user_id=row.user_id,
        tenant_id=row.tenant_id,
        role=role,
        operator=role == Role.operator,
        api_key_id=row.id,
    )
    if row.tenant_status != TenantStatus.active and not principal.operator:
        raise Forbidden("The tenant is suspended.")
    return principal


async def authenticate(
    settings: Settings,
    sessions: Sessions,
    cache: AccountCache,
    authorization: str | None,
    api_key: str | None = None,
) -> Principal:
    """Turn an Authorization (or X-API-Key) header into a principal, or raise 401/403.

    `sessions()` gives the session to read accounts and keys with, asked for only when the
    cache does not hold them (the dev token and cached callers need none).
    """
    if authorization is None and api_key is not None:
        authorization = f"Bearer {api_key}"
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized()
    token = token.strip()
    if looks_like_key(token):
        return await _key_principal(sessions, cache, token)
    if settings.dev_bypass_active and hmac.compare_digest(
        token.encode(), settings.dev_bypass_token.encode()
    ):
        return dev_principal(settings)

    claims = cache.claims(token)
    if claims is None:
        claims = decode_token(settings, token)
        cache.remember_claims(token, claims)
    user_id = _uuid_claim(claims, "sub")
    row = await _account(sessions, cache, user_id)
    if row is None:
        raise Unauthorized("Invalid token: unknown user.")
    tenant_id, role, user_status, tenant_status = row
    if user_status != UserStatus.active:
        raise Unauthorized("Invalid token: the user is not active.")
    if "tenant_id" in claims and _uuid_claim(claims, "tenant_id") != tenant_id:
        raise Unauthorized("Invalid token: tenant_id does not match the user's tenant.")
    principal = Principal(
        user_id=user_id,
        tenant_id=tenant_id,
        role=Role(role),
        operator=role == Role.operator,
        session_id=_uuid_claim(claims, "sid") if "sid" in claims else None,
    )
    if tenant_status != TenantStatus.active and not principal.operator:
        raise Forbidden("The tenant is suspended.")
    return principal
