from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import Field

from spawnpoint.kit.schemas import ReadSchema
from spawnpoint.models import WorkspaceState


class TeardownWorkspace(ReadSchema):
    id: uuid.UUID
    state: WorkspaceState
    job_id: uuid.UUID | None = Field(
        description="The destroy job this request enqueued; null for a workspace that was "
        "already being torn down."
    )


class TeardownAccepted(ReadSchema):
    """A cascading delete under way: the object goes once these workspaces are deleted."""

    deletion_requested_at: datetime = Field(
        description="When the deletion was first requested; new spawns are refused since."
    )
    live_workspaces: int = Field(description="How many workspaces are being torn down.")
    workspaces: list[TeardownWorkspace]
