"""What a worker process runs: the job handlers and the scheduler's periodic tasks."""

from __future__ import annotations

from datetime import timedelta

from spawnpoint.audit.service import audit_tasks
from spawnpoint.config import Settings
from spawnpoint.costs.metering import metering_tasks
from spawnpoint.jobs.scheduler import PeriodicTask, default_tasks
from spawnpoint.provisioners import ProvisionerRegistry
from spawnpoint.workspaces.status_cache import status_cache_task
from spawnpoint.workspaces.sweeps import workspace_tasks


def periodic_tasks(
    settings: Settings, *, rescue_interval: timedelta = timedelta(seconds=5)
) -> list[PeriodicTask]:
    """The scheduler's tasks: lease rescue, idle stop, maximum lifetime, lost processes,
    key expiry; audit checkpoints, partitions and retention; cost metering; the status
    cache's repair (with REDIS_URL)."""
    sweeps = workspace_tasks(
        provisioners=ProvisionerRegistry.from_entry_points(), settings=settings
    )
    return [
        *default_tasks(rescue_interval=rescue_interval),
        *sweeps,
        *audit_tasks(settings),
        *metering_tasks(settings),
        *status_cache_task(settings),
    ]
