"""Chaos tests: a private PostgreSQL server, a migrated database per test, real processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from chaos.deployment import SPAWNPOINT, Deployment
from chaos.server import PrivatePostgres, server_binaries
from conftest import IN_CI


def _start_or_fail(directory: Path) -> PrivatePostgres:
    try:
        binaries = server_binaries()
        if binaries is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) found")
        server = PrivatePostgres(binaries, directory)
        server.init()
        server.start()
    except (OSError, KeyError, RuntimeError) as exc:
        message = f"cannot run a private PostgreSQL server: {exc}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: the chaos tests are mandatory)", pytrace=False)
        pytest.skip(message)
    return server


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running private server; stopped and deleted at the end of the session."""
    # Not under pytest's tmp_path, whose parents only root may enter: the server's user
    # must reach its directory.
    directory = Path(tempfile.mkdtemp(prefix="spawnpoint-chaos-pg-"))
    try:
        server = _start_or_fail(directory)
        try:
            yield server
        finally:
            server.stop("immediate")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def migrated(private_postgres: PrivatePostgres) -> str:
    """A database brought to head by `spawnpoint migrate`, copied by each test."""
    name = private_postgres.create_database()
    done = subprocess.run(
        [SPAWNPOINT, "migrate"],
        env={
            **os.environ,
            "DATABASE_URL": private_postgres.url(name),
            "ENVIRONMENT": "development",
        },
        cwd=private_postgres.directory,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return name


@pytest.fixture
async def deployment(
    private_postgres: PrivatePostgres, migrated: str, tmp_path: Path
) -> AsyncIterator[Deployment]:
    """A fresh migrated database; every process a test starts is stopped afterwards."""
    if not private_postgres.running():
        private_postgres.start()  # a failed test may have left it stopped
    name = private_postgres.create_database(template=migrated)
    deployment = Deployment(server=private_postgres, database=name, directory=tmp_path)
    try:
        yield deployment
    finally:
        await deployment.stop_all()
