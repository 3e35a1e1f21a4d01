"""Artifacts: rows in the caller's unit of work, content kept only if it commits."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import event

from spawnpoint.artifacts.blobstore import (
    BlobMissing,
    BlobReader,
    BlobStore,
    StagedBlob,
    blob_store_of,
)
from spawnpoint.artifacts.repository import ArtifactRepository
from spawnpoint.artifacts.schemas import (
    DEFAULT_CONTENT_TYPE,
    ArtifactCreate,
    ArtifactUpdate,
    decode_base64,
)
from spawnpoint.events.outbox import outbox_event
from spawnpoint.kit.errors import NotFound
from spawnpoint.kit.ids import uuid7
from spawnpoint.kit.pagination import PageParams
from spawnpoint.models import Artifact
from spawnpoint.scope import TenantScope
from spawnpoint.uow import UnitOfWork

CREATED = "artifact.created"
UPDATED = "artifact.updated"
DELETED = "artifact.deleted"


def artifact_event(event_type: str, artifact: Artifact, **extra: Any) -> dict[str, Any]:
    """The outbox row of an artifact change, keyed by the artifact."""
    return outbox_event(
        tenant_id=artifact.tenant_id,
        type=event_type,
        key=artifact.id,
        payload={
            "artifact_id": artifact.id,
            "name": artifact.name,
            "type": artifact.type,
            "content_type": artifact.content_type,
            "size": artifact.size,
            "sha256": artifact.sha256,
            "manifest": artifact.manifest,
            **extra,
        },
    )


async def stage_bytes(store: BlobStore, content: bytes) -> StagedBlob:
    """`content` as a finished staged blob (removed again if writing it fails)."""
    staged = await store.stage()
    try:
        for start in range(0, len(content), 1024 * 1024):
            await staged.write(content[start : start + 1024 * 1024])
        await staged.finish()
    except BaseException:
        await staged.discard()
        raise
    return staged


async def _publish_in(
    uow: UnitOfWork, store: BlobStore, staged: StagedBlob, key: str, *, replaces: str | None
) -> None:
    """Publish `staged` under `key` now, kept if `uow` commits and removed if it rolls back;
    what it replaces is removed once `uow` has committed.

    Published before the commit, so a crash after the commit cannot leave a row naming
    content that is still staged: nothing reads `key` before the row naming it commits, and
    a crash before the commit leaves an unreferenced blob at worst, never a missing one.
    """
    await store.publish(staged, key)
    sync_session = uow.session.sync_session

    def keep(_session: object) -> None:
        staged.keep()

    def abandon(_session: object, *_: object) -> None:
        staged.abandon()

    event.listen(sync_session, "after_commit", keep, once=True)
    event.listen(sync_session, "after_rollback", abandon, once=True)
    if replaces is not None:

        async def remove_replaced() -> None:
            await store.delete(replaces)

        uow.on_commit(remove_replaced)


def _set_content(
    artifact: Artifact, store: BlobStore, staged: StagedBlob, content_type: str
) -> str:
    key = store.new_key(tenant_id=artifact.tenant_id, artifact_id=artifact.id)
    artifact.manifest = key
    artifact.size = staged.size
    artifact.sha256 = staged.sha256
    artifact.content_type = content_type
    return key


async def create_artifact_from_bytes(
    uow: UnitOfWork,
    *,
    tenant_id: uuid.UUID,
    name: str,
    type: str,
    content: bytes,
    content_type: str | None,
    metadata: dict[str, Any],
    created_by: uuid.UUID | None = None,
    store: BlobStore | None = None,
) -> uuid.UUID:
    """Create an artifact with `content` in `uow` (a job handler's transaction).

    The row, its `artifact.created` event and the content are written now; the content is
    kept under the row's manifest if `uow` commits, removed if it rolls back. `store`
    defaults to the one the API of `uow.database` uses.
    """
    store = store or blob_store_of(uow.database)
    staged = await stage_bytes(store, content)
    try:
        repository = ArtifactRepository(uow.session, TenantScope(tenant_id, all_tenants=False))
        artifact = Artifact(
            id=uuid7(),
            tenant_id=tenant_id,
            name=name,
            type=type,
            metadata_=metadata,
            created_by=created_by,
        )
        key = _set_content(artifact, store, staged, content_type or DEFAULT_CONTENT_TYPE)
        await repository.add(artifact)
    except BaseException:
        await staged.discard()
        raise
    await _publish_in(uow, store, staged, key, replaces=None)
    uow.emit(artifact_event(CREATED, artifact))
    return artifact.id


class ArtifactService:
    def __init__(
        self, repository: ArtifactRepository, *, store: BlobStore, uow: UnitOfWork | None
    ) -> None:
        self.repository = repository
        self.store = store
        self.uow = uow

    def _writing(self) -> UnitOfWork:
        if self.uow is None:
            raise RuntimeError("artifact writes need the request's unit of work")
        return self.uow

    async def list_page(
        self, *, params: PageParams, type: str | None, name_prefix: str | None
    ) -> tuple[list[Artifact], str | None]:
        return await self.repository.page_filtered(params, type=type, name_prefix=name_prefix)

    async def get(self, *, artifact_id: uuid.UUID) -> Artifact:
        return await self.repository.get(artifact_id)

    async def create(
        self,
        *,
        tenant_id: uuid.UUID,
        actor_id: uuid.UUID | None,
        artifact_in: ArtifactCreate,
        staged: StagedBlob | None,
        file_content_type: str | None = None,
    ) -> Artifact:
        """Create the row; content (inline base64 or an uploaded `staged` blob) is published
        under its manifest, and kept once the row commits."""
        uow = self._writing()
        if staged is None and artifact_in.content is not None:
            staged = await stage_bytes(self.store, decode_base64(artifact_in.content))
        artifact = Artifact(
            id=uuid7(),
            tenant_id=tenant_id,
            name=artifact_in.name,
            type=artifact_in.type,
            metadata_=artifact_in.metadata,
            created_by=actor_id,
        )
        key = None
        if staged is not None:
            content_type = artifact_in.content_type or file_content_type or DEFAULT_CONTENT_TYPE
            key = _set_content(artifact, self.store, staged, content_type)
        elif artifact_in.content_type is not None:
            artifact.content_type = artifact_in.content_type
        await self.repository.add(artifact)
        if staged is not None and key is not None:
            await _publish_in(uow, self.store, staged, key, replaces=None)
        uow.emit(artifact_event(CREATED, artifact))
        return artifact

    async def update(
        self,
        *,
        artifact_id: uuid.UUID,
        artifact_in: ArtifactUpdate,
        staged: StagedBlob | None,
        file_content_type: str | None = None,
    ) -> Artifact:
        """Apply the fields sent; new content replaces the old, which goes after the commit."""
        uow = self._writing()
        artifact = await self.repository.get_locked(artifact_id)
        changes = artifact_in.changes()
        content = changes.pop("content", None)
        content_type = changes.pop("content_type", None)
        if "metadata" in changes:
            artifact.metadata_ = changes.pop("metadata")
        for field, value in changes.items():
            setattr(artifact, field, value)
        if staged is None and content is not None:
            staged = await stage_bytes(self.store, decode_base64(content))
        replaced = artifact.manifest
        key = None
        if staged is not None:
            key = _set_content(
                artifact,
                self.store,
                staged,
                content_type or file_content_type or artifact.content_type or DEFAULT_CONTENT_TYPE,
            )
        elif content_type is not None:
            artifact.content_type = content_type
        await self.repository.flush()
        if staged is not None and key is not None:
            await _publish_in(uow, self.store, staged, key, replaces=replaced)
        uow.emit(artifact_event(UPDATED, artifact, content_replaced=key is not None))
        return artifact

    async def delete(self, *, artifact_id: uuid.UUID) -> None:
        """Delete the row; its blob is removed once the delete has committed."""
        uow = self._writing()
        artifact = await self.repository.get_locked(artifact_id)
        uow.emit(artifact_event(DELETED, artifact))
        manifest = artifact.manifest
        await self.repository.delete(artifact)
        if manifest is not None:
            store = self.store

            async def remove() -> None:
                await store.delete(manifest)

            uow.on_commit(remove)

    async def open_content(self, *, artifact_id: uuid.UUID) -> tuple[Artifact, BlobReader]:
        """The artifact and its content, opened. Raises NotFound without content."""
        artifact = await self.repository.get(artifact_id)
        if artifact.manifest is None:
            raise NotFound("This artifact has no content.")
        try:
            reader = await self.store.open(artifact.manifest)
        except BlobMissing as exc:
            raise NotFound("This artifact's content is missing from the blob store.") from exc
        return artifact, reader
