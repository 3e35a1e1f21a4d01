"""Apps with their own identity settings, on the session's database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from spawnpoint.app import create_app
from spawnpoint.auth.setup import close_identity
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.models import AuditEntry


@asynccontextmanager
async def app_client(
    settings: Settings, database: Database, *, client_ip: str = "127.0.0.1", **overrides: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings.model_copy(update=overrides), database=database)
    transport = httpx.ASGITransport(app=app, client=(client_ip, 50000))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://spawnpoint.test") as c:
            yield app, c
    finally:
        await close_identity(app)


async def entries(database: Database, request_id: str) -> list[AuditEntry]:
    async with database.transaction(write=False) as session:
        rows = await session.execute(select(AuditEntry).where(AuditEntry.request_id == request_id))
        return list(rows.scalars())
