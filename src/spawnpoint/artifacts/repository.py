from __future__ import annotations

from sqlalchemy import ColumnElement, and_, func

from spawnpoint.kit.pagination import PageParams
from spawnpoint.kit.repository import ScopedRepository
from spawnpoint.models import Artifact


class ArtifactRepository(ScopedRepository[Artifact]):
    """A tenant's artifacts; operators too see (and write) only their own tenant's, as an
    artifact is created in the caller's tenant and read back from it."""

    model = Artifact
    noun = "artifact"
    operators_see_all = False

    async def page_filtered(
        self, params: PageParams, *, type: str | None, name_prefix: str | None
    ) -> tuple[list[Artifact], str | None]:
        """One page of readable artifacts, of `type` and names starting `name_prefix`."""
        conditions: list[ColumnElement[bool]] = []
        if type is not None:
            conditions.append(Artifact.type == type)
        if name_prefix:
            conditions.append(self._name_starts_with(name_prefix))
        return await self.page(params, *conditions)

    def _name_starts_with(self, prefix: str) -> ColumnElement[bool]:
        """Names starting with `prefix`, exactly (case-sensitive), by an index range scan.

        PostgreSQL: `LIKE 'p%'` (wildcards escaped) on the `text_pattern_ops` index.
        SQLite's LIKE ignores ASCII case, so there the index serves a range over the
        binary (code point) order, and `substr` keeps only exact prefixes.
        """
        if self.session.get_bind().dialect.name == "postgresql":
            return Artifact.name.startswith(prefix, autoescape=True)
        condition = and_(
            Artifact.name >= prefix, func.substr(Artifact.name, 1, len(prefix)) == prefix
        )
        last = ord(prefix[-1])
        if last < 0x10FFFF and not 0xD7FF <= last < 0xE000:
            condition = and_(condition, Artifact.name < prefix[:-1] + chr(last + 1))
        return condition
