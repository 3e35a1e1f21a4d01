"""Budget periods: the calendar month in the tenant's time zone (UTC by default).

A period is held as its first and last-plus-one moments in UTC, so it compares with cost
records' hours directly. Records are hourly, on UTC hours: in a zone whose offset is not a
whole number of hours, the hour that holds the month's first moment counts in the month it
starts in.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

DEFAULT_TIME_ZONE = "UTC"


@lru_cache(maxsize=256)
def zone(name: str | None) -> tzinfo:
    """The zone of an IANA name; UTC for None or a name this system does not know."""
    if not name or name == DEFAULT_TIME_ZONE:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


@lru_cache(maxsize=1)
def _known() -> frozenset[str]:
    return frozenset(available_timezones()) | {DEFAULT_TIME_ZONE}


def time_zone_names() -> list[str]:
    """Every IANA name `is_time_zone` accepts, sorted (the tz database: the system's, else
    the `tzdata` package's)."""
    return sorted(_known())


def is_time_zone(name: str) -> bool:
    """Whether `name` is an IANA time zone name this system knows (as zoneinfo loads it)."""
    if name not in _known():
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def period_of(now: datetime, time_zone: str | None = None) -> tuple[datetime, datetime]:
    """The calendar month holding `now` in `time_zone`: (first moment, next month's), in UTC."""
    where = zone(time_zone)
    local = now.astimezone(where)
    start = datetime(local.year, local.month, 1, tzinfo=where)
    following = (
        datetime(local.year + 1, 1, 1, tzinfo=where)
        if local.month == 12
        else datetime(local.year, local.month + 1, 1, tzinfo=where)
    )
    return start.astimezone(UTC), following.astimezone(UTC)
