"""Base classes and field types for request and response bodies.

Numbers are strict (`true` is not an integer, `"7"` is not a number), finite and bounded
by what the column that stores them can hold; free-form JSON is bounded in bytes. Whatever
a request body is allowed to hold must read back, list, update and delete.
"""

from __future__ import annotations

from contextvars import ContextVar
from decimal import Decimal
from typing import Annotated, Any, ClassVar

import orjson
from annotated_types import Ge, Le
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    PlainSerializer,
    Strict,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

INT32_MAX = 2**31 - 1
DEFAULT_MAX_JSON_FIELD_BYTES = 65_536
# The per-request limit on a free-form JSON field, set by the route from MAX_JSON_FIELD_BYTES.
json_field_limit: ContextVar[int] = ContextVar(
    "json_field_limit", default=DEFAULT_MAX_JSON_FIELD_BYTES
)


def _number_not_text(value: object) -> object:
    # Decimal would take "7" and "Infinity" from a string, and 1 from `true`.
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a number")
    return value


def _whole_number(value: object) -> object:
    # JSON has one number type: 7.0 is the integer 7, but `true` and "7" are not numbers.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be an integer")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# Bounds go before the validator, in the same Annotated: only there does pydantic write
# them to the JSON schema as `minimum`/`maximum` (nested, they would leak out as `ge`/`le`).
whole_number = BeforeValidator(_whole_number)
Int32 = Annotated[int, Ge(0), Le(INT32_MAX), whole_number]


def _two_places(value: float) -> float:
    if round(value, 2) != value:
        raise ValueError("may have at most two decimal places")
    return value


# vCPUs: two places, as the usage counters (NUMERIC) add them up exactly.
Cpus = Annotated[
    float,
    Strict(),
    Ge(0.01),
    Le(1024),
    AfterValidator(_two_places),
    Field(json_schema_extra={"multipleOf": 0.01}),
]
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Flag = Annotated[bool, Strict()]


# A non-negative decimal with two places, stored exactly in a NUMERIC(n, 2) column and read
# back as the same number; documented as a JSON number (the strings Decimal would take are
# refused).
Cents = Annotated[
    Decimal,
    BeforeValidator(_number_not_text),
    PlainSerializer(float, return_type=float, when_used="json"),
]
Money = Annotated[
    Cents,
    Field(ge=0, max_digits=14, decimal_places=2, allow_inf_nan=False),
    WithJsonSchema(
        {"type": "number", "minimum": 0, "maximum": 999_999_999_999.99, "multipleOf": 0.01}
    ),
]
CpuAmount = Annotated[
    Cents,
    Field(ge=0, max_digits=10, decimal_places=2, allow_inf_nan=False),
    WithJsonSchema({"type": "number", "minimum": 0, "maximum": 99_999_999.99, "multipleOf": 0.01}),
]
# No blank at either end and no NUL anywhere (the request parser refuses NUL; the
# documented pattern says so, so that a client generating from the schema is not surprised).
NAME_PATTERN = r"^[^\s\x00]([^\x00\n]*[^\s\x00])?$"
Name = Annotated[str, Field(min_length=1, max_length=100, pattern=NAME_PATTERN)]


def _bounded_json(value: dict[str, Any]) -> dict[str, Any]:
    # The request parser has already refused non-finite numbers, NUL and deep nesting.
    size = len(orjson.dumps(value))
    limit = json_field_limit.get()
    if size > limit:
        raise ValueError(f"is {size} bytes of JSON; at most {limit} are allowed")
    return value


JSONObject = Annotated[dict[str, Any], AfterValidator(_bounded_json)]


class InputSchema(BaseModel):
    """A request body: unknown fields are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False, allow_inf_nan=False)


class UpdateSchema(InputSchema):
    """A PUT body: every field optional; only the fields sent are applied.

    Left out means "keep"; an explicit `null` is refused unless the field is in `nullable`,
    and the JSON schema says so: only `nullable` fields admit `null` there.
    """

    nullable: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="before")
    @classmethod
    def _refuse_null(cls, value: object, info: ValidationInfo) -> object:
        if value is None and info.field_name not in cls.nullable:
            raise ValueError("may not be null")
        return value

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        for name, prop in target.get("properties", {}).items():
            if name in cls.nullable:
                continue
            prop.pop("default", None)
            options = [s for s in prop.pop("anyOf", []) if s.get("type") != "null"]
            if len(options) == 1:
                prop.update(options[0])
            elif options:
                prop["anyOf"] = options
        return schema

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class ReadSchema(BaseModel):
    model_config = ConfigDict(from_attributes=True)
