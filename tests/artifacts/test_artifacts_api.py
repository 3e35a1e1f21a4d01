"""Artifacts through the API, on both backends: content round trips byte for byte, streams
with Range and ETag, and a failed upload (over the limit, or cut off by the client) leaves
no row and no blob. The upload failure tests run a real uvicorn server and a raw socket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import func, select

from conftest import World
from factories import unique
from polling import eventually
from routes import make_artifact
from spawnpoint.app import create_app
from spawnpoint.artifacts.blobstore import FilesystemBlobStore, blob_store_for_settings
from spawnpoint.artifacts.service import create_artifact_from_bytes
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.models import Artifact, AuditEntry, OutboxEvent, Role

MB = 1024 * 1024
BOUNDARY = "spawnpoint-test-boundary"


def store_of(settings: Settings) -> FilesystemBlobStore:
    return blob_store_for_settings(settings)


def tenant_blobs(settings: Settings, tenant_id: uuid.UUID) -> list[Path]:
    root = store_of(settings).blobs / str(tenant_id)
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[int]:
    """`app` on a real uvicorn server on a free loopback port, in this event loop.

    No lifespan: the app shares the test session's database, which its shutdown would close.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def started() -> bool:
        return server.started

    try:
        await eventually(started, what="uvicorn to start")
        yield port
    finally:
        server.should_exit = True
        await task
        sock.close()


def form_head(name: str, *, content_type: str = "application/octet-stream") -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="type"\r\n\r\nblob\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="f.bin"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()


