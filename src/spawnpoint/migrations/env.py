from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from spawnpoint import models  # noqa: F401  (registers every table on Base.metadata)
from spawnpoint.config import Settings
from spawnpoint.db import Base, create_engine

config = context.config
settings: Settings = config.attributes.get("settings") or Settings()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(settings.sqlalchemy_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    context.configure(url=settings.sqlalchemy_url, target_metadata=Base.metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
