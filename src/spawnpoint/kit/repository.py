"""The repository base: every read starts from one scoped statement."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar, Generic, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.db import Base
from spawnpoint.kit.errors import Conflict, NotFound
from spawnpoint.kit.pagination import PageParams, fetch_page

M = TypeVar("M", bound=Base)


class Repository(Generic[M]):
    """SQL for one table. Subclasses narrow `readable()` to what the caller may see."""

    model: ClassVar[type[Any]]
    noun: ClassVar[str]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def readable(self) -> Select[M]:
        return select(self.model)

    async def find(self, object_id: uuid.UUID) -> M | None:
        statement = self.readable().where(self.model.id == object_id)
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def get(self, object_id: uuid.UUID) -> M:
        found = await self.find(object_id)
        if found is None:
            raise NotFound(f"{self.noun.capitalize()} not found.")
        return found

    async def get_locked(self, object_id: uuid.UUID, *, key_share: bool = False) -> M:
        """`get`, with the row locked until the transaction ends.

        With `key_share`, FOR NO KEY UPDATE on PostgreSQL: rows that refer to this one
        can still be inserted meanwhile.
        """
        statement = (
            self.readable().where(self.model.id == object_id).with_for_update(key_share=key_share)
        )
        found = (await self.session.execute(statement)).scalar_one_or_none()
        if found is None:
            raise NotFound(f"{self.noun.capitalize()} not found.")
        return found

    async def page(
        self, params: PageParams, statement: Select[M] | None = None
    ) -> tuple[list[M], str | None]:
        rows, cursor = await fetch_page(
            self.session,
            self.readable() if statement is None else statement,
            key=self.model.id,
            params=params,
        )
        return [row[0] for row in rows], cursor

    async def add(self, obj: M) -> M:
        self.session.add(obj)
        await self.flush()
        return obj

    async def flush(self) -> None:
        """Write pending changes now, so constraint violations become a 409 here."""
        try:
            await self.session.flush()
        except IntegrityError as exc:
            raise Conflict(
                f"A {self.noun} with these unique fields already exists, or it is still referenced."
            ) from exc

    async def delete(self, obj: M) -> None:
        await self.session.delete(obj)
        await self.flush()
