"""Where artifact content lives: a small blob-store interface and its filesystem default.

Content is written to a staged (temporary) blob while it is hashed, made durable, and
published under its key in the transaction that writes the row naming it: kept when that
commits, removed when it rolls back (`ArtifactService` hooks both), so an upload that fails
or is aborted leaves no row and no blob, a row never points to content that was not
completely written, and a crash right after the commit cannot leave the content behind in
staging. Nothing reads a key before the row naming it commits. Blobs are removed only after
the commit that deleted or replaced their row.

The filesystem store keeps staged blobs in `<root>/staging/` and published ones in
`<root>/blobs/<key>`, on one filesystem, so publishing is one atomic rename. File I/O and
hashing run in worker threads in blocks of `CHUNK_BYTES`, off the event loop (both release
the GIL for large buffers), behind a bounded queue (see `_FileStaged`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import queue
import threading
import time
import uuid
import weakref
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread

from spawnpoint.kit.ids import uuid7

if TYPE_CHECKING:
    from spawnpoint.config import Settings
    from spawnpoint.db import Database

log = logging.getLogger("spawnpoint.artifacts")
CHUNK_BYTES = 1024 * 1024
# Pieces per vectored write: well under IOV_MAX (1024 on Linux), whatever sizes arrive.
MAX_PENDING_CHUNKS = 256
# Blocks of one upload queued for (or in) its writer and hasher: its memory bound.
MAX_INFLIGHT_BLOCKS = 8
# The writer flushes a staged file to disk every so many bytes, not all at the end.
SYNC_EVERY_BYTES = 16 * 1024 * 1024
# Staged blobs older than this belong to a process that died mid-upload (or to a job whose
# transaction rolled back): the store removes them when it is opened.
STALE_STAGING_SECONDS = 24 * 3600
ARTIFACTS_DIR = "artifacts"


def _sync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class BlobMissing(LookupError):
    """No published blob has this key."""


class StagedBlob(ABC):
    """Content being written: hashed as it arrives, invisible until published."""

    size: int = 0
    sha256: str = ""

    @abstractmethod
    async def write(self, chunk: bytes | memoryview) -> None:
        """Append `chunk` (buffered, and written in blocks of `CHUNK_BYTES`); it is kept by
        reference until written, so it must not change afterwards (`bytes`, or a view of
        them). Raises the error of an earlier block that failed to write."""

    @abstractmethod
    async def finish(self) -> None:
        """Write what is buffered and make it durable; `size` and `sha256` are then final."""

    @abstractmethod
    async def discard(self) -> None:
        """Remove the content, staged or published; a no-op once kept or discarded."""

    @abstractmethod
    def abandon(self) -> None:
        """`discard`, synchronously: for a rollback hook, which cannot await."""

    @abstractmethod
    def keep(self) -> None:
        """The row naming the published content committed: never remove it from here on."""


class BlobReader(ABC):
    """One published blob, opened: it stays readable even if it is deleted meanwhile."""

    size: int

    @abstractmethod
    def iter_range(self, start: int, stop: int) -> AsyncIterator[bytes]:
        """Bytes `start` up to (not including) `stop`, in chunks; closes the reader at the end."""

    @abstractmethod
    async def close(self) -> None: ...


class BlobStore(ABC):
    """The contract a content store implements (the filesystem is the default).

    Keys are opaque strings of at most 500 characters chosen by `new_key`; a key is written
    once and never reused, so a replaced artifact's old blob can be removed safely.
    """

    def new_key(self, *, tenant_id: uuid.UUID, artifact_id: uuid.UUID) -> str:
        return f"{tenant_id}/{artifact_id}/{uuid7().hex}"

    @abstractmethod
    async def stage(self) -> StagedBlob:
        """Start a staged blob."""

    @abstractmethod
    async def publish(self, staged: StagedBlob, key: str) -> None:
        """Make the finished `staged` blob readable under `key`."""

    @abstractmethod
    async def open(self, key: str) -> BlobReader:
        """Open the blob under `key`. Raises `BlobMissing`."""

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the blob under `key`; a no-op when there is none."""


_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]", list[bytes | memoryview]]


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _complete(future: asyncio.Future[None], failure: BaseException | None) -> None:
    if future.done():
        return
    if failure is None:
        future.set_result(None)
    else:
        future.set_exception(failure)


class _Lane:
    """One thread running one kind of step (writing, or hashing) over the blocks of one
    staged blob, in the order they were queued; each block's future completes on the loop.

    A step that fails fails every later block of the lane too, without running it.
    """

    def __init__(self, name: str, step: Callable[[list[bytes | memoryview]], None]) -> None:
        self._step = step
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, chunks: list[bytes | memoryview]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        # Nobody may wait for a discarded upload's blocks: never warn about their errors.
        future.add_done_callback(_retrieve)
        self._jobs.put((loop, future, chunks))
        return future

    def close(self) -> None:
        """Let the thread end once the blocks queued so far have run."""
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, chunks = job
            failure = self._failure
            if failure is None:
                try:
                    self._step(chunks)
                except BaseException as exc:  # handed to the awaiting request
                    failure = self._failure = exc
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                loop.call_soon_threadsafe(_complete, future, failure)


