"""Contexts for driver calls: no database, just a workspace, a spec and a captured log."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from spawnpoint.config import Settings
from spawnpoint.provisioners.base import ProvisionContext, WorkspaceRef


@dataclass
class JobLog:
    """Collects what a driver writes to the job log."""

    lines: list[str] = field(default_factory=list)

    async def __call__(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join(self.lines)


def workspace_ref(name: str = "ws") -> WorkspaceRef:
    return WorkspaceRef(
        id=uuid.uuid4(),
        tenant_id=uuid.uuid4(),
        name=name,
        template_id=uuid.uuid4(),
        template_version=1,
    )


ContextFactory = Callable[..., ProvisionContext]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data")


@pytest.fixture
def job_log() -> JobLog:
    return JobLog()


@pytest.fixture
def make_ctx(settings: Settings, job_log: JobLog) -> ContextFactory:
    """Build a context; a test passes `workspace` again to address the same workspace."""

    def make(
        *,
        workspace: WorkspaceRef | None = None,
        spec: dict[str, Any] | None = None,
        state: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ProvisionContext:
        return ProvisionContext(
            workspace=workspace or workspace_ref(),
            spec=spec or {},
            state=state or {},
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            log=job_log,
            settings=settings,
        )

    return make
