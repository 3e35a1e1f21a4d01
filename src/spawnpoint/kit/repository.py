"""The repository bases: every read starts from one statement, scoped or explicitly not.

`ScopedRepository` is the base of every table a tenant owns: its `readable()` always
applies the caller's `TenantScope`, and its child reads (`owned_by`) filter a child table
by the child's own `tenant_id`, so no read depends on a caller having checked a parent
first. `PlatformRepository` is unscoped on purpose: platform tables and system code (the
sign-in lookup, which runs before there is a tenant; the deletion finisher, which runs
for every tenant). Choosing it is a visible decision, not an omission; tests/
test_scoping_lint.py keeps SQL on tenant tables inside repository modules.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from spawnpoint.db import Base
from spawnpoint.kit.errors import Conflict, NotFound
from spawnpoint.kit.pagination import PageParams, fetch_page

if TYPE_CHECKING:
    # scope.py needs security.py, whose sign-in lookup is a repository of this module.
    from spawnpoint.scope import TenantScope

M = TypeVar("M", bound=Base)


class Repository(Generic[M]):
    """SQL for one table; reads start from `readable()`, which the two bases below define."""

    model: ClassVar[type[Any]]
    noun: ClassVar[str]

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def readable(self) -> Select[M]:
        raise NotImplementedError

    async def find(self, object_id: uuid.UUID) -> M | None:
        statement = self.readable().where(self.model.id == object_id)
        return (await self.session.execute(statement)).scalar_one_or_none()

    async def get(self, object_id: uuid.UUID) -> M:
        found = await self.find(object_id)
        if found is None:
            raise self.not_found()
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
            raise self.not_found()
        return found

    async def page(
        self, params: PageParams, *conditions: ColumnElement[bool]
    ) -> tuple[list[M], str | None]:
        """One page of readable rows meeting every one of `conditions`, in id order."""
        rows, cursor = await fetch_page(
            self.session, self.readable().where(*conditions), key=self.model.id, params=params
        )
        return [row[0] for row in rows], cursor

    def not_found(self) -> NotFound:
        return NotFound(f"{self.noun.capitalize()} not found.")

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


class ScopedRepository(Repository[M]):
    """A tenant's table: every statement this builds sees the caller's tenant only.

    Operators (`scope.all_tenants`) see every tenant's rows: the API's platform-wide view.
    Subclasses say how the model is owned, never where to filter:

    - `tenant_key`: the model's column naming its tenant (`id` for `tenants` itself);
    - `platform_rows`: rows with no tenant (NULL) are the platform's, readable by every
      tenant (platform templates and their versions);
    - or, for an owner found through another table, override `own_rows()`;
    - `operators_see_all = False`: an operator's scope stays on its own tenant too, for
      tables read one tenant at a time.
    """

    tenant_key: ClassVar[str] = "tenant_id"
    platform_rows: ClassVar[bool] = False
    operators_see_all: ClassVar[bool] = True

    def __init__(self, session: AsyncSession, scope: TenantScope) -> None:
        super().__init__(session)
        self.scope = scope

    def readable(self) -> Select[M]:
        return select(self.model).where(*self.visible())

    def visible(self) -> tuple[ColumnElement[bool], ...]:
        """The conditions on what the caller may read of `model`: none for operators."""
        if self.scope.all_tenants and self.operators_see_all:
            return ()
        return (self.own_rows(),)

    def own_rows(self) -> ColumnElement[bool]:
        """The rows of the caller's tenant (and the platform's, with `platform_rows`)."""
        return self.tenant_condition(
            getattr(self.model, self.tenant_key), platform_rows=self.platform_rows
        )

    def compiled_scope(self, **values: Any) -> tuple[bool, dict[str, Any]]:
        """For a statement compiled once per shape (`spawnpoint.sqlite_fast`), scoped as
        `readable()` is: whether it filters by tenant, and `values` with the caller's
        `tenant_id` when it does."""
        scoped = bool(self.visible())
        return scoped, {**values, "tenant_id": self.scope.tenant_id} if scoped else values

    def owned_by(
        self, tenant_column: Any, *, platform_rows: bool = False
    ) -> tuple[ColumnElement[bool], ...]:
        """The conditions on a child table, by the child's own tenant column."""
        if self.scope.all_tenants and self.operators_see_all:
            return ()
        return (self.tenant_condition(tenant_column, platform_rows=platform_rows),)

    def tenant_condition(
        self, tenant_column: Any, *, platform_rows: bool = False
    ) -> ColumnElement[bool]:
        """`tenant_column` is the caller's tenant, for operators too: no bypass here."""
        own: ColumnElement[bool] = tenant_column == self.scope.tenant_id
        return or_(own, tenant_column.is_(None)) if platform_rows else own


class PlatformRepository(Repository[M]):
    """Unscoped, on purpose: a platform table, or system code that serves every tenant.

    Never hand one to code acting for a tenant's caller: it would read other tenants' rows.
    """

    def readable(self) -> Select[M]:
        return select(self.model)