class _FileStaged(StagedBlob):
    """A staged file, written and hashed off the event loop while the next blocks arrive.

    Chunks are gathered into blocks of `CHUNK_BYTES` (one vectored write each). A large
    blob gets two threads of its own, a writer and a hasher, each taking the blocks in order
    from its queue; both release the GIL for large buffers, so they run beside the loop,
    which goes on receiving. At most `MAX_INFLIGHT_BLOCKS` blocks are queued or running, so
    memory stays bounded whatever the upload's size: a request that gets ahead of the disk
    waits for the oldest block. Every `SYNC_EVERY_BYTES` a third thread flushes what was
    written so far to disk (`fdatasync`, one at a time, while the writer goes on filling the
    page cache), so the `fsync` that `finish` ends with (before the row commits) has little
    left to write. A blob that ends within its first block is written, hashed and synced in
    one worker-thread call instead. `_io` (for writes) and `_syncing` (for syncs) guard the
    descriptor against a discard while either runs.
    """

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self._fd: int | None = descriptor
        self._io = threading.Lock()
        self._syncing = threading.Lock()
        self._hash = hashlib.sha256()
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0
        self._unsynced = 0
        self._sync: asyncio.Future[None] | None = None
        self._lanes: tuple[_Lane, _Lane, _Lane] | None = None
        self._inflight: deque[asyncio.Future[None]] = deque()
        self._finished = False
        self.published = False
        self.kept = False

    # -- in the worker threads

    def _write_sync(self, chunks: list[bytes | memoryview]) -> None:
        with self._io:
            if self._fd is None:
                raise RuntimeError("this staged blob was discarded")
            views = [memoryview(chunk) for chunk in chunks]
            while views:
                written = os.writev(self._fd, views)
                while views and written >= len(views[0]):
                    written -= len(views[0])
                    views.pop(0)
                if views and written:
                    views[0] = views[0][written:]

    def _sync_sync(self, _: list[bytes | memoryview]) -> None:
        with self._syncing:
            if self._fd is None:
                raise RuntimeError("this staged blob was discarded")
            os.fdatasync(self._fd)

    def _hash_sync(self, chunks: list[bytes | memoryview]) -> None:
        for chunk in chunks:
            self._hash.update(chunk)

    def _close_sync(self) -> None:
        """Make what was written durable, and close the file."""
        with self._io, self._syncing:
            fd, self._fd = self._fd, None
            if fd is None:
                raise RuntimeError("this staged blob was discarded")
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _all_sync(self, chunks: list[bytes | memoryview]) -> None:
        self._write_sync(chunks)
        self._hash_sync(chunks)
        self._close_sync()

    # -- on the event loop

    async def _drain(self, keep: int) -> None:
        """Wait until at most `keep` block steps are queued or running."""
        while len(self._inflight) > keep:
            await self._inflight.popleft()

    async def _flush(self) -> None:
        chunks, self._pending, self._pending_bytes = self._pending, [], 0
        if not chunks:
            return
        if self._lanes is None:
            self._lanes = (
                _Lane("artifact-writer", self._write_sync),
                _Lane("artifact-hasher", self._hash_sync),
                _Lane("artifact-syncer", self._sync_sync),
            )
        writer, hasher, syncer = self._lanes
        self._inflight.append(writer.submit(chunks))
        self._inflight.append(hasher.submit(chunks))
        self._unsynced += sum(len(chunk) for chunk in chunks)
        # One sync at a time, started once the blocks written since the last one are due:
        # a disk slower than the upload gets fewer, larger syncs, never a backlog.
        if self._unsynced >= SYNC_EVERY_BYTES and (self._sync is None or self._sync.done()):
            if self._sync is not None:
                await self._sync  # raises what the last sync ran into
            self._unsynced = 0
            self._sync = syncer.submit([])
        await self._drain(2 * MAX_INFLIGHT_BLOCKS)

    def _close_lanes(self) -> None:
        lanes, self._lanes = self._lanes, None
        if lanes is not None:
            for lane in lanes:
                lane.close()

    async def write(self, chunk: bytes | memoryview) -> None:
        if self._finished or self._fd is None:
            raise RuntimeError("this staged blob is finished")
        if not chunk:
            return
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        self.size += len(chunk)
        if self._pending_bytes >= CHUNK_BYTES or len(self._pending) >= MAX_PENDING_CHUNKS:
            await self._flush()

    async def finish(self) -> None:
        if self._finished:
            raise RuntimeError("this staged blob is finished")
        self._finished = True
        if self._lanes is None:
            chunks, self._pending, self._pending_bytes = self._pending, [], 0
            await anyio.to_thread.run_sync(self._all_sync, chunks)
        else:
            try:
                await self._flush()
                await self._drain(0)
                if self._sync is not None:
                    await self._sync
            finally:
                self._close_lanes()
            await anyio.to_thread.run_sync(self._close_sync)
        self.sha256 = self._hash.hexdigest()

    async def discard(self) -> None:
        self._finished = True
        self._close_lanes()
        with contextlib.suppress(Exception):
            await self._drain(0)
            if self._sync is not None:
                await self._sync
        await anyio.to_thread.run_sync(self.abandon)

    def abandon(self) -> None:
        self._finished = True
        self._close_lanes()
        self._pending, self._pending_bytes = [], 0
        with self._io, self._syncing:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)
        if not self.kept:  # staged, or published by a transaction that rolled back
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def keep(self) -> None:
        self.kept = True


