"""Handlers for worker subprocesses started by the tests.

Loaded with `spawnpoint worker --handlers job_test_handlers:register` and this directory on
PYTHONPATH, or through a test-made `spawnpoint.jobs` entry point.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from spawnpoint.jobs.context import JobContext
from spawnpoint.jobs.registry import HandlerRegistry

CRASH_ONCE = "test.crash-once"
ECHO = "test.echo"


def register(registry: HandlerRegistry) -> None:
    registry.register(CRASH_ONCE, crash_once)
    registry.register(ECHO, echo)


def _append(path: Path, line: str) -> None:
    with path.open("a") as marker:
        marker.write(line + "\n")


async def crash_once(ctx: JobContext) -> dict[str, int]:
    """Record each start in the payload's marker file; hang on attempt 1 (to be killed)."""
    marker = Path(ctx.payload["marker"])
    await asyncio.to_thread(_append, marker, f"start {ctx.attempt}")
    if ctx.attempt == 1:
        await asyncio.Event().wait()
    await asyncio.to_thread(_append, marker, f"done {ctx.attempt}")
    return {"attempt": ctx.attempt}


async def echo(ctx: JobContext) -> dict[str, object]:
    return dict(ctx.payload)


SERVICE_ECHO = "acme.echo"


class EchoPayload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field(max_length=100)


def register_service(registry: HandlerRegistry) -> None:
    """A third party's service job type: enqueueable through POST /api/jobs."""
    registry.register(SERVICE_ECHO, echo, payload=EchoPayload)
