"""What the DELETE routes of tenants, projects, users and templates share: `?cascade`,
the 202 body and the responses they declare."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import JSONResponse
from fastapi.types import DecoratedCallable

from spawnpoint.teardown.schemas import TeardownAccepted

Cascade = Annotated[
    bool,
    Query(
        description="With live workspaces: tear them down (202) and delete the object once "
        "they are deleted, instead of answering 409.",
    ),
]

TEARDOWN_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "model": TeardownAccepted,
        "description": "cascade=true: the live workspaces are being torn down; the object "
        "goes once they are deleted and accepts no new spawns until then.",
    },
    409: {
        "description": "Live workspaces: `workspace_ids` names them (up to 20), "
        "`live_workspaces` counts them."
    },
}


def teardown_delete(
    router: APIRouter, path: str, *, summary: str
) -> Callable[[DecoratedCallable], DecoratedCallable]:
    """The DELETE route of `path`: 204, or with live workspaces 409 or (cascading) 202."""
    return router.delete(
        path,
        status_code=status.HTTP_204_NO_CONTENT,
        summary=summary,
        responses=TEARDOWN_RESPONSES,
    )


def teardown_response(started: TeardownAccepted | None) -> Response:
    """204 when the object was deleted, 202 with the teardown under way otherwise."""
    if started is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return JSONResponse(started.model_dump(mode="json"), status_code=status.HTTP_202_ACCEPTED)
