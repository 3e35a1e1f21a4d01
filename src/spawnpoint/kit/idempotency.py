"""Idempotency-Key for mutating POSTs, kept in the database per tenant.

The key's record is written in the same transaction as the work it names, so a stored
response always belongs to committed work. Only successful responses are stored: a refused
request may be retried with the same key once its cause is fixed.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import Request, status
from fastapi.responses import JSONResponse
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.errors import Conflict, Unprocessable
from spawnpoint.models import IdempotencyRecord

RETENTION = timedelta(hours=24)
REPLAYED = "Idempotent-Replayed"  # response header: this is the stored answer, replayed
MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class StoredResponse:
    status: int
    body: dict[str, Any]


def request_fingerprint(method: str, path: str, query: str, body: Any) -> str:
    canonical = json.dumps([method, path, query, body], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _lock_id(tenant_id: uuid.UUID, key: str) -> int:
    digest = hashlib.sha256(tenant_id.bytes + key.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class IdempotencyKeys:
    def __init__(self, session: AsyncSession, *, tenant_id: uuid.UUID, key: str) -> None:
        if not key or len(key) > MAX_KEY_LENGTH:
            raise Unprocessable(f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.")
        self.session = session
        self.tenant_id = tenant_id
        self.key = key

    async def claim(self, fingerprint: str) -> StoredResponse | None:
        """Return the stored response for a repeat, or None when this request should run.

        Raises:
            Conflict: another request with this key is running right now.
            Unprocessable: the key was used for a different request.
        """
        if self.session.get_bind().dialect.name == "postgresql":
            # Held until this transaction ends; a concurrent duplicate fails fast instead
            # of waiting to replay. (SQLite serialises writers, so a duplicate waits.)
            locked = await self.session.scalar(
                select(func.pg_try_advisory_xact_lock(_lock_id(self.tenant_id, self.key)))
            )
            if not locked:
                raise Conflict("A request with this Idempotency-Key is still in progress.")
        record = await self.session.get(IdempotencyRecord, (self.tenant_id, self.key))
        if record is None:
            return None
        if record.expires_at <= utcnow():
            await self.session.delete(record)
            await self.session.flush()
            return None
        if record.request_hash != fingerprint:
            raise Unprocessable("This Idempotency-Key was already used for a different request.")
        assert record.response_status is not None
        assert record.response_body is not None
        return StoredResponse(status=record.response_status, body=record.response_body)

    def store(self, fingerprint: str, response: StoredResponse) -> None:
        now = utcnow()
        self.session.add(
            IdempotencyRecord(
                tenant_id=self.tenant_id,
                key=self.key,
                request_hash=fingerprint,
                response_status=response.status,
                response_body=response.body,
                created_at=now,
                expires_at=now + RETENTION,
            )
        )


async def purge_expired(session: AsyncSession, *, now: Any) -> int:
    result = await session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def accepted_once(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID,
    key: str | None,
    request: Request,
    document: Any,
    accept: Callable[[bool], Awaitable[dict[str, Any]]],
) -> JSONResponse:
    """202 with the body `accept` returns, once per `Idempotency-Key`.

    With a key, a repeat of the same request (path and `document`) replays the stored answer
    (`Idempotent-Replayed: true`) instead of doing the work again; the record commits with
    the work. `accept(final)` is told whether nothing more is written after it (no key), so
    the unit of work may send its COMMIT with the work's last statements.
    """
    keys = fingerprint = None
    if key is not None:
        keys = IdempotencyKeys(session, tenant_id=tenant_id, key=key)
        fingerprint = request_fingerprint("POST", request.url.path, "", document)
        stored = await keys.claim(fingerprint)
        if stored is not None:
            return JSONResponse(stored.body, status_code=stored.status, headers={REPLAYED: "true"})
    body = await accept(keys is None)
    if keys is not None and fingerprint is not None:
        keys.store(fingerprint, StoredResponse(status=status.HTTP_202_ACCEPTED, body=body))
    return JSONResponse(body, status_code=status.HTTP_202_ACCEPTED)
