"""In the embedded mode a spawn and a status read run in one turn of the event loop.

One loop serves the API, the worker and every poll: a request that hands the loop away
(a task per rate-limit counter once did, on every authenticated request) waits a whole turn
behind everything else that is ready, which under load is most of a poll's latency. With
SQLite on the loop's thread and counters in memory, nothing of theirs needs to wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from conftest import World


async def turns_taken(request: Callable[[], Awaitable[Any]]) -> tuple[Any, int]:
    """`request()`'s answer, and how many turns of the loop went by while it ran."""
    loop = asyncio.get_running_loop()
    turns = 0
    running = True

    def tick() -> None:
        nonlocal turns
        if running:
            turns += 1
            loop.call_soon(tick)

    loop.call_soon(tick)
    await asyncio.sleep(0)  # the first tick runs, then the request starts in a fresh turn
    start = turns
    try:
        answer = await request()
    finally:
        running = False
    return answer, turns - start


@pytest.mark.backend("sqlite")  # the embedded mode is SQLite's
async def test_a_spawn_and_its_polls_never_give_the_loop_away(
    world: World, client: httpx.AsyncClient
) -> None:
    body = {"template_id": str(world.settings.demo_template_id)}
    spawned, spawn_turns = await turns_taken(
        lambda: client.post("/api/spawn", json=body, headers=world.dev)
    )
    assert spawned.status_code == 202, spawned.text
    workspace_id = spawned.json()["workspace"]["id"]
    read, read_turns = await turns_taken(
        lambda: client.get(f"/api/workspaces/{workspace_id}", headers=world.dev)
    )
    assert read.status_code == 200, read.text
    assert (spawn_turns, read_turns) == (0, 0)
