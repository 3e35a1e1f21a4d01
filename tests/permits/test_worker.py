"""Every worker consumes permit events when RABBITMQ_URL is set."""

from __future__ import annotations

import asyncio
import contextlib

import httpx

from conftest import World
from polling import eventually
from spawnpoint.jobs.registry import default_registry
from spawnpoint.jobs.worker import run_worker_in_process
from spawnpoint.models import Role

from .conftest import Broker, new_permit, permit_event


async def test_the_worker_runs_the_consumer_with_rabbitmq_url(
    client: httpx.AsyncClient, world: World, broker: Broker
) -> None:
    org = await world.org()
    await broker.declare()
    settings = world.settings.model_copy(update={"rabbitmq_url": broker.url})
    stop = asyncio.Event()
    worker = asyncio.create_task(
        run_worker_in_process(
            world.database, settings, default_registry(settings), stop, tasks=[], poll_interval=0.05
        )
    )
    try:
        permit = new_permit()

        await broker.publish(
            permit_event(
                "permit.approved",
                permit_id=permit,
                tenant_id=org.tenant_id,
                template_id=org.template_id,
            )
        )

        async def running() -> bool:
            response = await client.get(
                f"/api/v1/workspaces/{permit}/status", headers=org.headers[Role.admin]
            )
            return response.status_code == 200 and response.json()["status"] == "running"

        await eventually(running, within=30, what="the permit's workspace running")
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(worker, 30)
