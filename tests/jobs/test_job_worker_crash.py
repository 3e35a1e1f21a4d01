"""A `spawnpoint worker` process killed mid-job: the job runs again, to success, once.

The subprocesses load the test handlers with `--handlers job_test_handlers:register`
(this directory on PYTHONPATH) and use the same database as the test.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from pathlib import Path

import job_test_handlers
from jobs_support import add_job, eventually, get_job, job_in_state

from spawnpoint.config import Settings
from spawnpoint.db import Database

HERE = Path(__file__).parent


def spawnpoint_executable() -> str:
    beside_python = Path(sys.executable).with_name("spawnpoint")
    found = str(beside_python) if beside_python.exists() else shutil.which("spawnpoint")
    assert found, "the spawnpoint console script is not installed"
    return found


async def start_worker(
    settings: Settings, log_path: Path, *options: str
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "DATABASE_URL": settings.sqlalchemy_url,
        "DATA_DIR": str(settings.data_dir),
        "JWT_SECRET": settings.jwt_secret or "",
        "ENVIRONMENT": "development",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            spawnpoint_executable(),
            "worker",
            "--handlers",
            "job_test_handlers:register",
            "--lease-seconds",
            "2",
            *options,
            env=env,
            cwd=log_path.parent,  # away from the repository's .env
            stdout=log,
            stderr=log,
        )


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def marker_lines(marker: Path) -> list[str]:
    return await asyncio.to_thread(read_lines, marker)


async def test_killed_worker_job_runs_again_exactly_once(
    database: Database, backend_settings: Settings, backend: str, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    job_id = await add_job(database, job_test_handlers.CRASH_ONCE, payload={"marker": str(marker)})

    first_log = tmp_path / "first-worker.log"
    first = await start_worker(
        backend_settings, first_log, "--no-scheduler", "--poll-interval", "0.2"
    )
    second: asyncio.subprocess.Process | None = None
    second_log = tmp_path / "second-worker.log"
    try:
        await eventually(
            lambda: marker_lines(marker), within=30, what=f"attempt 1 to start ({first_log})"
        )
        row = await get_job(database, job_id)
        assert row.state == "running"
        assert f":{first.pid}:" in (row.lease_owner or "")
        # Started before the kill only to overlap its start-up with the lease running out.
        # On PostgreSQL it polls only every 30 s, so the job this test enqueues later must
        # reach it through NOTIFY. SQLite has no NOTIFY: there it polls.
        poll = "0.2" if backend == "sqlite" else "30"
        second = await start_worker(
            backend_settings, second_log, "--poll-interval", poll, "--rescue-interval", "0.2"
        )
    finally:
        first.kill()
        await first.wait()
    assert first.returncode == -signal.SIGKILL
    assert second is not None

    try:
        done = await eventually(
            lambda: job_in_state(database, job_id, "succeeded"),
            within=30,
            what=f"the rescued job to succeed ({second_log})",
        )
        echo_id = await add_job(database, job_test_handlers.ECHO, payload={"n": 7})
        echoed = await eventually(
            lambda: job_in_state(database, echo_id, "succeeded"),
            within=10,
            what=f"a new job to run ({second_log})",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), 30)
    assert second.returncode == 0, read_lines(second_log)

    assert (done.attempts, done.result) == (2, {"attempt": 2})
    assert await marker_lines(marker) == ["start 1", "start 2", "done 2"]
    assert echoed.result == {"n": 7}
