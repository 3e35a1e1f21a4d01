"""The filesystem blob store on its own (no database involved)."""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import pytest

from spawnpoint.artifacts.blobstore import BlobMissing, FilesystemBlobStore


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
    staged = await store.stage()
    await staged.write(b"kept")
    await staged.finish()
    await store.publish(staged, "tenant/artifact/key")
    await staged.discard()  # once published, a no-op
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
