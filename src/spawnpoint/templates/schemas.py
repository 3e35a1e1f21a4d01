from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, ClassVar

from annotated_types import Ge, Le
from pydantic import (
    BaseModel,
    Field,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_serializer,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from spawnpoint.kit.schemas import (
    Cpus,
    Flag,
    InputSchema,
    Name,
    Number,
    ReadSchema,
    UpdateSchema,
    whole_number,
)

ProvisionerName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z][a-z0-9-]*$")]
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
EnvName = Annotated[str, Field(pattern=ENV_NAME, max_length=128)]
# Documented by hand: pydantic writes the key pattern as `patternProperties`, which lets
# keys that do not match through with any value.
Env = Annotated[
    dict[EnvName, Annotated[str, Field(max_length=8192)]],
    Field(max_length=256),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": 256,
            "propertyNames": {"pattern": ENV_NAME, "maxLength": 128},
            # No NUL: the request parser refuses it in every string.
            "additionalProperties": {"type": "string", "maxLength": 8192, "pattern": "^[^\\x00]*$"},
        }
    ),
]
Port = Annotated[int, Ge(1), Le(65535), whole_number]
# Bounded so that every date derived from them (idle deadlines, expiry) is representable.
MAX_IDLE_TIMEOUT_MINUTES = 10 * 366 * 24 * 60
MAX_LIFETIME_DAYS = 100 * 366
MAX_HOURLY_COST = 1_000_000
MemoryMb = Annotated[int, Ge(16), Le(4_194_304), whole_number]
StorageGb = Annotated[int, Ge(0), Le(65_536), whole_number]
IdleMinutes = Annotated[int, Ge(1), Le(MAX_IDLE_TIMEOUT_MINUTES), whole_number]
LifetimeDays = Annotated[int, Ge(1), Le(MAX_LIFETIME_DAYS), whole_number]


STAGE_PATTERN = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"
StageName = Annotated[str, Field(min_length=1, max_length=63, pattern=STAGE_PATTERN)]
# An egress destination: an IPv4/IPv6 network in CIDR notation or a DNS name.
EGRESS_TARGET = r"^([0-9a-fA-F:.]+/[0-9]{1,3}|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$"


class _AsGiven(BaseModel):
    """Dumped with the fields that were given only, so a stored spec reads back as written."""

    @model_serializer(mode="wrap")
    def _given_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        return {k: v for k, v in dumped.items() if k in self.model_fields_set}


class EgressRule(_AsGiven, InputSchema):
    """Outbound traffic a workspace may send: to a network or host, on some ports."""

    to: str = Field(
        max_length=253, pattern=EGRESS_TARGET, description="A CIDR network or a DNS name."
    )
    ports: list[Port] = Field(
        default_factory=list, max_length=32, description="Destination ports; empty: all."
    )


class StageOverride(_AsGiven, UpdateSchema):
    """What a workspace in one stage of its permit gets instead of the template's values.

    A field left out keeps the template's value (null is refused, so that left out is the
    only way to say so); `env` is merged over the template's. Stored as given: the fields
    left out stay out.
    """

    egress: list[EgressRule] | None = Field(
        None,
        max_length=64,
        description="Outbound traffic allowed in this stage (the network policy); an empty "
        "list allows none; left out: the driver's default.",
    )
    storage_gb: StorageGb | None = Field(None, description="Persistent storage in this stage.")
    env: Env | None = Field(None, description="Environment added in this stage.")


class _KeysMatch:
    """Document a dict's key pattern as `propertyNames` (every key must match it) and its
    value schema as `additionalProperties`: pydantic writes them as `patternProperties`,
    which lets keys that do not match through with any value."""

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        patterns = schema.pop("patternProperties", None)
        if patterns:
            ((pattern, values),) = patterns.items()
            schema["propertyNames"] = {**schema.get("propertyNames", {}), "pattern": pattern}
            schema["additionalProperties"] = values
        return schema


Stages = Annotated[dict[StageName, StageOverride], Field(max_length=32), _KeysMatch()]


