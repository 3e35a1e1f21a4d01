"""Keyset pagination over time-ordered UUID primary keys."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Depends, Query
from pydantic import BaseModel
from sqlalchemy import Result, Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from spawnpoint.kit.errors import field_error

T = TypeVar("T")
K = TypeVar("K")
DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


class PageParams(BaseModel):
    limit: int
    cursor: str | None


def encode_cursor(key: object) -> str:
    return base64.urlsafe_b64encode(str(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, key_type: Callable[[str], K]) -> K:
    try:
        return key_type(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise field_error("#/query/cursor", "The cursor is not one this API returned.") from exc


async def page_params(
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Items per page.")] = DEFAULT_LIMIT,
    cursor: Annotated[
        str | None,
        Query(
            max_length=100,
            pattern=r"^[A-Za-z0-9_-]*$",
            description="`next_cursor` of the previous page; empty or left out: the first page.",
        ),
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, cursor=cursor or None)


Pagination = Annotated[PageParams, Depends(page_params)]


async def fetch_page(
    session: AsyncSession,
    statement: Select[*tuple[Any, ...]],
    *,
    key: InstrumentedAttribute[Any],
    params: PageParams,
    key_type: Callable[[str], Any] = uuid.UUID,
    columns_only: bool = False,
    descending: bool = False,
) -> tuple[list[Any], str | None]:
    """Run `statement` for one page ordered by `key`; return rows and the next cursor.

    Rows either select `key`'s column by name or start with an entity that carries it;
    the cursor is that key of the last row. With `descending`, the largest keys (for
    time-ordered ids, the newest rows) come first and each page continues below the cursor.
    """
    if params.cursor is not None:
        after = decode_cursor(params.cursor, key_type)
        statement = statement.where(key < after if descending else key > after)
    statement = statement.order_by(key.desc() if descending else key).limit(params.limit + 1)
    result: Result[*tuple[Any, ...]]
    if columns_only:
        # Plain rows need no ORM session machinery: run them on the session's connection.
        result = await (await session.connection()).execute(statement)
    else:
        result = await session.execute(statement)
    rows = list(result.all())
    if len(rows) <= params.limit:
        return rows, None
    rows = rows[: params.limit]
    last = rows[-1]
    value = getattr(last, key.key) if key.key in last._fields else getattr(last[0], key.key)
    return rows, encode_cursor(value)
