"""The yardstick for bench/api_read.py: the least a FastAPI app can do to serve the same page.

It runs the same SELECT as spawnpoint's GET /api/templates (the demo tenant's templates and the
platform templates, joined to their current version, ordered by id, one row past the page) over
the same database with SQLAlchemy async + psycopg and the same pool size, and returns the same
JSON shape. No auth, no tenant-scoping logic, no ORM entities, no pydantic: rows go straight to
orjson.

Run: DATABASE_URL=postgresql+psycopg://... python bench/baseline_app.py --port 8001
(uvicorn with uvloop + httptools in one process, like `spawnpoint serve`).
"""

from __future__ import annotations

import argparse
import base64
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

DEMO_TENANT_ID = uuid.UUID("00000000-0000-0000-0000-000000000001")

# The columns spawnpoint's ORM query fetches (both entities in full), so both servers make the
# database and the driver do the same work.
PAGE = text(
    """
    SELECT t.id, t.tenant_id, t.name, t.description, t.provisioner, t.current_version,
           t.created_at, t.updated_at,
           v.template_id, v.version, v.provisioner AS v_provisioner, v.spec, v.created_by,
           v.created_at AS v_created_at
    FROM templates AS t
    JOIN template_versions AS v ON v.template_id = t.id AND v.version = t.current_version
    WHERE t.tenant_id = :tenant_id OR t.tenant_id IS NULL
    ORDER BY t.id
    LIMIT :limit
    """
)


def sqlalchemy_url(url: str) -> str:
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url.removeprefix(plain)
    return url


def create_baseline_app(database_url: str, *, pool_size: int, tenant_id: uuid.UUID) -> FastAPI:
    # Same pool shape as spawnpoint.db.create_engine.
    engine = create_async_engine(
        sqlalchemy_url(database_url), pool_size=pool_size, max_overflow=pool_size
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(title="baseline", lifespan=lifespan)

    @app.get("/api/templates")
    async def list_templates(limit: int = 50) -> Response:
        async with engine.connect() as conn:
            rows = (await conn.execute(PAGE, {"tenant_id": tenant_id, "limit": limit + 1})).all()
        cursor = None
        if len(rows) > limit:
            rows = rows[:limit]
            cursor = base64.urlsafe_b64encode(str(rows[-1].id).encode()).decode().rstrip("=")
        items: list[dict[str, Any]] = [
            {
                "id": r.id,
                "tenant_id": r.tenant_id,
                "name": r.name,
                "description": r.description,
                "provisioner": r.provisioner,
                "current_version": r.current_version,
                "spec": r.spec,
                "created_at": r.created_at,
                "updated_at": r.updated_at,
            }
            for r in rows
        ]
        body = orjson.dumps({"items": items, "next_cursor": cursor}, option=orjson.OPT_UTC_Z)
        return Response(body, media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8001")))
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "warning"))
    args = parser.parse_args()
    app = create_baseline_app(
        os.environ["DATABASE_URL"],
        pool_size=int(os.environ.get("DATABASE_POOL_SIZE", "10")),
        tenant_id=uuid.UUID(os.environ.get("DEMO_TENANT_ID", str(DEMO_TENANT_ID))),
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level=args.log_level,
        proxy_headers=True,
    )


if __name__ == "__main__":
    main()
