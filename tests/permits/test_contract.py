"""The inbound contract: the shipped JSON Schema, the seed's WPS_* names, stage specs."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import orjson
import pytest

from spawnpoint.config import Settings
from spawnpoint.permits.consumer import Invalid, parse
from spawnpoint.permits.schemas import (
    PermitEvent,
    PermitType,
    event_json_schema,
    shipped_json_schema,
)
from spawnpoint.templates.schemas import TemplateSpec
from spawnpoint.templates.stages import defines_stage, stage_spec

EVENT = {
    "type": "permit.approved",
    "permit_id": "permit-1",
    "tenant_id": str(uuid.uuid4()),
    "template_id": str(uuid.uuid4()),
    "occurred_at": "2026-12-01T10:00:00+00:00",
}


def test_the_shipped_schema_is_the_models() -> None:
    shipped = shipped_json_schema()
    assert shipped == event_json_schema()
    assert set(shipped["required"]) == {
        "type",
        "permit_id",
        "tenant_id",
        "template_id",
        "occurred_at",
    }
    assert shipped["$defs"]["PermitType"]["enum"] == [t.value for t in PermitType]
    assert "message_id" in shipped["description"]


def test_a_valid_body_parses_and_unknown_fields_are_ignored() -> None:
    event = parse(
        b'{"type": "permit.stage_changed", "permit_id": "p-1", "stage": "analysis",'
        b' "tenant_id": "%s", "template_id": "%s", "occurred_at": "2026-12-01T10:00:00Z",'
        b' "extra": 1}' % (EVENT["tenant_id"].encode(), EVENT["template_id"].encode()),
        max_bytes=10_000,
        max_depth=8,
    )
    assert isinstance(event, PermitEvent)
    assert event.stage == "analysis"
    assert event.occurred_at == datetime(2026, 12, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[1]", "not a JSON object"),
        (b"nope", "not JSON"),
        (b'{"a": NaN}', "not JSON"),
        (b"x" * 2000, "at most 1000"),
        (b'{"type": "permit.stage_changed"}', "needs a stage"),
        (b'{"type": "permit.approved", "parameters": {"a": [[[[[[[[[1]]]]]]]]]}}', "deeper"),
        (b'{"type": "permit.approved", "permit_id": "a\\u0000"}', "NUL"),
    ],
)
def test_invalid_bodies_say_why(body: bytes, reason: str) -> None:
    if reason == "needs a stage":
        body = (
            b'{"type": "permit.stage_changed", "permit_id": "p", "tenant_id": "%s", '
            b'"template_id": "%s", "occurred_at": "2026-12-01T10:00:00Z"}'
            % (EVENT["tenant_id"].encode(), EVENT["template_id"].encode())
        )
    found = parse(body, max_bytes=1000, max_depth=8)
    assert isinstance(found, Invalid)
    assert reason in found.reason


def test_naive_times_and_bad_permit_ids_are_schema_violations() -> None:
    for change in ({"occurred_at": "2026-12-01T10:00:00"}, {"permit_id": "a/b"}):
        found = parse(orjson.dumps({**EVENT, **change}), max_bytes=10_000, max_depth=8)
        assert isinstance(found, Invalid)
        assert found.reason.startswith("schema violation")
        assert found.type == "permit.approved"


def test_the_seeds_names_are_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("WPS_", "RABBITMQ_", "REDIS_", "LOG_LEVEL", "PROVISIONER")):
            monkeypatch.delenv(name)
    plain = Settings(_env_file=None)  # type: ignore[call-arg]
    assert plain.rabbitmq_queue == "spe.workspace.events"
    assert plain.rabbitmq_max_deliveries == 5
    assert plain.provisioner == "local"
    monkeypatch.setenv("WPS_RABBITMQ__URL", "amqp://guest:guest@broker:5672/")
    monkeypatch.setenv("WPS_RABBITMQ__QUEUE", "permits.in")
    monkeypatch.setenv("WPS_REDIS__URL", "redis://cache:6379/0")
    monkeypatch.setenv("WPS_DISABLE_PULUMI", "true")
    monkeypatch.setenv("WPS_LOGGING__LEVEL", "WARNING")
    seeded = Settings(_env_file=None)  # type: ignore[call-arg]
    assert seeded.rabbitmq_url == "amqp://guest:guest@broker:5672/"
    assert seeded.rabbitmq_queue == "permits.in"
    assert seeded.redis_url == "redis://cache:6379/0"
    assert seeded.provisioner == "dry-run"
    assert seeded.log_level == "warning"
    # The plain names win over the seed's, and an explicit PROVISIONER over the dry run.
    monkeypatch.setenv("RABBITMQ_URL", "amqp://guest:guest@other:5672/")
    monkeypatch.setenv("PROVISIONER", "orchestrator")
    both = Settings(_env_file=None)  # type: ignore[call-arg]
    assert both.rabbitmq_url == "amqp://guest:guest@other:5672/"
    assert both.provisioner == "orchestrator"
    # Still settable by field name (the test suite's own settings are made that way).
    assert Settings(_env_file=None, rabbitmq_queue="q").rabbitmq_queue == "q"  # type: ignore[call-arg]


def test_stage_specs_apply_their_overrides() -> None:
    spec = TemplateSpec.model_validate(
        {
            "env": {"A": "1", "B": "2"},
            "storage_gb": 2,
            "stages": {
                "analysis": {
                    "egress": [{"to": "10.0.0.0/8", "ports": [443]}],
                    "storage_gb": 9,
                    "env": {"B": "3"},
                },
                "closed": {"egress": []},
            },
        }
    ).model_dump(mode="json")
    assert stage_spec(spec, None) == spec
    analysis = stage_spec(spec, "analysis")
    assert analysis["stage"] == "analysis"
    assert analysis["egress"] == [{"to": "10.0.0.0/8", "ports": [443]}]
    assert analysis["storage_gb"] == 9
    assert analysis["env"] == {"A": "1", "B": "3"}
    assert "stages" not in analysis
    closed = stage_spec(spec, "closed")
    assert closed["egress"] == []
    assert closed["storage_gb"] == 2
    assert defines_stage(spec, "closed")
    assert not defines_stage(spec, "other")
    assert defines_stage({"stages": {}}, "anything")


@pytest.mark.parametrize(
    "stages",
    [
        {"Bad Name": {}},
        {"ok": {"egress": [{"to": "not a host!"}]}},
        {"ok": {"storage_gb": -1}},
        {"ok": {"unknown": 1}},
    ],
)
def test_bad_stages_are_refused(stages: object) -> None:
    with pytest.raises(ValueError, match="validation error"):
        TemplateSpec.model_validate({"stages": stages})


def test_the_shipped_schema_judges_bodies_as_the_consumer_does() -> None:
    from jsonschema import Draft202012Validator, FormatChecker

    validator = Draft202012Validator(shipped_json_schema(), format_checker=FormatChecker())
    Draft202012Validator.check_schema(shipped_json_schema())
    good = [
        EVENT,
        {**EVENT, "type": "permit.stage_changed", "stage": "analysis"},
        {**EVENT, "parameters": {"size": 3}, "extra": "ignored"},
    ]
    bad = [
        {**EVENT, "type": "permit.stage_changed"},
        {**EVENT, "type": "permit.unknown"},
        {k: v for k, v in EVENT.items() if k != "occurred_at"},
        {**EVENT, "permit_id": "a/b"},
        {**EVENT, "stage": "Not A Stage"},
    ]
    for body in good:
        assert validator.is_valid(body), body
        assert isinstance(parse(orjson.dumps(body), max_bytes=10_000, max_depth=8), PermitEvent)
    for body in bad:
        assert not validator.is_valid(body), body
        assert isinstance(parse(orjson.dumps(body), max_bytes=10_000, max_depth=8), Invalid)
