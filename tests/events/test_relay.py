"""The outbox relay against the real RabbitMQ, on both databases, a vhost per test.

The relay reads every tenant's unpublished rows, so these tests use a database of their
module's own (not the session's, where other tests' events must stay unpublished).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import delete, select

from conftest import BACKENDS, PostgresDatabase, World, make_settings, postgres_or_skip
from events.broker import EXCHANGE, amqp_url, fresh_vhost, full_after, listening
from events.relaying import delivered, drain, emit, relay_process, rows, unpublished
from polling import eventually
from spawnpoint.app import create_app
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.events.outbox import outbox_event
from spawnpoint.events.relay import RELAY_LEASE, OutboxRelay, relay_runners
from spawnpoint.jobs.registry import default_registry
from spawnpoint.jobs.worker import run_worker_in_process
from spawnpoint.kit.clock import utcnow
from spawnpoint.migrations import upgrade
from spawnpoint.models import OutboxEvent, Role
from spawnpoint.models.jobs import LeaderLeaseRow
from tcp_proxy import TcpProxies


@pytest.fixture(scope="module", params=BACKENDS)
def relay_settings(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    data_dir = tmp_path_factory.mktemp(f"relay-{request.param}")
    if request.param == "sqlite":
        settings = make_settings(f"sqlite+aiosqlite:///{data_dir / 'relay.db'}", data_dir)
        upgrade(settings)
        yield settings
        return
    postgres_or_skip()
    with PostgresDatabase(prefix="spawnpoint_relay") as pg:
        settings = make_settings(pg.url, data_dir)
        upgrade(settings)
        yield settings


@pytest.fixture(scope="module")
async def relay_db(relay_settings: Settings) -> AsyncIterator[Database]:
    database = Database(relay_settings.sqlalchemy_url, pool_size=10)
    yield database
    await database.dispose()


@pytest.fixture
async def vhost(relay_db: Database) -> AsyncIterator[str]:
    # A test whose relay ran on a shifted clock leaves the lease dated in the future.
    async with relay_db.transaction(write=True) as session:
        await session.execute(delete(LeaderLeaseRow).where(LeaderLeaseRow.name == RELAY_LEASE))
    async with fresh_vhost() as name:
        yield name


RelayFactory = Callable[..., OutboxRelay]


@pytest.fixture
async def make_relay(
    relay_db: Database, relay_settings: Settings, vhost: str
) -> AsyncIterator[RelayFactory]:
    made: list[OutboxRelay] = []

    def make(**options: Any) -> OutboxRelay:
        options.setdefault("url", amqp_url(vhost))
        options.setdefault("lease_seconds", 3.0)
        options.setdefault("reconnect_max_seconds", 0.5)
        relay = OutboxRelay(relay_db, relay_settings, **options)
        made.append(relay)
        return relay

    yield make
    for relay in made:
        await relay.disconnect()
        with contextlib.suppress(Exception):
            await relay.release()


@contextlib.asynccontextmanager
async def running(relay: OutboxRelay) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def test_events_leave_with_their_properties_and_are_marked_after_the_confirm(
    relay_db: Database, vhost: str, make_relay: RelayFactory
) -> None:
    tenant = uuid.uuid4()
    ids = await emit(
        relay_db, [("ws-1", "workspace.pending"), ("ws-2", "spawn.refused")], tenant_id=tenant
    )
    routed_before = published_count("routed")
    async with listening(amqp_url(vhost), EXCHANGE) as listener:
        relay = make_relay(batch_size=50)
        before = utcnow()
        await drain(relay, relay_db, ids)
        await eventually(delivered(listener, ids), what="both events at the listener")
    by_id = {m.message_id: m for m in listener.messages}
    stored = await rows(relay_db, ids)
    for event_id, (key, event_type) in zip(
        ids, [("ws-1", "workspace.pending"), ("ws-2", "spawn.refused")], strict=True
    ):
        message = by_id[str(event_id)]
        assert message.routing_key == event_type
        assert message.type == event_type
        assert message.content_type == "application/json"
        assert message.delivery_mode == 2  # persistent
        assert message.headers == {"key": key, "tenant_id": str(tenant)}
        assert orjson.loads(message.body) == stored[event_id].payload
        row = stored[event_id]
        assert row.published_at is not None
        assert row.published_at >= before
        assert row.attempts == 1
        assert row.last_error is None
    assert listener.counts() == {str(i): 1 for i in ids}
    assert published_count("routed") >= routed_before + 2


def published_count(outcome: str) -> float:
    value = REGISTRY.get_sample_value("spawnpoint_events_published_total", {"outcome": outcome})
    return value or 0.0


async def test_each_keys_events_arrive_in_order_across_batches(
    relay_db: Database, vhost: str, make_relay: RelayFactory
) -> None:
    keys = [f"ws-{uuid.uuid4().hex[:6]}" for _ in range(4)]
    # Interleaved, several of a key per batch of 7, so order must survive rounds and batches.
    plan = [(keys[i % 4 if i % 3 else 0], f"workspace.step{i}") for i in range(60)]
    ids = await emit(relay_db, plan)
    async with listening(amqp_url(vhost), EXCHANGE) as listener:
        await drain(make_relay(batch_size=7), relay_db, ids)
        await eventually(delivered(listener, ids), what="all 60 events")
    arrived = [m.message_id for m in listener.first_seen()]
    for key in keys:
        sent = [str(i) for i, (k, _) in zip(ids, plan, strict=True) if k == key]
        assert [m for m in arrived if m in set(sent)] == sent, key
    assert listener.counts() == {str(i): 1 for i in ids}


async def test_a_refused_event_holds_its_key_back_and_the_other_keys_go_on(
    relay_db: Database, vhost: str, make_relay: RelayFactory
) -> None:
    """A queue that refuses publications when full (reject-publish) makes the broker nack.

    Key `held` has three events routed to that queue, which holds one: the second is
    refused, and the third must not overtake it. The other key's events all leave.
    """
    url = amqp_url(vhost)
    plan = [
        ("held", "narrow.first"),
        ("free", "wide.a"),
        ("held", "narrow.second"),
        ("free", "wide.b"),
        ("held", "narrow.third"),
        ("free", "wide.c"),
    ]
    ids = await emit(relay_db, plan)
    held_ids = [str(i) for i, (k, _) in zip(ids, plan, strict=True) if k == "held"]
    free_ids = [str(i) for i, (k, _) in zip(ids, plan, strict=True) if k == "free"]
    async with (
        listening(url, EXCHANGE) as everything,
        full_after(url, EXCHANGE, binding="narrow.*", length=1),
    ):
        relay = make_relay(batch_size=50)
        await relay.contend()
        await relay.connect()
        outcome = await relay.publish_batch()
        assert [str(i) for i in outcome.failed] == [held_ids[1]]
        assert {str(i) for i in outcome.confirmed} == {held_ids[0], *free_ids}
        assert await relay.mark(outcome)
        state = await rows(relay_db, ids)
        refused = state[uuid.UUID(held_ids[1])]
        assert refused.published_at is None
        assert refused.attempts == 1
        assert refused.last_error is not None
        assert "refused" in refused.last_error
        assert state[uuid.UUID(held_ids[2])].published_at is None  # never sent
        await eventually(
            delivered(everything, [uuid.UUID(i) for i in free_ids]), what="the free key's events"
        )
        assert held_ids[2] not in everything.ids()
    async with listening(url, EXCHANGE) as after:
        # Room again (the narrow queue is gone): once the hold runs out, the key resumes.
        await drain(relay, relay_db, ids)
        await eventually(
            delivered(after, [uuid.UUID(i) for i in held_ids[1:]]), what="the held key's rest"
        )
        assert [m for m in after.ids() if m in held_ids] == held_ids[1:]
    assert (await rows(relay_db, [uuid.UUID(held_ids[1])]))[uuid.UUID(held_ids[1])].attempts == 2


async def test_unroutable_events_are_marked_with_the_reason_not_retried(
    relay_db: Database, vhost: str, make_relay: RelayFactory
) -> None:
    ids = await emit(relay_db, [("ws-9", "nobody.listens")])
    relay = make_relay()
    unroutable_before = published_count("unroutable")
    await drain(relay, relay_db, ids)
    assert published_count("unroutable") >= unroutable_before + 1
    row = (await rows(relay_db, ids))[ids[0]]
    assert row.published_at is not None
    assert row.last_error is not None
    assert row.last_error.startswith("unroutable")


async def test_a_relay_killed_between_publish_and_mark_is_followed_by_a_duplicate_not_a_loss(
    relay_db: Database, vhost: str, make_relay: RelayFactory
) -> None:
    ids = await emit(relay_db, [(f"ws-{n % 3}", "workspace.running") for n in range(12)])
    async with listening(amqp_url(vhost), EXCHANGE) as listener:
        killed = make_relay(owner="relay-killed", lease_seconds=2.0)
        assert await killed.contend()
        await killed.connect()
        outcome = await killed.publish_batch()
        assert len(outcome.confirmed) == 12
        await eventually(delivered(listener, ids), what="the first copies")
        # Killed here: no mark, no release; its lease runs out and another relay takes over.
        await killed.disconnect()
        assert await unpublished(relay_db, ids) == 12
        later = utcnow() + timedelta(seconds=5)
        successor = make_relay(owner="relay-successor", clock=lambda: later)
        await drain(successor, relay_db, ids)
        assert successor.is_leader

        async def twice() -> bool:
            return all(listener.counts()[str(i)] == 2 for i in ids)

        await eventually(twice, what="each event twice, under the same message_id")
    assert len(listener.counts()) == 12  # no other message ids: nothing lost, nothing new
    # Back from the dead, the first relay cannot mark: the lease is someone else's now.
    assert not await killed.mark(outcome)
    assert all(row.attempts == 1 for row in (await rows(relay_db, ids)).values())


async def test_two_relays_elect_one_leader_and_the_other_takes_over_on_stop(
    relay_db: Database, vhost: str, make_relay: RelayFactory
) -> None:
    relays = [make_relay(owner="relay-a", poll_interval=0.05), make_relay(owner="relay-b")]
    stops = {id(r): asyncio.Event() for r in relays}
    both_led = 0

    async def watch() -> None:
        nonlocal both_led
        while True:
            both_led += all(r.is_leader for r in relays)
            await asyncio.sleep(0.002)

    async with listening(amqp_url(vhost), EXCHANGE) as listener:
        watcher = asyncio.create_task(watch())
        tasks = {id(r): asyncio.create_task(r.run(stops[id(r)])) for r in relays}
        try:
            ids = []
            for n in range(10):
                ids += await emit(relay_db, [(f"ws-{n}", "workspace.pending")])

            async def one_leader_and_all_sent() -> bool:
                led = sum(r.is_leader for r in relays) == 1
                return led and await unpublished(relay_db, ids) == 0

            await eventually(one_leader_and_all_sent, what="one leader, every event sent")
            leader = next(r for r in relays if r.is_leader)
            follower = next(r for r in relays if r is not leader)
            stops[id(leader)].set()
            await asyncio.wait_for(tasks[id(leader)], 15)
            assert not leader.is_leader
            more = await emit(relay_db, [("ws-late", "workspace.running")])

            async def taken_over() -> bool:
                return follower.is_leader and await unpublished(relay_db, more) == 0

            await eventually(taken_over, what="the other relay to take over")
            await eventually(delivered(listener, [*ids, *more]), what="every event")
        finally:
            for stop in stops.values():
                stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks.values()), 15)
            watcher.cancel()
    assert both_led == 0
    assert listener.counts() == {str(i): 1 for i in [*ids, *more]}


async def test_prune_deletes_only_events_published_longer_ago_than_the_retention(
    relay_db: Database, relay_settings: Settings, vhost: str, make_relay: RelayFactory
) -> None:
    assert relay_settings.outbox_retention_days == 7
    old = await emit(relay_db, [(f"ws-{n}", "nobody.listens") for n in range(5)])
    await drain(make_relay(), relay_db, old)
    in_two_days = utcnow() + timedelta(days=2)
    recent = await emit(relay_db, [("ws-r", "nobody.listens")])
    await drain(make_relay(owner="relay-2d", clock=lambda: in_two_days), relay_db, recent)
    waiting = await emit(relay_db, [("ws-w", "nobody.listens")])
    eight_days_on = utcnow() + timedelta(days=8)
    pruner = make_relay(owner="relay-8d", clock=lambda: eight_days_on, prune_batch=2)
    # Batches of 2, ten per call, until none is left (earlier tests' events go too).
    pruned = [await pruner.prune(batches=10)]
    while pruned[-1] == 20:
        pruned.append(await pruner.prune(batches=10))
    assert sum(pruned) >= 5
    assert pruned[-1] < 20
    left = await rows(relay_db, [*old, *recent, *waiting])
    assert set(left) == {*recent, *waiting}
    assert await pruner.prune() == 0


async def test_a_commit_nudges_the_idle_relay_at_once(
    relay_db: Database, vhost: str, make_relay: RelayFactory
) -> None:
    # Without the nudge, nothing for ten minutes (the lease is renewed every third of 30).
    relay = make_relay(poll_interval=600, lease_seconds=1800)
    async with listening(amqp_url(vhost), EXCHANGE) as listener, running(relay):
        await eventually(lambda: _true(relay.connected and relay.is_leader), what="connected")
        ids = await emit(relay_db, [("ws-n", "workspace.pending")])
        await eventually(delivered(listener, ids), within=10, what="the nudged relay")


async def _true(value: bool) -> bool:
    return value


def test_no_rabbitmq_url_no_relay(relay_settings: Settings, tmp_path: Path) -> None:
    assert relay_settings.rabbitmq_url is None
    database = Database(relay_settings.sqlalchemy_url)
    assert relay_runners(database, relay_settings, asyncio.Event()) == []
    with pytest.raises(ValueError, match="RABBITMQ_URL"):
        OutboxRelay(database, relay_settings)


async def test_200_spawns_while_the_broker_is_cut_are_each_published_once_after_restore(
    relay_db: Database,
    relay_settings: Settings,
    vhost: str,
    make_relay: RelayFactory,
    tcp_proxy: TcpProxies,
) -> None:
    world = World(settings=relay_settings, database=relay_db)
    org = await world.org(
        max_workspaces=250, max_cpu=250, max_memory_mb=250 * 512, max_storage_gb=250
    )
    app = create_app(relay_settings, database=relay_db)
    proxy = await tcp_proxy("127.0.0.1", 5672)
    relay = make_relay(url=amqp_url(vhost, port=proxy.port), poll_interval=0.1)
    member = org.headers[Role.member]
    body = {"template_id": str(org.template_id)}
    async with (
        listening(amqp_url(vhost), EXCHANGE) as listener,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://spawnpoint.test"
        ) as client,
        running(relay),
    ):
        first = await client.post("/api/spawn", headers=member, json=body)
        assert first.status_code == 202
        first_ids = await tenant_events(relay_db, org.tenant_id)
        await eventually(delivered(listener, first_ids), what="the first spawn's events")

        await proxy.cut()
        await eventually(lambda: _true(not relay.connected), what="the relay to see the cut")
        for _ in range(200):
            response = await client.post("/api/spawn", headers=member, json=body)
            assert response.status_code == 202, response.text
        ids = await tenant_events(relay_db, org.tenant_id)
        assert len(ids) >= 201
        assert await unpublished(relay_db, ids) == len(ids) - len(first_ids)

        await proxy.restore()
        await eventually(delivered(listener, ids), within=30, what="the backlog after restore")
        await eventually(
            lambda: _zero(unpublished(relay_db, ids)), what="every row marked published"
        )
    counts = listener.counts()
    assert {message_id: counts[message_id] for message_id in map(str, ids)} == {
        str(i): 1 for i in ids
    }


async def _zero(value: Any) -> bool:
    return await value == 0


async def tenant_events(database: Database, tenant_id: uuid.UUID) -> list[uuid.UUID]:
    async with database.transaction(write=False) as session:
        statement = (
            select(OutboxEvent.id)
            .where(OutboxEvent.tenant_id == tenant_id)
            .order_by(OutboxEvent.id)
        )
        return list((await session.execute(statement)).scalars())


async def test_readyz_checks_rabbitmq_and_reports_the_relay_lag(
    relay_db: Database, relay_settings: Settings, vhost: str, make_relay: RelayFactory
) -> None:
    settings = relay_settings.model_copy(update={"rabbitmq_url": amqp_url(vhost)})
    an_hour_ago = utcnow() - timedelta(hours=1)
    async with relay_db.unit_of_work(write=True) as uow:
        uow.emit(
            outbox_event(
                tenant_id=None, type="nobody.listens", key="k", payload={}, now=an_hour_ago
            )
        )
    app = create_app(settings, database=relay_db)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://spawnpoint.test") as client:
        body = (await client.get("/readyz")).json()
        assert body["checks"]["rabbitmq"]["status"] == "ok"
        assert body["relay_lag_seconds"] >= 3600
        metrics = (await client.get("/metrics")).text
        lag = [
            line
            for line in metrics.splitlines()
            if line.startswith("spawnpoint_events_relay_lag_seconds ")
        ]
        assert len(lag) == 1
        assert float(lag[0].split()[1]) >= 3600

        relay = make_relay()

        async def all_published() -> bool:
            await relay.step()
            return (await client.get("/readyz")).json()["relay_lag_seconds"] == 0

        await eventually(all_published, within=20, what="the lag to fall to 0")
    plain = create_app(relay_settings, database=relay_db)
    transport = httpx.ASGITransport(app=plain)
    async with httpx.AsyncClient(transport=transport, base_url="http://spawnpoint.test") as client:
        body = (await client.get("/readyz")).json()
        assert "rabbitmq" not in body["checks"]
        assert body["relay_lag_seconds"] is None
        assert "spawnpoint_events_relay_lag_seconds" not in (await client.get("/metrics")).text


async def test_the_worker_runs_the_relay_when_rabbitmq_is_configured(
    relay_db: Database, relay_settings: Settings, vhost: str
) -> None:
    settings = relay_settings.model_copy(update={"rabbitmq_url": amqp_url(vhost)})
    stop = asyncio.Event()
    async with listening(amqp_url(vhost), EXCHANGE) as listener:
        worker = asyncio.create_task(
            run_worker_in_process(relay_db, settings, default_registry(settings), stop, tasks=[])
        )
        try:
            ids = await emit(relay_db, [("ws-w", "workspace.pending")])
            await eventually(delivered(listener, ids), what="the worker's relay to publish")
        finally:
            stop.set()
            await asyncio.wait_for(worker, 30)
    async with relay_db.transaction(write=False) as session:
        lease = await session.get(LeaderLeaseRow, RELAY_LEASE)
    assert lease is not None
    assert lease.expires_at <= utcnow()  # released on the way out


async def test_spawnpoint_events_relay_publishes_until_sigterm(
    relay_db: Database, relay_settings: Settings, vhost: str, tmp_path: Path
) -> None:
    async with listening(amqp_url(vhost), EXCHANGE) as listener:
        process = await relay_process(
            relay_settings.sqlalchemy_url, vhost, tmp_path, output=asyncio.subprocess.PIPE
        )
        try:
            ids = await emit(
                relay_db, [("ws-c", "workspace.pending"), ("ws-c", "workspace.running")]
            )
            await eventually(delivered(listener, ids), what="the relay process to publish")
        finally:
            process.send_signal(signal.SIGTERM)
            output, _ = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, output.decode()
    assert "took leadership" in output.decode()
    assert [m.message_id for m in listener.first_seen() if m.message_id in set(map(str, ids))] == [
        str(i) for i in ids
    ]
    async with relay_db.transaction(write=False) as session:
        lease = await session.get(LeaderLeaseRow, RELAY_LEASE)
    assert lease is not None
    assert lease.expires_at <= utcnow()


async def test_a_held_key_stays_in_order_while_batches_go_out_back_to_back(
    relay_db: Database, vhost: str, make_relay: RelayFactory
) -> None:
    """Batches of 4 (each read while the one before is published): the key the broker keeps
    refusing is skipped in every later batch until it is accepted, then resumes in order."""
    url = amqp_url(vhost)
    plan = [
        ("held" if n % 5 == 0 else f"free-{n % 3}", f"narrow.{n}" if n % 5 == 0 else f"wide.{n}")
        for n in range(40)
    ]
    ids = await emit(relay_db, plan)
    held = [i for i, (k, _) in zip(ids, plan, strict=True) if k == "held"]
    free = [i for i, (k, _) in zip(ids, plan, strict=True) if k != "held"]
    relay = make_relay(batch_size=4)
    async with listening(url, EXCHANGE) as everything:
        async with full_after(url, EXCHANGE, binding="narrow.*", length=1):

            async def free_keys_out() -> bool:
                await relay.step()
                return await unpublished(relay_db, free) == 0

            await eventually(free_keys_out, within=30, what="every free key's events")
            # The first held event filled the narrow queue; the second keeps being refused
            # (each refused copy still reaches the wide queue), and none after it was tried.
            assert await unpublished(relay_db, held) == len(held) - 1
            assert not {str(i) for i in held[2:]} & set(everything.ids())
        await drain(relay, relay_db, ids)
        await eventually(delivered(everything, ids), what="every event")
    arrived = [m.message_id for m in everything.first_seen()]
    for key in {k for k, _ in plan}:
        sent = [str(i) for i, (k, _) in zip(ids, plan, strict=True) if k == key]
        assert [m for m in arrived if m in set(sent)] == sent, key
    refused = (await rows(relay_db, [held[1]]))[held[1]]
    assert refused.attempts >= 2
