"""What a worker process runs: the job handlers and the scheduler's periodic tasks."""

from __future__ import annotations

from datetime import timedelta

from spawnpoint.jobs.scheduler import PeriodicTask, default_tasks
from spawnpoint.workspaces.sweeps import workspace_tasks


def periodic_tasks(*, rescue_interval: timedelta = timedelta(seconds=5)) -> list[PeriodicTask]:
    """The scheduler's tasks: lease rescue, idle stop, maximum lifetime, key expiry."""
    return [*default_tasks(rescue_interval=rescue_interval), *workspace_tasks()]