class TemplateSpec(InputSchema):
    """What a workspace of this template runs and what it may consume."""

    command: str | None = Field(
        None,
        max_length=4096,
        description="Command for the local provisioner; placeholders {port} and {workspace_dir}.",
    )
    image: str | None = Field(None, max_length=512, description="Container image.")
    cpu: Cpus = Field(1, description="vCPUs, at most two decimal places.")
    memory_mb: MemoryMb = Field(512, description="Memory in MiB.")
    storage_gb: StorageGb = Field(1, description="Persistent storage in GiB.")
    ports: list[Port] = Field(default_factory=list, max_length=32)
    env: Env = Field(default_factory=dict, description="Environment of the workspace.")
    idle_timeout_minutes: IdleMinutes | None = Field(
        None,
        description="Stop a workspace this long after its last activity (at most 10 years).",
    )
    max_lifetime_days: LifetimeDays | None = Field(
        None,
        description="Delete a workspace this long after it was created (at most 100 years).",
    )
    hourly_cost: Number = Field(
        0, ge=0, le=MAX_HOURLY_COST, description="Cost per running hour, in the plan's currency."
    )
    restricted: Flag = Field(False, description="Only tenant admins may spawn it.")
    stages: Stages = Field(
        default_factory=dict,
        description="Per-stage overrides, by stage name (a permit's `stage`): network egress "
        "rules, storage, environment. Empty: every stage runs the template as it is.",
    )

    @field_validator("ports")
    @classmethod
    def _unique_ports(cls, ports: list[int]) -> list[int]:
        if len(set(ports)) != len(ports):
            raise ValueError("ports must be unique")
        return ports


class TemplateSpecUpdate(UpdateSchema):
    """TemplateSpec fields to change; the rest keep their values."""

    nullable: ClassVar[frozenset[str]] = frozenset(
        {"command", "image", "idle_timeout_minutes", "max_lifetime_days"}
    )

    command: str | None = Field(None, max_length=4096)
    image: str | None = Field(None, max_length=512)
    cpu: Cpus | None = Field(None)
    memory_mb: MemoryMb | None = Field(None)
    storage_gb: StorageGb | None = Field(None)
    ports: list[Port] | None = Field(None, max_length=32)
    env: Env | None = Field(None)
    idle_timeout_minutes: IdleMinutes | None = Field(None)
    max_lifetime_days: LifetimeDays | None = Field(None)
    hourly_cost: Number | None = Field(None, ge=0, le=MAX_HOURLY_COST)
    restricted: Flag | None = Field(None)
    stages: Stages | None = Field(None)


class TemplateCreate(InputSchema):
    name: Name
    description: str = Field("", max_length=2000)
    provisioner: ProvisionerName | None = Field(
        None, description="Driver that runs the template. Default: the PROVISIONER setting."
    )
    spec: TemplateSpec = Field(default_factory=TemplateSpec)
    tenant_id: uuid.UUID | None = Field(
        None,
        description="Owner tenant. Left out: yours. `null` (operators only): a platform "
        "template every tenant can read.",
    )


class TemplateUpdate(UpdateSchema):
    name: Name | None = Field(default=None)
    description: str | None = Field(default=None, max_length=2000)
    provisioner: ProvisionerName | None = Field(default=None)
    spec: TemplateSpecUpdate | None = Field(
        default=None,
        description="TemplateSpec fields to change; the rest keep their values. "
        "A changed spec or provisioner becomes a new version.",
    )


class TemplateVersionCreate(InputSchema):
    spec: TemplateSpec
    provisioner: ProvisionerName | None = Field(
        None, description="Driver for this version. Default: the template's current one."
    )


class TemplateSpecRead(ReadSchema):
    """A stored spec as returned: the fields of TemplateSpec, validated when written."""

    command: str | None = None
    image: str | None = None
    cpu: float = 1
    memory_mb: int = 512
    storage_gb: int = 1
    ports: list[int] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    idle_timeout_minutes: int | None = None
    max_lifetime_days: int | None = None
    hourly_cost: float = 0
    restricted: bool = False
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)


class TemplateRead(ReadSchema):
    id: uuid.UUID
    tenant_id: uuid.UUID | None
    name: str
    description: str
    provisioner: str
    current_version: int
    spec: TemplateSpecRead
    created_at: datetime
    updated_at: datetime


class TemplateVersionRead(ReadSchema):
    template_id: uuid.UUID
    version: int
    provisioner: str
    spec: TemplateSpecRead
    created_by: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
