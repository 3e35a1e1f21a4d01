"""Ids made one after another sort in the order they were made (keyset order = time order)."""

from __future__ import annotations

import time

import pytest

from spawnpoint.kit import ids


def test_ids_of_one_millisecond_keep_their_order() -> None:
    made = [ids.uuid7() for _ in range(20_000)]  # thousands per millisecond
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert {u.version for u in made} == {7}


def test_a_clock_stepping_back_does_not_reorder_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    first = ids.uuid7()
    monkeypatch.setattr(time, "time_ns", lambda: 1_000_000_000)  # 1970: far behind
    later = ids.uuid7()
    assert later > first
