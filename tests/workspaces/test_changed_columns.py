"""A loaded workspace writes back exactly the columns set since to another value."""

from __future__ import annotations

import uuid

from spawnpoint.workspaces.repository import JOB_COLUMNS, _clean, changed_columns


def test_only_columns_set_to_another_value_count_as_changed() -> None:
    loaded = {column.key: None for column in JOB_COLUMNS}
    loaded.update(id=uuid.uuid4(), state="pending", driver_state={"phase": None}, error="old")
    workspace = _clean(JOB_COLUMNS, [loaded[column.key] for column in JOB_COLUMNS])
    assert changed_columns(workspace) == {}
    assert workspace.state == "pending"

    workspace.state = "provisioning"
    workspace.state = "running"  # set twice: compared with what was loaded
    workspace.error = "old"  # the same value: nothing to write
    workspace.driver_state = {"phase": "running"}
    workspace.connection = {"url": None}
    workspace.parameters = {"not": "loaded"}  # a column the load left out
    assert changed_columns(workspace) == {
        "state": "running",
        "driver_state": {"phase": "running"},
        "connection": {"url": None},
        "parameters": {"not": "loaded"},
    }
