from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BeforeValidator

from spawnpoint.kit.schemas import ReadSchema

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})", re.ASCII | re.IGNORECASE
)


def _rfc3339(value: object) -> object:
    # pydantic would also take a number of seconds since 1970 ("0.5") or a date alone; the
    # documented format is an RFC 3339 date-time, and that is all a query parameter takes.
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time with a UTC offset")
    return value


QueryTime = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


class EventRead(ReadSchema):
    id: uuid.UUID
    tenant_id: uuid.UUID | None
    type: str
    key: str
    payload: dict[str, Any]
    created_at: datetime
    published_at: datetime | None


@dataclass(frozen=True, slots=True)
class EventFilters:
    """What `GET /api/events` narrows to; times are UTC, `since` inclusive, `until` not."""

    type_prefix: str | None = None
    since: datetime | None = None
    until: datetime | None = None
