"""The inbound contract: permit events on RABBITMQ_QUEUE.

Each message carries an AMQP `message_id` (required: it is what makes a redelivery
recognisable) and a JSON body validated by `PermitEvent`; the same document is shipped as
a JSON Schema beside this module (`permit-event.schema.json`, `event_json_schema()`), so a
publisher can check its messages without this code.
"""

from __future__ import annotations

import json
import uuid
from enum import StrEnum
from functools import cache
from importlib import resources
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from spawnpoint.kit.schemas import JSONObject
from spawnpoint.models.permits import MESSAGE_ID_LENGTH, PERMIT_ID_LENGTH
from spawnpoint.templates.schemas import StageName

SCHEMA_FILE = "permit-event.schema.json"
SCHEMA_ID = "https://spawnpoint.dev/schemas/permit-event.schema.json"
# A permit id becomes a workspace's external_ref: a path segment of /api/v1/workspaces/...
PERMIT_ID_PATTERN = r"^[A-Za-z0-9._:@~+=-]+$"


class PermitType(StrEnum):
    approved = "permit.approved"
    stage_changed = "permit.stage_changed"
    revoked = "permit.revoked"
    closed = "permit.closed"


PermitId = Annotated[
    str, Field(min_length=1, max_length=PERMIT_ID_LENGTH, pattern=PERMIT_ID_PATTERN)
]


class PermitEvent(BaseModel):
    """One permit event, the JSON body of a message on RABBITMQ_QUEUE.

    Fields this contract does not name are ignored, so a publisher may add its own.
    """

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False, title="PermitEvent")

    type: PermitType = Field(
        description="`permit.approved` spawns the workspace; `permit.stage_changed` "
        "re-provisions it for `stage`; `permit.revoked` and `permit.closed` delete it."
    )
    permit_id: PermitId = Field(
        description="The permit; the workspace's `external_ref`, unique within the tenant."
    )
    tenant_id: uuid.UUID = Field(description="The tenant the workspace belongs to.")
    template_id: uuid.UUID = Field(
        description="The template the workspace is spawned from (its current version)."
    )
    stage: StageName | None = Field(
        None,
        description="The permit's stage: required by `permit.stage_changed`, optional on "
        "`permit.approved`; the template's per-stage overrides apply.",
    )
    parameters: JSONObject = Field(
        default_factory=dict,
        description="Free-form JSON for the policy and the workspace, as on POST /api/spawn.",
    )
    occurred_at: AwareDatetime = Field(
        description="When the permit changed (RFC 3339 with an offset). An event older than "
        "the last one applied for the permit is ignored."
    )

    @model_validator(mode="after")
    def _stage_for_stage_changes(self) -> PermitEvent:
        if self.type is PermitType.stage_changed and self.stage is None:
            raise ValueError("permit.stage_changed needs a stage")
        return self


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of a message body, as shipped in `permit-event.schema.json`."""
    document = PermitEvent.model_json_schema()
    document["allOf"] = [
        {
            "if": {"properties": {"type": {"const": PermitType.stage_changed.value}}},
            "then": {"required": ["stage"], "properties": {"stage": {"type": "string"}}},
        }
    ]
    document["description"] = (
        "The JSON body of a permit event on RABBITMQ_QUEUE; fields not named here are "
        f"ignored. The AMQP message property `message_id` (1 to {MESSAGE_ID_LENGTH} "
        "characters) is required: a message without it is dead-lettered."
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **document,
    }


@cache
def shipped_json_schema() -> dict[str, Any]:
    """The schema file shipped in the package."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded
