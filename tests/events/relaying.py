"""Outbox rows for the relay's tests: committed through a unit of work, read back, waited for."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from chaos.deployment import SPAWNPOINT
from events.broker import Listener, amqp_url
from polling import eventually
from spawnpoint.db import Database
from spawnpoint.events.outbox import outbox_event
from spawnpoint.events.relay import OutboxRelay
from spawnpoint.models import OutboxEvent


async def emit(
    database: Database, events: Sequence[tuple[str, str]], *, tenant_id: uuid.UUID | None = None
) -> list[uuid.UUID]:
    """Commit one outbox row per (key, type), in this order; their ids."""
    ids = []
    async with database.unit_of_work(write=True) as uow:
        for n, (key, event_type) in enumerate(events):
            row = outbox_event(
                tenant_id=tenant_id, type=event_type, key=key, payload={"n": n, "key": key}
            )
            uow.emit(row)
            ids.append(row["id"])
    return ids


async def rows(database: Database, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, OutboxEvent]:
    async with database.transaction(write=False) as session:
        found = (
            await session.execute(select(OutboxEvent).where(OutboxEvent.id.in_(list(ids))))
        ).scalars()
        return {row.id: row for row in found}


async def unpublished(database: Database, ids: Sequence[uuid.UUID]) -> int:
    return sum(1 for row in (await rows(database, ids)).values() if row.published_at is None)


def delivered(listener: Listener, ids: Sequence[uuid.UUID]) -> Callable[[], Any]:
    wanted = {str(i) for i in ids}

    async def probe() -> bool:
        return wanted <= set(listener.ids())

    return probe


async def drain(relay: OutboxRelay, database: Database, ids: Sequence[uuid.UUID]) -> None:
    """Step `relay` until every row of `ids` is marked published."""

    async def probe() -> bool:
        await relay.step()
        return await unpublished(database, ids) == 0

    await eventually(probe, within=20, what="the relay to mark every event published")


async def relay_process(
    database_url: str, vhost: str, workdir: Path, *, output: int | None
) -> asyncio.subprocess.Process:
    """`spawnpoint events relay` on `database_url` and the test's vhost, polling every 0.1 s;
    its stdout and stderr both go to `output` (asyncio.subprocess.PIPE or DEVNULL)."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "RABBITMQ_URL": amqp_url(vhost),
        "ENVIRONMENT": "development",
        "DATA_DIR": str(workdir),
        "LOG_FORMAT": "console",
    }
    return await asyncio.create_subprocess_exec(
        SPAWNPOINT,
        *("events", "relay", "--poll-interval", "0.1"),
        env=env,
        cwd=workdir,
        stdout=output,
        stderr=asyncio.subprocess.STDOUT if output == asyncio.subprocess.PIPE else output,
    )
