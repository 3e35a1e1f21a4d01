"""Permit events through a real broker (a vhost per test) on both databases."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from conftest import World
from polling import eventually
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.kit.clock import utcnow
from spawnpoint.models import AuditEntry, InboxMessage, OutboxEvent, Role, Workspace
from spawnpoint.permits.consumer import DEATH_REASON, PERMITS_CONSUMED, PermitConsumer
from spawnpoint.permits.repository import service_account_id
from spawnpoint.policy.engine import Decision, PolicyEngine

from .conftest import (
    Broker,
    StartConsumer,
    inbox_outcome,
    later,
    new_permit,
    permit_event,
    publish_without_message_id,
    staged_template,
    workspace_of,
)


async def status_of(client: httpx.AsyncClient, permit_id: str, headers: dict[str, str]) -> Any:
    response = await client.get(f"/api/v1/workspaces/{permit_id}/status", headers=headers)
    return response.json().get("status") if response.status_code == 200 else None


async def wait_status(
    client: httpx.AsyncClient, permit_id: str, headers: dict[str, str], status: str
) -> None:
    async def reached() -> bool:
        return await status_of(client, permit_id, headers) == status

    await eventually(reached, within=30, what=f"permit {permit_id} {status}")


async def outbox_of(database: Database, tenant_id: uuid.UUID, kind: str) -> list[OutboxEvent]:
    async with database.transaction(write=False) as session:
        rows = await session.execute(
            select(OutboxEvent)
            .where(OutboxEvent.tenant_id == tenant_id, OutboxEvent.type == kind)
            .order_by(OutboxEvent.id)
        )
        return list(rows.scalars())


async def test_each_message_type_end_to_end(
    client: httpx.AsyncClient,
    world: World,
    broker: Broker,
    start_consumer: StartConsumer,
    worker: None,
) -> None:
    org = await world.org()
    admin = org.headers[Role.admin]
    template = await staged_template(world.database, org.tenant_id)
    await start_consumer()
    permit = new_permit()
    t0 = utcnow()
    ids = dict(tenant_id=org.tenant_id, template_id=template, permit_id=permit)

    await broker.publish(permit_event("permit.approved", at=t0, stage="intake", **ids))
    await wait_status(client, permit, admin, "running")
    workspace = await workspace_of(world.database, org.tenant_id, permit)
    assert workspace is not None
    assert workspace.owner_id == service_account_id(org.tenant_id)
    assert workspace.stage == "intake"
    assert workspace.driver_state["specs"][-1]["egress"] == []

    await broker.publish(
        permit_event("permit.stage_changed", at=later(t0, 1), stage="analysis", **ids)
    )

    async def reprovisioned() -> Any:
        found = await workspace_of(world.database, org.tenant_id, permit)
        done = found and found.state == "running" and len(found.driver_state["specs"]) == 2
        return found if done else None

    workspace = await eventually(reprovisioned, within=30, what="re-provisioning")
    spec = workspace.driver_state["specs"][-1]
    assert spec["stage"] == "analysis"
    assert spec["egress"] == [{"to": "10.20.0.0/16", "ports": [443]}]
    assert spec["env"] == {"MODE": "analysis"}
    assert spec["storage_gb"] == workspace.storage_gb == 5
    events = (await client.get(f"/api/workspaces/{workspace.id}/events", headers=admin)).json()
    moves = [(e["from_state"], e["to_state"], e["reason"]) for e in events["items"]]
    assert moves[3] == ("running", "provisioning", f"permit {permit} moved to stage analysis")
    assert moves[4][:2] == ("provisioning", "running")

    await broker.publish(permit_event("permit.revoked", at=later(t0, 2), **ids))
    await wait_status(client, permit, admin, "deleted")

    # permit.closed of another permit, then that permit's (older) approval: nothing spawned.
    closed = new_permit()
    closed_ids = {**ids, "permit_id": closed}
    closing = await broker.publish(permit_event("permit.closed", at=later(t0, 5), **closed_ids))

    async def closed_first() -> str | None:
        return await inbox_outcome(world.database, closing)

    await eventually(closed_first, within=30, what="the permit closed")
    approval = await broker.publish(permit_event("permit.approved", at=later(t0, 4), **closed_ids))

    async def settled() -> bool:
        return await inbox_outcome(world.database, approval) == "ignored"

    await eventually(settled, within=30, what="the late approval ignored")
    assert await inbox_outcome(world.database, closing) == "applied"
    assert await workspace_of(world.database, org.tenant_id, closed) is None
    async with world.database.transaction(write=False) as session:
        actions = (
            await session.execute(
                select(AuditEntry.action).where(
                    AuditEntry.tenant_id == org.tenant_id, AuditEntry.actor_id == "permit-consumer"
                )
            )
        ).scalars()
        assert set(actions) >= {"permit.approved", "permit.stage_changed", "permit.revoked"}


async def test_the_same_message_twice_has_one_effect(
    world: World, broker: Broker, start_consumer: StartConsumer
) -> None:
    org = await world.org()
    await start_consumer()
    permit = new_permit()
    body = permit_event(
        "permit.approved", permit_id=permit, tenant_id=org.tenant_id, template_id=org.template_id
    )
    before = PERMITS_CONSUMED.labels("permit.approved", "ignored")._value.get()
    message_id = await broker.publish(body)
    await broker.publish(body, message_id=message_id)

    async def both_handled() -> bool:
        ignored = PERMITS_CONSUMED.labels("permit.approved", "ignored")._value.get()
        return ignored > before and await inbox_outcome(world.database, message_id) is not None

    await eventually(both_handled, within=30, what="both deliveries handled")
    async with world.database.transaction(write=False) as session:
        workspaces = await session.scalar(
            select(func.count())
            .select_from(Workspace)
            .where(Workspace.tenant_id == org.tenant_id, Workspace.external_ref == permit)
        )
        inbox = await session.scalar(
            select(func.count())
            .select_from(InboxMessage)
            .where(InboxMessage.message_id == message_id)
        )
    assert (workspaces, inbox) == (1, 1)
    assert len(await outbox_of(world.database, org.tenant_id, "workspace.pending")) == 1
    assert await broker.depth(broker.queue) == 0


async def test_poison_messages_go_to_the_dead_letter_queue_and_the_consumer_keeps_going(
    client: httpx.AsyncClient,
    world: World,
    broker: Broker,
    start_consumer: StartConsumer,
    worker: None,
) -> None:
    org = await world.org()
    staged = await staged_template(world.database, org.tenant_id, provisioner="dry-run")
    await start_consumer()
    valid = dict(tenant_id=org.tenant_id, template_id=org.template_id)
    poison: list[tuple[dict[str, Any] | bytes, str | None, str]] = [
        (b"{not json", "", "not JSON"),
        ({"type": "permit.approved", "permit_id": "p"}, "", "schema violation"),
        (
            permit_event(
                "permit.approved",
                permit_id=new_permit(),
                tenant_id=uuid.uuid4(),
                template_id=org.template_id,
            ),
            "",
            "no tenant",
        ),
        (
            permit_event(
                "permit.approved",
                permit_id=new_permit(),
                tenant_id=org.tenant_id,
                template_id=uuid.uuid4(),
            ),
            "",
            "template",
        ),
        (
            permit_event(
                "permit.approved",
                permit_id=new_permit(),
                tenant_id=org.tenant_id,
                template_id=staged,
                stage="nope",
            ),
            "",
            "stage",
        ),
    ]
    sent = []
    for body, message_id, _ in poison:
        sent.append(await broker.publish(body, message_id=message_id))
    nameless = new_permit()
    body = permit_event("permit.approved", permit_id=nameless, **valid)
    await publish_without_message_id(broker.url, "permit.approved", orjson.dumps(body))
    good = new_permit()
    await broker.publish(permit_event("permit.approved", permit_id=good, **valid))
    await wait_status(client, good, org.headers[Role.admin], "running")

    async def all_dead() -> int:
        return await broker.depth(broker.dead_letters()) == len(poison) + 1

    await eventually(all_dead, within=30, what="every poison message dead-lettered")
    dead = await broker.drain(broker.dead_letters())
    reasons = {str(m.message_id): str(m.headers[DEATH_REASON]) for m in dead}
    # (Its copy in the dead-letter queue got an id from the client that moved it there.)
    nameless_ids = [k for k, reason in reasons.items() if "no message_id" in reason]
    assert len(nameless_ids) == 1
    del reasons[nameless_ids[0]]
    assert await workspace_of(world.database, org.tenant_id, nameless) is None
    for (_, _, expected), message_id in zip(poison, sent, strict=True):
        assert expected in reasons[message_id], (expected, reasons)
        assert await inbox_outcome(world.database, message_id) == "dead_lettered"
    async with world.database.transaction(write=False) as session:
        entries = await session.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(
                AuditEntry.action == "permit.dead_lettered",
                AuditEntry.resource_id.in_(
                    [str(body.get("permit_id")) for body, _, _ in poison if isinstance(body, dict)]
                ),
            )
        )
    # One per poison message that names a permit (tenant chain, or the platform's).
    assert entries == sum(1 for body, _, _ in poison if isinstance(body, dict))
    async with world.database.transaction(write=False) as session:
        nameless_entries = await session.scalar(
            select(func.count())
            .select_from(AuditEntry)
            .where(AuditEntry.action == "permit.dead_lettered", AuditEntry.resource_id == nameless)
        )
    assert nameless_entries == 1
    assert await broker.depth(broker.queue) == 0


async def test_out_of_order_stage_changes_and_a_parked_stage_change(
    world: World, broker: Broker, start_consumer: StartConsumer
) -> None:
    org = await world.org()
    template = await staged_template(world.database, org.tenant_id)
    await start_consumer()
    permit = new_permit()
    t0 = utcnow()
    ids = dict(tenant_id=org.tenant_id, template_id=template, permit_id=permit)
    # The stage change comes before its permit's approval: parked, then applied.
    early = await broker.publish(
        permit_event("permit.stage_changed", at=later(t0, 1), stage="intake", **ids)
    )

    async def parked() -> bool:
        return PERMITS_CONSUMED.labels("permit.stage_changed", "parked")._value.get() > 0

    await eventually(parked, within=30, what="the early stage change parked")
    await broker.publish(permit_event("permit.approved", at=t0, **ids))

    async def applied() -> bool:
        return await inbox_outcome(world.database, early) == "applied"

    await eventually(applied, within=30, what="the parked stage change applied")
    workspace = await workspace_of(world.database, org.tenant_id, permit)
    assert workspace is not None
    assert workspace.stage == "intake"

    # A newer stage change, then one that happened before it but arrives after it.
    newest = await broker.publish(
        permit_event("permit.stage_changed", at=later(t0, 3), stage="analysis", **ids)
    )

    async def newest_handled() -> str | None:
        return await inbox_outcome(world.database, newest)

    assert await eventually(newest_handled, within=30, what="the newest change") == "applied"
    stale = await broker.publish(
        permit_event("permit.stage_changed", at=later(t0, 2), stage="intake", **ids)
    )

    async def stale_handled() -> str | None:
        return await inbox_outcome(world.database, stale)

    assert await eventually(stale_handled, within=30, what="the stale change") == "ignored"
    workspace = await workspace_of(world.database, org.tenant_id, permit)
    assert workspace is not None
    assert workspace.stage == "analysis"


async def test_a_refusal_is_an_outbox_event_and_the_message_is_acked(
    world: World, broker: Broker, start_consumer: StartConsumer
) -> None:
    org = await world.org(max_workspaces=0)
    await start_consumer()
    permit = new_permit()
    message_id = await broker.publish(
        permit_event(
            "permit.approved",
            permit_id=permit,
            tenant_id=org.tenant_id,
            template_id=org.template_id,
        )
    )

    async def refused() -> bool:
        return await inbox_outcome(world.database, message_id) == "refused"

    await eventually(refused, within=30, what="the refusal")
    events = await outbox_of(world.database, org.tenant_id, "permit.refused")
    assert len(events) == 1
    assert events[0].payload["permit_id"] == permit
    assert events[0].payload["message_id"] == message_id
    assert "max_workspaces" in events[0].payload["reasons"][0]
    assert await workspace_of(world.database, org.tenant_id, permit) is None
    assert await broker.depth(broker.queue) == 0
    assert await broker.depth(broker.dead_letters()) == 0


class BrokenPolicy(PolicyEngine):
    """A policy engine that fails with an error the consumer does not know."""

    def __init__(self) -> None:
        self.calls = 0

    async def evaluate(self, policy_input: dict[str, Any]) -> Decision:
        self.calls += 1
        raise RuntimeError("policy exploded")

    async def aclose(self) -> None:
        return None


async def test_an_effect_that_keeps_failing_is_dead_lettered_after_max_deliveries(
    world: World, broker: Broker, start_consumer: StartConsumer
) -> None:
    org = await world.org()
    policy = BrokenPolicy()
    await start_consumer(policy=policy, rabbitmq_max_deliveries=3)
    message_id = await broker.publish(
        permit_event(
            "permit.approved",
            permit_id=new_permit(),
            tenant_id=org.tenant_id,
            template_id=org.template_id,
        )
    )

    async def dead() -> bool:
        return await broker.depth(broker.dead_letters()) == 1

    await eventually(dead, within=30, what="the failing message dead-lettered")
    assert policy.calls == 3
    (message,) = await broker.drain(broker.dead_letters())
    assert message.message_id == message_id
    assert "failed 3 times" in str(message.headers[DEATH_REASON])
    assert "policy exploded" in str(message.headers[DEATH_REASON])
    assert await inbox_outcome(world.database, message_id) == "dead_lettered"
    assert await broker.depth(broker.queue) == 0


async def test_a_cut_broker_connection_loses_nothing_and_applies_nothing_twice(
    world: World, broker: Broker, start_consumer: StartConsumer, tcp_proxy: Any
) -> None:
    org = await world.org(max_workspaces=1000, max_cpu=1000, max_memory_mb=10_000_000)
    proxy = await tcp_proxy("127.0.0.1", 5672)
    vhost = broker.url.rsplit("/", 1)[1]
    consumer = await start_consumer(
        rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}"
    )
    permits = [new_permit() for _ in range(60)]
    for permit in permits[:30]:
        await broker.publish(
            permit_event(
                "permit.approved",
                permit_id=permit,
                tenant_id=org.tenant_id,
                template_id=org.template_id,
            )
        )
    await proxy.cut()  # live connections reset, reconnects refused for a while
    for permit in permits[30:]:
        await broker.publish(
            permit_event(
                "permit.approved",
                permit_id=permit,
                tenant_id=org.tenant_id,
                template_id=org.template_id,
            )
        )
    await proxy.restore()

    async def all_spawned() -> bool:
        async with world.database.transaction(write=False) as session:
            count = await session.scalar(
                select(func.count())
                .select_from(Workspace)
                .where(Workspace.tenant_id == org.tenant_id)
            )
        return count == len(permits)

    await eventually(all_spawned, within=60, what="every permit's workspace")

    async def drained() -> bool:
        return await broker.depth(broker.queue) == 0

    await eventually(drained, within=30, what="the queue drained")
    async with world.database.transaction(write=False) as session:
        refs = (
            await session.execute(
                select(Workspace.external_ref).where(Workspace.tenant_id == org.tenant_id)
            )
        ).scalars()
        inbox = await session.scalar(
            select(func.count())
            .select_from(InboxMessage)
            .where(InboxMessage.tenant_id == org.tenant_id)
        )
    assert sorted(refs) == sorted(permits)
    assert inbox == len(permits)
    assert len(await outbox_of(world.database, org.tenant_id, "workspace.pending")) == 60
    assert await broker.depth(broker.dead_letters()) == 0
    assert proxy.accepted >= 2  # the consumer did reconnect
    assert consumer.ready.is_set()


async def test_a_stage_change_whose_permit_never_appears_is_dead_lettered_after_max_parks(
    world: World, broker: Broker, start_consumer: StartConsumer
) -> None:
    org = await world.org()
    await start_consumer(rabbitmq_max_parks=2, rabbitmq_park_seconds=0.1)
    message_id = await broker.publish(
        permit_event(
            "permit.stage_changed",
            permit_id=new_permit(),
            tenant_id=org.tenant_id,
            template_id=org.template_id,
            stage="analysis",
        )
    )

    async def dead() -> bool:
        return await broker.depth(broker.dead_letters()) == 1

    await eventually(dead, within=30, what="the orphan stage change dead-lettered")
    (message,) = await broker.drain(broker.dead_letters())
    assert message.message_id == message_id
    assert "parked 2 times" in str(message.headers[DEATH_REASON])
    assert message.headers["x-spawnpoint-parks"] == 2
    assert await inbox_outcome(world.database, message_id) == "dead_lettered"
    assert await broker.depth(broker.parked()) == 0


async def test_reconnects_back_off_doubling_and_start_over_once_consuming(
    backend_settings: Settings,
    database: Database,
    broker: Broker,
    tcp_proxy: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = await tcp_proxy("127.0.0.1", 5672)
    await proxy.cut()  # the broker is unreachable from the start
    vhost = broker.url.rsplit("/", 1)[1]
    settings = backend_settings.model_copy(
        update={
            "rabbitmq_url": f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost}",
            "rabbitmq_reconnect_max_seconds": 2.0,
        }
    )
    consumer = PermitConsumer(database, settings)
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="spawnpoint.permits.consumer")
    task = asyncio.create_task(consumer.run(stop))
    try:

        def waits() -> list[float]:
            return [
                float(r.getMessage().rsplit(" in ", 1)[1].split()[0])
                for r in caplog.records
                if "next try in" in r.getMessage()
            ]

        async def backed_off() -> bool:
            return len(waits()) >= 4

        await eventually(backed_off, within=20, what="four refused connection attempts")
        assert waits()[:4] == [0.5, 1.0, 2.0, 2.0]  # doubling, up to the maximum
        await proxy.restore()
        await asyncio.wait_for(consumer.ready.wait(), 20)
        caplog.clear()
        await proxy.cut()  # lost while consuming: the backoff starts over

        async def retried() -> bool:
            return bool(waits())

        await eventually(retried, within=20, what="a reconnect attempt after the loss")
        assert waits()[0] == 0.5
        await proxy.restore()
        await asyncio.wait_for(consumer.ready.wait(), 20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
