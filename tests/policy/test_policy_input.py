"""The policy input document: its builders and its documentation agree."""

from __future__ import annotations

import json
import re
import uuid
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from policy_samples import TENANT_ID, sample_input
from pydantic import ValidationError

import spawnpoint.policy
from spawnpoint.policy import PolicyPlan, PolicyTemplate, SpawnPolicyInput
from spawnpoint.policy.embedded import EmbeddedPolicyEngine

SECTIONS = {"action", "tenant", "user", "template", "request", "usage", "budget"}


def documented_example() -> dict[str, Any]:
    doc = spawnpoint.policy.__doc__ or ""
    found = re.search(r"```json\n(.*?)```", doc, re.DOTALL)
    assert found, "the package docstring shows the input document"
    example: dict[str, Any] = json.loads(found.group(1))
    return example


def test_the_document_has_the_documented_shape() -> None:
    doc = sample_input().document()
    example = documented_example()
    assert set(doc) == set(example) == SECTIONS
    for section in SECTIONS - {"action"}:
        assert set(doc[section]) == set(example[section]), section
    assert set(doc["tenant"]["plan"]) == set(example["tenant"]["plan"])
    assert set(doc["template"]["spec"]) == set(example["template"]["spec"])


def test_the_documented_example_is_a_valid_input() -> None:
    example = documented_example()
    placeholder = str(uuid.UUID(int=1))
    text = json.dumps(example).replace('"uuid"', f'"{placeholder}"')
    assert SpawnPolicyInput.model_validate_json(text).document()["action"] == "spawn"


def test_ids_are_strings_and_money_is_numbers() -> None:
    doc = sample_input().document()
    assert doc["tenant"]["id"] == str(TENANT_ID)
    assert doc["template"]["tenant_id"] == str(TENANT_ID)
    assert doc["tenant"]["plan"]["max_cpu"] == 8.0
    assert isinstance(doc["budget"]["budgets"][0]["spent"], float)
    assert doc["budget"]["budgets"][0]["id"] == "00000000-0000-0000-0000-0000000000b1"
    assert doc["budget"]["period_start"] == "2026-12-01T00:00:00Z"
    json.dumps(doc)


def test_rows_are_read_by_attribute() -> None:
    plan_row = SimpleNamespace(
        id=uuid.uuid4(),
        name="team",
        description="ignored",
        max_workspaces=5,
        max_cpu=Decimal("7.50"),
        max_memory_mb=1024,
        max_storage_gb=10,
        max_concurrent_jobs=2,
        max_jobs_per_day=10,
        monthly_budget=Decimal("99.99"),
    )
    plan = PolicyPlan.model_validate(plan_row)
    assert plan.max_cpu == 7.5
    assert plan.model_dump(mode="json")["monthly_budget"] == 99.99

    version_row = SimpleNamespace(
        id=uuid.uuid4(),
        name="jupyter",
        version=2,
        provisioner="local",
        tenant_id=None,
        spec={"cpu": 2, "memory_mb": 1024, "restricted": True},
    )
    template = PolicyTemplate.model_validate(version_row)
    assert template.spec.restricted
    assert template.model_dump(mode="json")["spec"]["ports"] == []


def test_the_builders_refuse_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValidationError):
        SpawnPolicyInput.model_validate({**sample_input().document(), "extra": 1})
    with pytest.raises(ValidationError):
        SpawnPolicyInput.model_validate(
            {
                **sample_input().document(),
                "budget": {**sample_input().document()["budget"], "status": "fine"},
            }
        )


async def test_the_built_document_is_what_the_engine_decides_on() -> None:
    engine = EmbeddedPolicyEngine()
    try:
        assert (await engine.evaluate(sample_input().document())).allow
    finally:
        await engine.aclose()
