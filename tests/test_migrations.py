"""The revision chain runs up and down on both databases and matches the models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Engine, make_url

from conftest import PostgresDatabase, make_settings, postgres_or_skip
from spawnpoint import models  # noqa: F401  (registers every table)
from spawnpoint.config import Settings
from spawnpoint.db import Base
from spawnpoint.migrations import downgrade, upgrade


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Settings]:
    if request.param == "sqlite":
        yield make_settings(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}", tmp_path)
        return
    postgres_or_skip()
    with PostgresDatabase(prefix="spawnpoint_migrations") as pg:
        yield make_settings(pg.url, tmp_path)


def sync_engine(settings: Settings) -> Engine:
    url = make_url(settings.sqlalchemy_url)
    driver = "sqlite" if url.drivername.startswith("sqlite") else "postgresql+psycopg"
    return create_engine(url.set(drivername=driver))


def test_upgrade_matches_models_then_downgrade_to_base(empty_database: Settings) -> None:
    upgrade(empty_database)
    engine = sync_engine(empty_database)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            assert connection.exec_driver_sql("SELECT count(*) FROM tenants").scalar() == 1
        downgrade(empty_database, "base")
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
        upgrade(empty_database)
        with engine.connect() as connection:
            tenant = connection.exec_driver_sql("SELECT slug FROM tenants").scalar()
            assert tenant == "demo"
    finally:
        engine.dispose()
