"""Where artifact content lives: a small blob-store interface and its filesystem default.

Content is written to a staged (temporary) blob while it is hashed, and published under its
key only once the row that points to it has committed (`ArtifactService` registers the
publish as an `on_commit` step), so an upload that fails or is aborted leaves no row and no
blob, and a row never points to content that was not completely written. Blobs are
removed only after the commit that deleted or replaced their row.

The filesystem store keeps staged blobs in `<root>/staging/` and published ones in
`<root>/blobs/<key>`, on one filesystem, so publishing is one atomic rename. File I/O runs
in worker threads in chunks of `CHUNK_BYTES`; hashing releases the GIL there too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
import uuid
import weakref
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
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
# Staged blobs older than this belong to a process that died mid-upload (or to a job whose
# transaction rolled back): the store removes them when it is opened.
STALE_STAGING_SECONDS = 24 * 3600
ARTIFACTS_DIR = "artifacts"


class BlobMissing(LookupError):
    """No published blob has this key."""


class StagedBlob(ABC):
    """Content being written: hashed as it arrives, invisible until published."""

    size: int = 0
    sha256: str = ""

    @abstractmethod
    async def write(self, chunk: bytes | memoryview) -> None:
        """Append `chunk` (buffered; flushed to storage in chunks of `CHUNK_BYTES`)."""

    @abstractmethod
    async def finish(self) -> None:
        """Write what is buffered and make it durable; `size` and `sha256` are then final."""

    @abstractmethod
    async def discard(self) -> None:
        """Remove the staged content; a no-op once published or already discarded."""

    @abstractmethod
    def abandon(self) -> None:
        """`discard`, synchronously: for a rollback hook, which cannot await."""


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


class _FileStaged(StagedBlob):
    """A staged file, written and hashed by worker threads while the next chunk arrives.

    At most one chunk is in flight (so memory stays at two chunks): its write and its hash
    run in two threads at once, and the next chunk waits for both, which keeps the hash in
    order. `_io` guards the descriptor against a discard while a write is running.
    """

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self._fd: int | None = descriptor
        self._io = threading.Lock()
        self._hash = hashlib.sha256()
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0
        self._inflight: asyncio.Future[tuple[None, None]] | None = None
        self.published = False

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

    def _hash_sync(self, chunks: list[bytes | memoryview]) -> None:
        for chunk in chunks:
            self._hash.update(chunk)

    async def _settle(self) -> None:
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await inflight

    async def _flush(self) -> None:
        await self._settle()
        chunks, self._pending, self._pending_bytes = self._pending, [], 0
        if not chunks:
            return
        loop = asyncio.get_running_loop()
        self._inflight = asyncio.gather(
            loop.run_in_executor(None, self._write_sync, chunks),
            loop.run_in_executor(None, self._hash_sync, chunks),
        )

    async def write(self, chunk: bytes | memoryview) -> None:
        if self._fd is None:
            raise RuntimeError("this staged blob is finished")
        if not chunk:
            return
        self._pending.append(chunk)
        self._pending_bytes += len(chunk)
        self.size += len(chunk)
        if self._pending_bytes >= CHUNK_BYTES or len(self._pending) >= MAX_PENDING_CHUNKS:
            await self._flush()

    async def finish(self) -> None:
        await self._flush()
        await self._settle()

        def close() -> None:
            with self._io:
                fd, self._fd = self._fd, None
                if fd is not None:
                    try:
                        os.fsync(fd)
                    finally:
                        os.close(fd)

        await anyio.to_thread.run_sync(close)
        self.sha256 = self._hash.hexdigest()

    async def discard(self) -> None:
        with contextlib.suppress(Exception):
            await self._settle()
        await anyio.to_thread.run_sync(self.abandon)

    def abandon(self) -> None:
        self._pending, self._pending_bytes = [], 0
        with self._io:
            fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)
        if not self.published:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


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

        await anyio.to_thread.run_sync(rename)
        staged.published = True

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
