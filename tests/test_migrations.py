"""The revision chain runs up and down on both databases and matches the models."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, insert, inspect, select
from sqlalchemy.engine import Engine, make_url

from spawnpoint import models  # noqa: F401  (registers every table)
from spawnpoint.config import Settings
from spawnpoint.db import Base
from spawnpoint.kit.inserts import with_defaults
from spawnpoint.migrations import downgrade, upgrade
from spawnpoint.models import Job, JobState, JobStateEntry, TenantUsage, Workspace, WorkspaceState
from spawnpoint.workspaces.lifecycle import ACTIVE_STATES

DEMO_TENANT = uuid.UUID("00000000-0000-0000-0000-000000000001")
DEMO_TEMPLATE = uuid.UUID("00000000-0000-0000-0000-000000000100")


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


def test_the_usage_migration_counts_existing_workspaces(empty_database: Settings) -> None:
    upgrade(empty_database, "20240602_0003_workspaces")
    engine = sync_engine(empty_database)
    now = datetime.now(UTC)
    sizes = {state: (0.5 + i, 256 * (i + 1), i) for i, state in enumerate(WorkspaceState)}
    try:
        with engine.begin() as connection:
            for state, (cpu, memory_mb, storage_gb) in sizes.items():
                connection.execute(
                    insert(Workspace).values(
                        with_defaults(
                            Workspace,
                            {
                                "tenant_id": DEMO_TENANT,
                                "template_id": DEMO_TEMPLATE,
                                "template_version": 1,
                                "provisioner": "dry-run",
                                "name": state.value,
                                "state": state,
                                "parameters": {},
                                "cpu": cpu,
                                "memory_mb": memory_mb,
                                "storage_gb": storage_gb,
                                "created_at": now,
                                "updated_at": now,
                            },
                        )
                    )
                )
        upgrade(empty_database)
        with engine.connect() as connection:
            row = connection.execute(
                select(
                    TenantUsage.workspaces,
                    TenantUsage.cpu,
                    TenantUsage.memory_mb,
                    TenantUsage.storage_gb,
                ).where(TenantUsage.tenant_id == DEMO_TENANT)
            ).one()
    finally:
        engine.dispose()
    active = [sizes[state] for state in ACTIVE_STATES]
    assert row.workspaces == len(ACTIVE_STATES)
    assert float(row.cpu) == pytest.approx(sum(cpu for cpu, _, _ in active))
    assert row.memory_mb == sum(memory for _, memory, _ in active)
    assert row.storage_gb == sum(
        storage for state, (_, _, storage) in sizes.items() if state != WorkspaceState.deleted
    )


def test_the_job_states_migration_enters_existing_jobs(empty_database: Settings) -> None:
    upgrade(empty_database, "20240620_0020_spawn_admission")
    engine = sync_engine(empty_database)
    now = datetime.now(UTC)
    jobs = {
        state: with_defaults(
            Job,
            {
                "type": f"test.{state.value}",
                "payload": {},
                "tenant_id": DEMO_TENANT if state != JobState.failed else None,
                "state": state,
                "run_after": now,
                "created_at": now,
                "updated_at": now,
            },
        )
        for state in JobState
    }
    try:
        with engine.begin() as connection:
            for values in jobs.values():
                # The jobs table as revision 0020 left it: no column of it was added since.
                connection.execute(insert(Job.__table__).values(values))
        upgrade(empty_database)
        with engine.connect() as connection:
            entries = {
                row.job_id: row
                for row in connection.execute(
                    select(
                        JobStateEntry.job_id,
                        JobStateEntry.tenant_id,
                        JobStateEntry.type,
                        JobStateEntry.state,
                    )
                )
            }
    finally:
        engine.dispose()
    assert {
        values["id"]: (values["tenant_id"], values["type"], values["state"].value)
        for values in jobs.values()
    } == {job_id: (row.tenant_id, row.type, row.state) for job_id, row in entries.items()}
