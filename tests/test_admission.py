"""Reads are admitted a few at a time in the embedded mode; writes, probes, streams never wait."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from spawnpoint.kit.admission import ReadAdmission


class Recorder:
    """An ASGI app that holds each request until released, counting those inside at once."""

    def __init__(self) -> None:
        self.inside = 0
        self.most = 0
        self.release = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.inside += 1
        self.most = max(self.most, self.inside)
        await self.release.wait()
        self.inside -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def most_inside(method: str, path: str, *, limit: int, requests: int = 6) -> int:
    inner = Recorder()
    app = ReadAdmission(inner, limit=limit)
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        sent = [asyncio.create_task(client.request(method, path)) for _ in range(requests)]
        for _ in range(50):  # let every request reach the app or the gate
            await asyncio.sleep(0)
        seen = inner.most
        inner.release.set()
        answers = await asyncio.gather(*sent)
    assert all(a.status_code == 200 for a in answers)
    return seen


async def test_api_reads_are_admitted_up_to_the_limit() -> None:
    assert await most_inside("GET", "/api/workspaces/x", limit=1) == 1
    assert await most_inside("GET", "/api/workspaces/x", limit=3) == 3


async def test_writes_probes_and_streams_are_not_held_back() -> None:
    assert await most_inside("POST", "/api/spawn", limit=1) == 6
    assert await most_inside("GET", "/healthz", limit=1) == 6
    assert await most_inside("GET", "/metrics", limit=1) == 6
    assert await most_inside("GET", "/api/jobs/x/logs", limit=1) == 6
    assert await most_inside("GET", "/api/artifacts/x/download", limit=1) == 6
