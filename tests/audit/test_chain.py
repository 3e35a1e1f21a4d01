"""The hash recipe: canonical JSON exactly as `json.dumps` writes it, and the verifier alone."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from spawnpoint.audit.chain import (
    GENESIS_HASH,
    HASHED_FIELDS,
    canonical,
    checkpoint_message,
    encode_document,
    entry_hash,
)

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), JSON, max_size=6))
def test_the_fast_encoder_writes_what_json_dumps_writes(document: dict[str, object]) -> None:
    expected = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert encode_document(document) == expected


def test_the_hash_follows_the_documented_recipe() -> None:
    tenant = uuid.UUID("0190a4d2-7b1c-7cde-8f00-123456789abc")
    fields = {
        "seq": 1,
        "time": datetime(2024, 6, 8, 14, 34, 56, 123456, tzinfo=timezone(timedelta(hours=2))),
        "tenant_id": tenant,
        "actor_type": "user",
        "actor_id": "u-1",
        "action": "template.update",
        "resource_type": "template",
        "resource_id": None,
        "result": "success",
        "ip": "127.0.0.1",
        "user_agent": None,
        "reason": "unspecified",
        "request_id": "r-1",
        "details": {"name": {"old": "a", "new": "b"}},
    }
    document = {**fields, "time": "2024-06-08T12:34:56.123456+00:00", "tenant_id": str(tenant)}
    expected_json = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert canonical(fields) == expected_json
    assert sorted(document) == list(HASHED_FIELDS)
    assert entry_hash(GENESIS_HASH, fields) == hashlib.sha256(b"0" * 64 + expected_json).hexdigest()
    # Every hashed field counts.
    for name in HASHED_FIELDS:
        changed = {**fields, name: 2 if name == "seq" else None if fields[name] else "x"}
        assert entry_hash(GENESIS_HASH, changed) != entry_hash(GENESIS_HASH, fields), name


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        checkpoint_message(
            tenant_id=None, seq=1, hash=GENESIS_HASH, time=datetime(2024, 1, 1), key_id="k"
        )
    assert b'"tenant_id":null' in checkpoint_message(
        tenant_id=None,
        seq=1,
        hash=GENESIS_HASH,
        time=datetime(2024, 1, 1, tzinfo=UTC),
        key_id="k",
    )


def test_the_range_worker_imports_no_orm_and_no_web_framework() -> None:
    """A long chain is verified in worker processes; each must start in a fraction of a
    second, so `spawnpoint.audit.ranges` stays off SQLAlchemy, FastAPI and the models."""
    code = (
        "import sys, spawnpoint.audit.ranges; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'sqlalchemy', 'fastapi', 'starlette', 'pydantic', 'aiosqlite'}) + "
        "[m for m in sys.modules if m.startswith('spawnpoint.models')])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