def _close_quietly(descriptor: int) -> None:
    with contextlib.suppress(OSError):
        os.close(descriptor)


class _FileReader(BlobReader):
    def __init__(self, descriptor: int, size: int) -> None:
        self._fd: int | None = descriptor
        self.size = size
        # A response that never starts (the client left first) never runs the iterator's
        # `finally`: the descriptor is closed when the reader is collected instead.
        self._finalizer = weakref.finalize(self, _close_quietly, descriptor)

    async def iter_range(self, start: int, stop: int) -> AsyncIterator[bytes]:
        try:
            offset = start
            while offset < stop and self._fd is not None:
                chunk = await anyio.to_thread.run_sync(
                    os.pread, self._fd, min(CHUNK_BYTES, stop - offset), offset
                )
                if not chunk:
                    break
                offset += len(chunk)
                yield chunk
        finally:
            await self.close()

    async def close(self) -> None:
        self._fd = None
        self._finalizer()


class FilesystemBlobStore(BlobStore):
    """Blobs as files under `root` (default `DATA_DIR/artifacts`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.staging = root / "staging"
        self.blobs = root / "blobs"

    def path_of(self, key: str) -> Path:
        parts = key.split("/")
        if not key or any(part in {"", ".", ".."} for part in parts):
            raise ValueError(f"not a blob key: {key!r}")
        return self.blobs.joinpath(*parts)

    async def stage(self) -> StagedBlob:
        def create() -> tuple[Path, int]:
            self.staging.mkdir(parents=True, exist_ok=True)
            path = self.staging / f"{uuid.uuid4().hex}.part"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
            return path, os.open(path, flags, 0o600)

        path, descriptor = await anyio.to_thread.run_sync(create)
        return _FileStaged(path, descriptor)

    async def publish(self, staged: StagedBlob, key: str) -> None:
        assert isinstance(staged, _FileStaged)
        target = self.path_of(key)

        def rename() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged.path, target)
            _sync_directory(target.parent)  # the rename itself survives a crash

        await anyio.to_thread.run_sync(rename)
        staged.path, staged.published = target, True

    async def open(self, key: str) -> BlobReader:
        path = self.path_of(key)

        def open_file() -> tuple[int, int]:
            descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            return descriptor, os.fstat(descriptor).st_size

        try:
            descriptor, size = await anyio.to_thread.run_sync(open_file)
        except FileNotFoundError as exc:
            raise BlobMissing(key) from exc
        return _FileReader(descriptor, size)

    async def delete(self, key: str) -> None:
        path = self.path_of(key)

        def remove() -> None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            # Empty per-artifact and per-tenant folders go too; a non-empty one stays.
            for parent in (path.parent, path.parent.parent):
                if parent == self.blobs:
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break

        await anyio.to_thread.run_sync(remove)

    def sweep_staging(self, *, older_than: float = STALE_STAGING_SECONDS) -> int:
        """Remove staged blobs older than `older_than` seconds; returns how many."""
        removed = 0
        cutoff = time.time() - older_than
        try:
            entries = list(os.scandir(self.staging))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("removed %d abandoned staged blobs under %s", removed, self.staging)
        return removed

    def staged_files(self) -> list[Path]:
        """The staged blobs now present (for tests and diagnostics)."""
        try:
            return sorted(self.staging.iterdir())
        except FileNotFoundError:
            return []

    def published_files(self) -> list[Path]:
        """Every published blob (for tests and diagnostics)."""
        if not self.blobs.exists():
            return []
        return sorted(p for p in self.blobs.rglob("*") if p.is_file())


# The store each database's artifacts use, so code holding only a unit of work (a job
# handler) writes where the API reads. `create_app` attaches one; a process that attached
# none (a standalone worker) uses the store its environment's settings name.
_stores: weakref.WeakKeyDictionary[Database, BlobStore] = weakref.WeakKeyDictionary()


def blob_store_for_settings(settings: Settings) -> FilesystemBlobStore:
    return FilesystemBlobStore(settings.data_dir / ARTIFACTS_DIR)


def attach_blob_store(database: Database, store: BlobStore) -> None:
    _stores[database] = store


def blob_store_of(database: Database) -> BlobStore:
    store = _stores.get(database)
    if store is None:
        from spawnpoint.config import Settings

        store = blob_store_for_settings(Settings())
        _stores[database] = store
    return store
