"""`spawnpoint` with audit entries and outbox events switched off: bench/audit.py's baseline.

    .venv/bin/python bench/_no_audit.py serve ...   (any `spawnpoint` command line)

Benchmark-only: the unit of work drops every outbox event and audit entry it is given
(the request's own entry included), so the same code runs without those rows. spawnpoint
itself has no switch for this: an audit log that can be turned off is not one.
"""

from __future__ import annotations

from typing import Any

from spawnpoint import uow
from spawnpoint.cli import main


def _drop(self: uow.UnitOfWork, *_: Any) -> None:
    return None


def _no_drafts(self: uow.UnitOfWork) -> list[Any]:
    return []


uow.UnitOfWork.emit = _drop  # type: ignore[method-assign]
uow.UnitOfWork.emit_if_refused = _drop  # type: ignore[method-assign]
uow.UnitOfWork.record = _drop  # type: ignore[method-assign]
uow.UnitOfWork._drafts = _no_drafts  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