FORM_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def request_head(port: int, headers: dict[str, str], **extra: str) -> bytes:
    lines = [
        "POST /api/artifacts HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}",
        *(f"{k}: {v}" for k, v in {**headers, **extra}.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def audit_entry(database: Database, request_id: str) -> AuditEntry | None:
    async with database.transaction(write=False) as session:
        found = await session.execute(select(AuditEntry).where(AuditEntry.request_id == request_id))
        return found.scalars().first()


async def artifact_count(database: Database, tenant_id: uuid.UUID) -> int:
    async with database.transaction(write=False) as session:
        count = await session.scalar(
            select(func.count()).select_from(Artifact).where(Artifact.tenant_id == tenant_id)
        )
        return int(count or 0)


async def assert_nothing_left(
    world: World, tenant_id: uuid.UUID, request_id: str, *, status: int
) -> None:
    """Once the failed request is on record and its staging is gone: no row, no blob."""
    store = store_of(world.settings)

    async def settled() -> AuditEntry | None:
        entry = await audit_entry(world.database, request_id)
        return entry if entry is not None and not store.staged_files() else None

    entry = await eventually(settled, what="the failed upload to be recorded and cleaned up")
    assert entry.result == "failed"
    assert entry.details["status"] == status
    assert await artifact_count(world.database, tenant_id) == 0
    assert tenant_blobs(world.settings, tenant_id) == []


def _bytes_read() -> int:
    """Bytes this process has read through read syscalls (Linux's /proc/self/io rchar)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


async def test_a_50_mb_multipart_upload_round_trips_byte_for_byte(
    world: World, backend_settings: Settings, database: Database, tmp_path: Path
) -> None:
    org = await world.org()
    headers = org.headers[Role.publisher]
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(50 * MB))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    app = create_app(backend_settings, database=database)
    async with (
        serving(app) as port,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as http,
    ):
        with source.open("rb") as file:
            created = await http.post(
                "/api/artifacts",
                headers=headers,
                data={"name": "big.bin", "type": "dataset", "metadata": '{"rows": 7}'},
                files={"file": ("big.bin", file, "application/x-dataset")},
            )
        assert created.status_code == 201, created.text
        record = created.json()
        assert record["size"] == 50 * MB
        assert record["sha256"] == digest
        assert record["has_content"] is True
        assert record["metadata"] == {"rows": 7}
        assert record["content_type"] == "application/x-dataset"

        download = f"/api/artifacts/{record['id']}/download"
        hasher = hashlib.sha256()
        async with http.stream("GET", download, headers=org.headers[Role.viewer]) as response:
            assert response.status_code == 200
            assert response.headers["content-length"] == str(50 * MB)
            assert response.headers["content-type"] == "application/x-dataset"
            assert response.headers["etag"] == f'"{digest}"'
            async for chunk in response.aiter_bytes():
                hasher.update(chunk)
        assert hasher.hexdigest() == digest

        # HEAD answers GET's headers without reading content it would drop (this process
        # serves the app: its read syscalls' byte count grows by each block read).
        read_before = _bytes_read()
        head = await http.head(download, headers=org.headers[Role.viewer])
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-length"] == str(50 * MB)
        assert head.headers["etag"] == f'"{digest}"'
        assert _bytes_read() - read_before < 64 * 1024  # 1 MB or more when it streamed
        ranged_head = await http.head(download, headers={**headers, "Range": "bytes=0-99"})
        assert ranged_head.status_code == 206
        assert ranged_head.headers["content-range"] == f"bytes 0-99/{50 * MB}"
        assert ranged_head.headers["content-length"] == "100"

        with source.open("rb") as file:
            file.seek(10 * MB)
            expected = file.read(1000)
        ranged = await http.get(download, headers={**headers, "Range": "bytes=10485760-10486759"})
        assert ranged.status_code == 206
        assert ranged.headers["content-range"] == f"bytes 10485760-10486759/{50 * MB}"
        assert ranged.headers["content-length"] == "1000"
        assert ranged.content == expected


async def test_ranges_etags_and_304(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    content = bytes(range(256)) * 4
    created = await client.post(
        "/api/artifacts",
        headers=org.headers[Role.publisher],
        json={
            "name": "bytes.bin",
            "type": "blob",
            "content": base64.b64encode(content).decode(),
            "content_type": "text/plain",
        },
    )
    assert created.status_code == 201, created.text
    url = f"/api/artifacts/{created.json()['id']}/download"
    viewer = org.headers[Role.viewer]
    etag = f'"{hashlib.sha256(content).hexdigest()}"'

    whole = await client.get(url, headers=viewer)
    assert (whole.status_code, whole.content, whole.headers["etag"]) == (200, content, etag)
    # Served as stored: no charset added to a text type.
    assert whole.headers["content-type"] == "text/plain"

    cases: list[tuple[str, int, bytes, str | None]] = [
        ("bytes=0-0", 206, content[:1], "bytes 0-0/1024"),
        ("bytes=1000-", 206, content[1000:], "bytes 1000-1023/1024"),
        ("bytes=-24", 206, content[-24:], "bytes 1000-1023/1024"),
        ("bytes=1000-5000", 206, content[1000:], "bytes 1000-1023/1024"),
        ("bytes=0-1,5-6", 200, content, None),  # several ranges: the whole content
        ("items=0-1", 200, content, None),
    ]
    for header, status, body, content_range in cases:
        response = await client.get(url, headers={**viewer, "Range": header})
        assert response.status_code == status, header
        assert response.content == body, header
        assert response.headers.get("content-range") == content_range, header
        assert response.headers["content-length"] == str(len(body)), header

    unsatisfiable = await client.get(url, headers={**viewer, "Range": "bytes=1024-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == "bytes */1024"
    assert unsatisfiable.headers["content-type"] == "application/problem+json"

    for match in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        cached = await client.get(url, headers={**viewer, "If-None-Match": match})
        assert cached.status_code == 304, match
        assert cached.content == b""
        assert cached.headers["etag"] == etag
    stale = await client.get(url, headers={**viewer, "If-None-Match": '"stale"'})
    assert stale.status_code == 200
    # If-Range with another ETag: the range is ignored and everything is sent.
    moved = await client.get(url, headers={**viewer, "Range": "bytes=0-0", "If-Range": '"x"'})
    assert (moved.status_code, moved.content) == (200, content)


async def test_replacing_content_publishes_the_new_blob_and_removes_the_old(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    headers = org.headers[Role.publisher]
    created = await client.post(
        "/api/artifacts",
        headers=headers,
        files={"file": ("a.txt", b"first version", "text/plain")},
        data={"name": "notes", "type": "note"},
    )
    assert created.status_code == 201, created.text
    record = created.json()
    (old_blob,) = tenant_blobs(world.settings, org.tenant_id)

    metadata_only = await client.put(
        f"/api/artifacts/{record['id']}", headers=headers, json={"metadata": {"v": 1}}
    )
    assert metadata_only.status_code == 200, metadata_only.text
    assert metadata_only.json()["sha256"] == record["sha256"]
    assert metadata_only.json()["manifest"] == record["manifest"]
    assert tenant_blobs(world.settings, org.tenant_id) == [old_blob]

    replaced = await client.put(
        f"/api/artifacts/{record['id']}",
        headers=headers,
        files={"file": ("b.md", b"# second version", "text/markdown")},
        data={"name": "notes-2"},
    )
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert body["name"] == "notes-2"
    assert body["metadata"] == {"v": 1}
    assert body["size"] == len(b"# second version")
    assert body["sha256"] == hashlib.sha256(b"# second version").hexdigest()
    assert body["content_type"] == "text/markdown"
    assert body["manifest"] != record["manifest"]
    (new_blob,) = tenant_blobs(world.settings, org.tenant_id)
    assert new_blob != old_blob
    download = await client.get(f"/api/artifacts/{record['id']}/download", headers=headers)
    assert download.content == b"# second version"

    inline = await client.put(
        f"/api/artifacts/{record['id']}",
        headers=headers,
        json={"content": base64.b64encode(b"third").decode(), "content_type": "text/plain"},
    )
    assert inline.status_code == 200, inline.text
    third = await client.get(f"/api/artifacts/{record['id']}/download", headers=headers)
    assert third.content == b"third"
    assert len(tenant_blobs(world.settings, org.tenant_id)) == 1

    events = await client.get("/api/events", headers=headers, params={"limit": 200})
    mine = [e for e in events.json()["items"] if e["key"] == record["id"]]
    assert [e["type"] for e in mine] == [
        "artifact.updated",
        "artifact.updated",
        "artifact.updated",
        "artifact.created",
    ]


async def test_delete_removes_the_row_and_the_blob(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    headers = org.headers[Role.publisher]
    artifact_id = await make_artifact(world, org.tenant_id, content=b"to be deleted")
    assert len(tenant_blobs(world.settings, org.tenant_id)) == 1
    deleted = await client.delete(f"/api/artifacts/{artifact_id}", headers=headers)
    assert deleted.status_code == 204
    assert tenant_blobs(world.settings, org.tenant_id) == []
    for url in (f"/api/artifacts/{artifact_id}", f"/api/artifacts/{artifact_id}/download"):
        assert (await client.get(url, headers=headers)).status_code == 404
    events = await client.get("/api/events", headers=headers, params={"limit": 200})
    types = [e["type"] for e in events.json()["items"] if e["key"] == str(artifact_id)]
    assert types == ["artifact.deleted", "artifact.created"]


async def test_an_artifact_without_content(client: httpx.AsyncClient, world: World) -> None:
    org = await world.org()
    headers = org.headers[Role.publisher]
    created = await client.post(
        "/api/artifacts",
        headers=headers,
        json={"name": "pointer", "type": "link", "metadata": {"url": "https://example.test"}},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["has_content"], body["size"], body["sha256"], body["manifest"]) == (
        False,
        None,
        None,
        None,
    )
    download = await client.get(f"/api/artifacts/{body['id']}/download", headers=headers)
    assert download.status_code == 404
    assert download.headers["content-type"] == "application/problem+json"
    assert "no content" in download.json()["detail"]


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"name": "x", "type": "t", "content": "not base64!"}, "#/content"),
        ({"name": "x", "type": "t", "bogus": 1}, "#/bogus"),
        ({"name": " x", "type": "t"}, "#/name"),
        ({"name": "x", "type": "t", "content_type": "text/plain\r\nX-Evil: 1"}, "#/content_type"),
        ({"name": "x", "type": "has space"}, "#/type"),
        ({"type": "t"}, "#/name"),
        ({"name": "x", "type": "t", "metadata": [1]}, "#/metadata"),
    ],
)
async def test_bad_json_bodies_are_422(
    client: httpx.AsyncClient, world: World, body: dict[str, Any], pointer: str
) -> None:
    org = await world.org()
    response = await client.post("/api/artifacts", headers=org.headers[Role.publisher], json=body)
    assert response.status_code == 422, response.text
    assert pointer in [e["pointer"] for e in response.json()["errors"]]
    assert await artifact_count(world.database, org.tenant_id) == 0


async def test_bad_bodies_are_problems_and_leave_nothing(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    headers = org.headers[Role.publisher]
    plain = await client.post(
        "/api/artifacts", headers={**headers, "Content-Type": "text/plain"}, content=b"hello"
    )
    assert plain.status_code == 415
    not_json = await client.post(
        "/api/artifacts",
        headers={**headers, "Content-Type": "application/json"},
        content=b'{"name": "x", "type": "t", "metadata": {"n": NaN}}',
    )
    assert not_json.status_code == 422
    truncated = await client.post(
        "/api/artifacts",
        headers={**headers, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        content=form_head("cut") + b"partial content, no closing boundary",
    )
    assert truncated.status_code == 400
    assert truncated.headers["content-type"] == "application/problem+json"
    # The upload routes pass the app's body limit, but a JSON body is still held to it.
    big_json = await client.post(
        "/api/artifacts",
        headers=headers,
        json={"name": "x", "type": "t", "content": base64.b64encode(b"j" * MB).decode()},
    )
    assert big_json.status_code == 413
    assert "multipart" in big_json.json()["detail"]
    unknown_field = await client.post(
        "/api/artifacts",
        headers=headers,
        data={"name": "x", "type": "t", "colour": "red"},
        files={"file": ("f", b"data", "text/plain")},
    )
    assert unknown_field.status_code == 422
    both = await client.post(
        "/api/artifacts",
        headers=headers,
        data={"name": "x", "type": "t"},
        files={"file": ("f", b"data", "text/plain")},
        params={},
    )
    assert both.status_code == 201  # the control: a good multipart body is accepted
    assert await artifact_count(world.database, org.tenant_id) == 1
    assert store_of(world.settings).staged_files() == []


async def test_list_filters_by_type_and_exact_name_prefix(
    client: httpx.AsyncClient, world: World
) -> None:
    org = await world.org()
    headers = org.headers[Role.publisher]
    names = ["build-1", "build-2", "Build-3", "build_x", "build%y", "report", "bü-1"]
    for i, name in enumerate(names):
        response = await client.post(
            "/api/artifacts",
            headers=headers,
            json={"name": name, "type": "plan" if i % 2 else "report"},
        )
        assert response.status_code == 201, response.text

    async def listed(**params: str) -> list[str]:
        found: list[str] = []
        cursor: str | None = None
        while True:
            query = {**params, "limit": "2", **({"cursor": cursor} if cursor else {})}
            page = await client.get("/api/artifacts", headers=headers, params=query)
            assert page.status_code == 200, page.text
            found += [item["name"] for item in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                return found

    assert await listed() == names
    assert await listed(name="build") == ["build-1", "build-2", "build_x", "build%y"]
    assert await listed(name="build_") == ["build_x"]
    assert await listed(name="build%") == ["build%y"]
    assert await listed(name="B") == ["Build-3"]
    assert await listed(name="bü") == ["bü-1"]
    assert await listed(type="plan") == names[1::2]
    assert await listed(type="plan", name="build") == ["build-2", "build_x"]
    assert await listed(name="zzz") == []


async def test_another_tenants_artifact_is_not_found(
    client: httpx.AsyncClient, world: World
) -> None:
    mine, theirs = await world.org(), await world.org()
    artifact_id = await make_artifact(world, theirs.tenant_id, content=b"secret")
    headers = mine.headers[Role.admin]
    base = f"/api/artifacts/{artifact_id}"
    assert (await client.get(base, headers=headers)).status_code == 404
    assert (await client.get(f"{base}/download", headers=headers)).status_code == 404
    put = await client.put(base, headers=headers, json={"metadata": {"x": 1}})
    assert put.status_code == 404
    replace = await client.put(base, headers=headers, files={"file": ("f", b"mine", "text/plain")})
    assert replace.status_code == 404
    assert (await client.delete(base, headers=headers)).status_code == 404
    listed = await client.get("/api/artifacts", headers=headers, params={"limit": 200})
    assert str(artifact_id) not in listed.text
    # Theirs is untouched, its content still there; the refused replace staged nothing.
    owner = theirs.headers[Role.viewer]
    assert (await client.get(f"{base}/download", headers=owner)).content == b"secret"
    assert store_of(world.settings).staged_files() == []


async def test_an_upload_over_the_limit_is_413_and_leaves_nothing(
    world: World, backend_settings: Settings, database: Database
) -> None:
    limited = backend_settings.model_copy(update={"artifact_max_bytes": 64 * 1024})
    app = create_app(limited, database=database)
    org = await world.org()
    headers = org.headers[Role.publisher]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://spawnpoint.test") as client:
        request_id = f"over-{org.tenant_id}"
        response = await client.post(
            "/api/artifacts",
            headers={**headers, "X-Request-ID": request_id},
            data={"name": "too-big", "type": "blob"},
            files={"file": ("f", b"x" * (200 * 1024), "application/octet-stream")},
        )
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "ARTIFACT_MAX_BYTES" in response.json()["detail"]
        await assert_nothing_left(world, org.tenant_id, request_id, status=413)

        # At the limit exactly, the upload is accepted.
        fits = await client.post(
            "/api/artifacts",
            headers=headers,
            data={"name": "fits", "type": "blob"},
            files={"file": ("f", b"x" * (64 * 1024), "application/octet-stream")},
        )
        assert fits.status_code == 201, fits.text

    # Sent in chunks with no declared length, the refusal comes while the body still streams.
    org = await world.org()
    request_id = f"chunked-{org.tenant_id}"
    async with serving(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            request_head(
                port,
                org.headers[Role.publisher],
                **{"Transfer-Encoding": "chunked", "X-Request-ID": request_id},
            )
        )
        head = form_head("streamed")
        writer.write(f"{len(head):x}\r\n".encode() + head + b"\r\n")
        chunk = b"y" * 16384
        for _ in range(12):  # 192 KiB of content, three times the limit; no final chunk
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout=30)
        assert status_line.startswith(b"HTTP/1.1 413"), status_line
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
        await assert_nothing_left(world, org.tenant_id, request_id, status=413)


async def test_a_client_that_disconnects_mid_body_leaves_nothing(
    world: World, backend_settings: Settings, database: Database
) -> None:
    app = create_app(backend_settings, database=database)
    org = await world.org()
    request_id = f"cut-{org.tenant_id}"
    async with serving(app) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = form_head("cut-off")
        declared = len(head) + 20 * MB + len(FORM_TAIL)
        writer.write(
            request_head(
                port,
                org.headers[Role.publisher],
                **{"Content-Length": str(declared), "X-Request-ID": request_id},
            )
        )
        writer.write(head)
        for _ in range(3):  # 3 MB of the declared 20, then hang up
            writer.write(b"z" * MB)
            await writer.drain()

        async def staged() -> bool:
            return bool(store_of(world.settings).staged_files())

        # The server has started writing the content to a staged blob...
        await eventually(staged, what="the upload to be staged")
        writer.transport.abort()
        # ...and once the connection is gone, drops it: no row, no blob, a failed entry.
        await assert_nothing_left(world, org.tenant_id, request_id, status=400)
    del reader


async def test_a_rolled_back_artifact_leaves_no_row_event_or_blob(
    client: httpx.AsyncClient, world: World
) -> None:
    """`create_artifact_from_bytes`, as job handlers call it (the store: the app's)."""
    org = await world.org()
    store = store_of(world.settings)

    class Abort(Exception):
        pass

    with pytest.raises(Abort):  # noqa: PT012  (the block is the transaction that aborts)
        async with world.database.unit_of_work(write=True) as uow:
            await create_artifact_from_bytes(
                uow,
                tenant_id=org.tenant_id,
                name=unique("rolled-back"),
                type="build-plan",
                content=b"{}",
                content_type="application/json",
                metadata={},
                store=store,
            )
            raise Abort
    assert await artifact_count(world.database, org.tenant_id) == 0
    assert tenant_blobs(world.settings, org.tenant_id) == []
    assert store.staged_files() == []
    async with world.database.transaction(write=False) as session:
        events = await session.scalar(
            select(func.count())
            .select_from(OutboxEvent)
            .where(OutboxEvent.tenant_id == org.tenant_id, OutboxEvent.type.like("artifact.%"))
        )
    assert events == 0

    # Committed, the same call leaves the row, its event and its content. The content is in
    # its published place before the COMMIT: a crash just after it cannot strand it staged.
    async with world.database.unit_of_work(write=True) as uow:
        artifact_id = await create_artifact_from_bytes(
            uow,
            tenant_id=org.tenant_id,
            name="plan.json",
            type="build-plan",
            content=b'{"steps": []}',
            content_type="application/json",
            metadata={"job": "x"},
        )
        assert len(tenant_blobs(world.settings, org.tenant_id)) == 1
        assert store_of(world.settings).staged_files() == []
    (blob,) = tenant_blobs(world.settings, org.tenant_id)
    assert blob.read_bytes() == b'{"steps": []}'
    assert str(artifact_id) in str(blob)
