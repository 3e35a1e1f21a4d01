from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Row, Select, select

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
