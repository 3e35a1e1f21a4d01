"""Workspace tests: the API plus a real worker in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.queue import Backoff
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.jobs.worker import Worker
from spawnpoint.provisioners import ProvisionerRegistry
from spawnpoint.workspaces.handlers import WorkspaceHandlers

DEADLINE_SECONDS = 30.0


@dataclass
class WorkerHandle:
    provisioners: ProvisionerRegistry
    settings: Settings


@pytest.fixture
def provisioners() -> ProvisionerRegistry:
    """The installed drivers; a test may `add` fakes before starting its worker."""
    return ProvisionerRegistry.from_entry_points()


StartWorker = Callable[..., Awaitable[WorkerHandle]]


@pytest.fixture
async def start_worker(
    backend_settings: Settings, database: Database, provisioners: ProvisionerRegistry
) -> AsyncIterator[StartWorker]:
    """Start an in-process worker (no scheduler, fast retries); stopped at teardown."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    handlers: list[WorkspaceHandlers] = []

    async def start(**overrides: Any) -> WorkerHandle:
        settings = backend_settings.model_copy(update=overrides)
        registry = HandlerRegistry()
        workspace_handlers = WorkspaceHandlers(provisioners)
        workspace_handlers.register(registry)
        handlers.append(workspace_handlers)
        tasks.append(
            asyncio.create_task(
                Worker(
                    database,
                    settings,
                    registry,
                    concurrency=8,
                    lease_seconds=10,
                    poll_interval=0.05,
                    grace_seconds=5,
                    backoff=Backoff(base_seconds=0.01, cap_seconds=0.05),
                ).run(stop)
            )
        )
        return WorkerHandle(provisioners=provisioners, settings=settings)

    yield start
    stop.set()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)
    for workspace_handlers in handlers:
        await workspace_handlers.aclose()


async def wait_for_state(
    client: httpx.AsyncClient,
    workspace_id: str | uuid.UUID,
    state: str,
    headers: dict[str, str],
    *,
    deadline: float = DEADLINE_SECONDS,
) -> dict[str, Any]:
    """Poll the workspace until it reaches `state`; fail with its last body at the deadline."""
    end = time.monotonic() + deadline
    body: dict[str, Any] = {}
    while time.monotonic() < end:
        response = await client.get(f"/api/workspaces/{workspace_id}", headers=headers)
        body = response.json()
        if body.get("state") == state:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"workspace never became {state}: {body}")
