"""The filesystem blob store on its own (no database involved)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import threading
import time
from pathlib import Path

import pytest

from polling import eventually
from spawnpoint.artifacts.blobstore import (
    CHUNK_BYTES,
    MAX_INFLIGHT_BLOCKS,
    SYNC_EVERY_BYTES,
    BlobMissing,
    FilesystemBlobStore,
    _FileStaged,
)


async def test_pieces_of_every_size_are_written_and_hashed_in_order(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    rng = random.Random(7)
    # Many tiny pieces (more than one vectored write holds) and some over a chunk.
    pieces = [os.urandom(rng.choice([1, 7, 100, 5_000])) for _ in range(3000)]
    pieces[100:100] = [os.urandom(1_500_000), os.urandom(70_000)]
    staged = await store.stage()
    for piece in pieces:
        await staged.write(piece)
    await staged.finish()
    content = b"".join(pieces)
    assert staged.size == len(content)
    assert staged.sha256 == hashlib.sha256(content).hexdigest()
    await store.publish(staged, "t/a/1")
    reader = await store.open("t/a/1")
    read = b"".join([chunk async for chunk in reader.iter_range(0, reader.size)])
    assert read == content
    reader = await store.open("t/a/1")
    assert b"".join([c async for c in reader.iter_range(5, 10)]) == content[5:10]
    assert store.staged_files() == []


async def test_discarded_and_deleted_blobs_leave_no_files(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    staged = await store.stage()
    await staged.write(b"x" * 3_000_000)
    await staged.discard()
    assert store.staged_files() == []
    # Published by a transaction that then rolled back: removed.
    staged = await store.stage()
    await staged.write(b"rolled back")
    await staged.finish()
    await store.publish(staged, "tenant/artifact/gone")
    assert [p.name for p in store.published_files()] == ["gone"]
    staged.abandon()
    assert store.published_files() == []
    # Published and kept (its row committed): discarding is a no-op.
    staged = await store.stage()
    await staged.write(b"kept")
    await staged.finish()
    await store.publish(staged, "tenant/artifact/key")
    staged.keep()
    await staged.discard()
    staged.abandon()
    assert [p.name for p in store.published_files()] == ["key"]
    await store.delete("tenant/artifact/key")
    await store.delete("tenant/artifact/key")  # already gone: a no-op
    assert store.published_files() == []
    assert list(store.blobs.iterdir()) == []  # the emptied folders went too
    with pytest.raises(BlobMissing):
        await store.open("tenant/artifact/key")


async def test_an_open_blob_stays_readable_after_it_is_deleted(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    staged = await store.stage()
    await staged.write(b"still here")
    await staged.finish()
    await store.publish(staged, "t/a/k")
    reader = await store.open("t/a/k")
    await store.delete("t/a/k")
    assert b"".join([c async for c in reader.iter_range(0, reader.size)]) == b"still here"


@pytest.mark.parametrize("key", ["", "../x", "a/../b", "a//b", "/abs", "a/./b"])
def test_keys_cannot_leave_the_store(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValueError, match="not a blob key"):
        FilesystemBlobStore(tmp_path).path_of(key)


async def test_old_staged_files_are_swept_and_new_ones_kept(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)
    old, new = await store.stage(), await store.stage()
    await old.finish()
    await new.finish()
    old_path, new_path = old.path, new.path  # type: ignore[attr-defined]
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(old_path, (two_days_ago, two_days_ago))
    assert store.sweep_staging() == 1
    assert store.staged_files() == [new_path]


def _lane_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("artifact-")]


async def _no_lane_threads() -> bool:
    return not _lane_threads()


async def test_a_large_blob_streams_through_a_bounded_queue_and_its_threads_end(
    tmp_path: Path,
) -> None:
    store = FilesystemBlobStore(tmp_path)
    await eventually(_no_lane_threads, what="earlier tests' writer threads to end")
    staged = await store.stage()
    assert isinstance(staged, _FileStaged)
    digest = hashlib.sha256()
    # Past several periodic syncs, in pieces of the size uvicorn hands over.
    piece_size = 256 * 1024
    count = (2 * SYNC_EVERY_BYTES + 3 * CHUNK_BYTES) // piece_size + 1
    for index in range(count):
        piece = index.to_bytes(4, "big") * (piece_size // 4)
        digest.update(piece)
        await staged.write(piece)
        # Blocks queued or running (a write and a hash each) never exceed the bound.
        assert len(staged._inflight) <= 2 * MAX_INFLIGHT_BLOCKS
    assert len(_lane_threads()) == 3  # writer, hasher, syncer
    await staged.finish()
    assert staged.size == count * piece_size
    assert staged.sha256 == digest.hexdigest()
    assert staged.path.stat().st_size == staged.size
    await eventually(_no_lane_threads, what="the writer and hasher threads to end")
    await store.publish(staged, "t/a/big")
    reader = await store.open("t/a/big")
    assert reader.size == staged.size
    await reader.close()


async def test_a_blob_discarded_while_its_blocks_are_written_leaves_no_file(
    tmp_path: Path,
) -> None:
    store = FilesystemBlobStore(tmp_path)
    staged = await store.stage()
    for _ in range(5 * MAX_INFLIGHT_BLOCKS):
        await staged.write(os.urandom(CHUNK_BYTES))
    await staged.discard()
    assert store.staged_files() == []
    await eventually(_no_lane_threads, what="the writer and hasher threads to end")
    with pytest.raises(RuntimeError, match="finished"):
        await staged.write(b"more")


async def test_a_failed_block_write_fails_the_blob_and_discarding_it_cleans_up(
    tmp_path: Path,
) -> None:
    store = FilesystemBlobStore(tmp_path)
    staged = await store.stage()
    assert isinstance(staged, _FileStaged)
    await staged.write(os.urandom(CHUNK_BYTES))  # the threads start with this block
    # The descriptor now refers to a file opened read-only: every later write fails (EBADF).
    assert staged._fd is not None
    read_only = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(read_only, staged._fd)
    finally:
        os.close(read_only)

    async def write_on() -> None:
        for _ in range(3 * MAX_INFLIGHT_BLOCKS):
            await staged.write(os.urandom(CHUNK_BYTES))
        await staged.finish()

    # The error of a block the writer thread failed reaches the request that writes on.
    with pytest.raises(OSError, match="Bad file descriptor"):
        await write_on()
    await staged.discard()
    assert store.staged_files() == []
    await eventually(_no_lane_threads, what="the writer and hasher threads to end")


async def test_concurrent_large_blobs_each_get_their_own_bytes_and_hash(tmp_path: Path) -> None:
    store = FilesystemBlobStore(tmp_path)

    async def upload(seed: int) -> tuple[_FileStaged, str]:
        staged = await store.stage()
        assert isinstance(staged, _FileStaged)
        digest = hashlib.sha256()
        rng = random.Random(seed)
        for _ in range(40):
            piece = rng.randbytes(rng.choice([1_000, 65_536, 300_000]))
            digest.update(piece)
            await staged.write(piece)
            await asyncio.sleep(0)  # interleave the uploads
        await staged.finish()
        return staged, digest.hexdigest()

    results = await asyncio.gather(*(upload(seed) for seed in range(4)))
    for staged, digest in results:
        assert staged.sha256 == digest
        assert hashlib.sha256(staged.path.read_bytes()).hexdigest() == digest
    await eventually(_no_lane_threads, what="the writer and hasher threads to end")
