from __future__ import annotations

import functools
import uuid
from typing import Any

from sqlalchemy import Row, Select, bindparam, or_, select

from spawnpoint import sqlite_fast
from spawnpoint.kit.errors import NotFound
from spawnpoint.kit.pagination import PageParams, fetch_page
from spawnpoint.kit.repository import ScopedRepository
from spawnpoint.models import Template, TemplateVersion

LISTING_COLUMNS = (
    Template.id,
    Template.tenant_id,
    Template.name,
    Template.description,
    Template.provisioner,
    Template.current_version,
    TemplateVersion.spec,
    Template.created_at,
    Template.updated_at,
)


TEMPLATE_COLUMNS = tuple(Template.__table__.c)
VERSION_COLUMNS = tuple(TemplateVersion.__table__.c)


@functools.lru_cache(maxsize=2)
def _fast_with_current(scoped: bool) -> sqlite_fast.FastStatement:
    """A template with its current version; `scoped`: the tenant `:tenant_id`'s or the
    platform's only, as `readable()` reads with `platform_rows`."""
    templates, versions = Template.__table__, TemplateVersion.__table__
    statement = (
        select(*TEMPLATE_COLUMNS, *VERSION_COLUMNS)
        .join_from(
            templates,
            versions,
            (versions.c.template_id == templates.c.id)
            & (versions.c.version == templates.c.current_version),
        )
        .where(templates.c.id == bindparam("template_id", type_=templates.c.id.type))
    )
    if scoped:
        tenant = bindparam("tenant_id", type_=templates.c.tenant_id.type)
        statement = statement.where(
            or_(templates.c.tenant_id == tenant, templates.c.tenant_id.is_(None))
        )
    return sqlite_fast.FastStatement(statement)


class TemplateRepository(ScopedRepository[Template]):
    """Templates of the caller's tenant and the platform's (no tenant), which all may read.

    Versions are scoped by their own `tenant_id` (a copy of their template's), so a version
    read never depends on the caller having read its template first.
    """

    model = Template
    noun = "template"
    platform_rows = True

    def _versions(self) -> Select[TemplateVersion]:
        return select(TemplateVersion).where(
            *self.owned_by(TemplateVersion.tenant_id, platform_rows=True)
        )

    def _with_current(self) -> Select[Template, TemplateVersion]:
        return (
            self.readable()
            .add_columns(TemplateVersion)
            .join(
                TemplateVersion,
                (TemplateVersion.template_id == Template.id)
                & (TemplateVersion.version == Template.current_version),
            )
        )

    async def page_listing(self, params: PageParams) -> tuple[list[Row[Any]], str | None]:
        """One page of templates with their current spec, as plain rows (no ORM objects:
        a list is read-only and fifty entities cost more than the query)."""
        statement = self._with_current().with_only_columns(*LISTING_COLUMNS)
        return await fetch_page(
            self.session, statement, key=Template.id, params=params, columns_only=True
        )

    async def get_with_current(
        self, template_id: uuid.UUID, *, for_update: bool = False
    ) -> tuple[Template, TemplateVersion]:
        statement = self._with_current().where(Template.id == template_id)
        if for_update:
            statement = statement.with_for_update(of=Template)
        row = (await self.session.execute(statement)).one_or_none()
        if row is None:
            raise NotFound("Template not found.")
        return row[0], row[1]

    async def read_with_current(self, template_id: uuid.UUID) -> tuple[Template, TemplateVersion]:
        """`get_with_current` for a caller that changes neither: on SQLite, detached rows read
        by one compiled statement on the connection itself (a spawn's first read;
        `spawnpoint.sqlite_fast`), scoped exactly as `readable()` is."""
        if self.session.get_bind().dialect.name != "sqlite":
            return await self.get_with_current(template_id)
        scoped, values = self.compiled_scope(template_id=template_id)
        (outcome,) = await sqlite_fast.run(self.session, [(_fast_with_current(scoped), values)])
        row = outcome.one_or_none()
        if row is None:
            raise NotFound("Template not found.")
        split = len(TEMPLATE_COLUMNS)
        return (
            sqlite_fast.detached(Template, TEMPLATE_COLUMNS, row[:split]),
            sqlite_fast.detached(TemplateVersion, VERSION_COLUMNS, row[split:]),
        )

    async def page_versions(
        self, template_id: uuid.UUID, params: PageParams
    ) -> tuple[list[TemplateVersion], str | None]:
        statement = self._versions().where(TemplateVersion.template_id == template_id)
        rows, cursor = await fetch_page(
            self.session, statement, key=TemplateVersion.version, params=params, key_type=int
        )
        return [row[0] for row in rows], cursor

    async def get_version(self, template_id: uuid.UUID, version: int) -> TemplateVersion:
        statement = self._versions().where(
            TemplateVersion.template_id == template_id, TemplateVersion.version == version
        )
        found = (await self.session.execute(statement)).scalar_one_or_none()
        if found is None:
            raise NotFound("Template version not found.")
        return found

    async def add_version(self, version: TemplateVersion) -> TemplateVersion:
        self.session.add(version)
        await self.flush()
        return version
