"""Ids made one after another sort in the order they were made (keyset order = time order)."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from spawnpoint.kit import ids

RANDOM_LOW_BITS = (1 << 62) - 1  # the last 62 of an id's 74 random bits


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


def test_a_forked_child_draws_random_bits_of_its_own() -> None:
    ids.uuid7()  # the parent holds random bytes for the next ids
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.write(writer, ids.uuid7().bytes)
        os._exit(0)
    os.close(writer)
    try:
        from_child = uuid.UUID(bytes=os.read(reader, 16))
    finally:
        os.close(reader)
        os.waitpid(child, 0)
    from_parent = ids.uuid7()
    # With the parent's bytes the child would have made the very id the parent makes next
    # (within the same millisecond), or one that shares its random bits.
    assert from_child != from_parent
    assert from_child.int & RANDOM_LOW_BITS != from_parent.int & RANDOM_LOW_BITS
