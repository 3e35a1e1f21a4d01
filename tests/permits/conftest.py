"""Permit consumer tests: a vhost per test, the consumer and a worker in the test's loop."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection
from pamqp import body as amqp_body
from pamqp import commands, frame
from pamqp import header as amqp_header
from pamqp.exceptions import UnmarshalingException
from sqlalchemy import select

from conftest import DRY_RUN_SPEC
from events.broker import amqp_url, fresh_vhost
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.jobs.queue import Backoff
from spawnpoint.jobs.registry import HandlerRegistry
from spawnpoint.jobs.worker import Worker
from spawnpoint.kit.clock import utcnow
from spawnpoint.models import InboxMessage, Template, TemplateVersion, Workspace
from spawnpoint.permits.consumer import PermitConsumer, dead_letter_queue, parking_queue
from spawnpoint.policy.engine import PolicyEngine
from spawnpoint.provisioners import ProvisionContext, ProvisionerRegistry, ProvisionResult
from spawnpoint.provisioners.dry_run import DryRunProvisioner
from spawnpoint.workspaces.handlers import WorkspaceHandlers

EXCHANGE = "spe.permits"


class RecordingProvisioner(DryRunProvisioner):
    """dry-run, keeping the spec each provisioning got in the driver state."""

    name: ClassVar[str] = "recording"

    async def provision(self, ctx: ProvisionContext) -> ProvisionResult:
        specs = [*ctx.state.get("specs", []), ctx.spec]
        return ProvisionResult(
            state={**ctx.state, "phase": "running", "specs": specs},
            connection={"url": None, "dry_run": True},
        )


@dataclass
class Broker:
    """The test's vhost, with a publisher connection."""

    url: str
    connection: AbstractConnection
    channel: AbstractChannel
    queue: str = "spe.workspace.events"
    sent: list[str] = field(default_factory=list)

    async def publish(
        self,
        body: dict[str, Any] | bytes,
        *,
        message_id: str | None = "",
        headers: dict[str, Any] | None = None,
    ) -> str:
        """Publish to the permits exchange (routing key: the type); returns the message id."""
        if message_id == "":
            message_id = f"msg-{uuid.uuid4().hex}"
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        kind = body.get("type", "x") if isinstance(body, dict) else "x"
        exchange = await self.channel.get_exchange(EXCHANGE)
        await exchange.publish(
            aio_pika.Message(
                raw,
                message_id=message_id,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                headers=headers or {},
            ),
            routing_key=str(kind),
        )
        self.sent.append(str(message_id))
        return str(message_id)

    async def declare(self) -> None:
        """Declare what the consumer declares (same arguments), so publications are routed
        before a consumer in another task or process has started."""
        queue = await self.channel.declare_queue(
            self.queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        exchange = await self.channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await queue.bind(exchange, routing_key="#")

    async def drain(self, queue: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Take every message now in `queue`."""
        declared = await self.channel.get_queue(queue, ensure=True)
        taken = []
        while (message := await declared.get(no_ack=True, fail=False)) is not None:
            taken.append(message)
        return taken

    async def depth(self, queue: str) -> int:
        declared = await self.channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count
        return int(count or 0)

    def dead_letters(self) -> str:
        return dead_letter_queue(self.queue)

    def parked(self) -> str:
        return parking_queue(self.queue)


async def publish_without_message_id(url: str, routing_key: str, payload: bytes) -> None:
    """Publish as a client that sets no `message_id` (aiormq always sets one), in raw AMQP."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 5672)
    buffer = b""

    async def read() -> Any:
        nonlocal buffer
        while True:
            try:
                used, _, value = frame.unmarshal(buffer)
            except UnmarshalingException:
                buffer += await reader.read(65536)
                continue
            buffer = buffer[used:]
            return value

    try:
        writer.write(frame.marshal(amqp_header.ProtocolHeader(), 0))
        await read()  # Connection.Start
        credentials = f"\0{parts.username}\0{parts.password}"
        writer.write(
            frame.marshal(
                commands.Connection.StartOk(
                    client_properties={}, mechanism="PLAIN", response=credentials
                ),
                0,
            )
        )
        tune = await read()
        writer.write(
            frame.marshal(
                commands.Connection.TuneOk(
                    channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0
                ),
                0,
            )
        )
        writer.write(frame.marshal(commands.Connection.Open(virtual_host=parts.path[1:]), 0))
        await read()  # Connection.OpenOk
        writer.write(frame.marshal(commands.Channel.Open(), 1))
        await read()  # Channel.OpenOk
        properties = commands.Basic.Properties(content_type="application/json", delivery_mode=2)
        writer.write(
            frame.marshal(commands.Basic.Publish(exchange=EXCHANGE, routing_key=routing_key), 1)
        )
        writer.write(frame.marshal(amqp_header.ContentHeader(0, len(payload), properties), 1))
        writer.write(frame.marshal(amqp_body.ContentBody(payload), 1))
        writer.write(
            frame.marshal(
                commands.Channel.Close(reply_code=200, reply_text="done", class_id=0, method_id=0),
                1,
            )
        )
        await read()  # Channel.CloseOk: the publication reached the broker
    finally:
        writer.close()


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    async with fresh_vhost() as vhost:
        url = amqp_url(vhost)
        connection = await aio_pika.connect(url)
        try:
            channel = await connection.channel(publisher_confirms=True)
            yield Broker(url=url, connection=connection, channel=channel)
        finally:
            await connection.close()


StartConsumer = Callable[..., Awaitable[PermitConsumer]]


@pytest.fixture
async def start_consumer(
    backend_settings: Settings, database: Database, broker: Broker
) -> AsyncIterator[StartConsumer]:
    """Start a consumer on the test's vhost (quick parking); stopped at teardown."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start(*, policy: PolicyEngine | None = None, **overrides: Any) -> PermitConsumer:
        values: dict[str, Any] = {
            "rabbitmq_url": broker.url,
            "rabbitmq_park_seconds": 0.2,
            "rabbitmq_max_deliveries": 3,
            **overrides,
        }
        settings = backend_settings.model_copy(update=values)
        consumer = PermitConsumer(database, settings, policy=policy)
        tasks.append(asyncio.create_task(consumer.run(stop)))
        await asyncio.wait_for(consumer.ready.wait(), 20)
        return consumer

    yield start
    stop.set()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


@pytest.fixture
async def worker(backend_settings: Settings, database: Database) -> AsyncIterator[None]:
    """A job worker with the installed drivers and `recording` (no scheduler, fast retries)."""
    provisioners = ProvisionerRegistry.from_entry_points()
    provisioners.add(RecordingProvisioner, replace=True)
    handlers = WorkspaceHandlers(provisioners)
    registry = HandlerRegistry()
    handlers.register(registry)
    stop = asyncio.Event()
    task = asyncio.create_task(
        Worker(
            database,
            backend_settings,
            registry,
            concurrency=8,
            lease_seconds=10,
            poll_interval=0.05,
            grace_seconds=5,
            backoff=Backoff(base_seconds=0.01, cap_seconds=0.05),
        ).run(stop)
    )
    yield
    stop.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)
    await handlers.aclose()


async def staged_template(
    database: Database, tenant_id: uuid.UUID, *, provisioner: str = "recording"
) -> uuid.UUID:
    """A template of `tenant_id` with stages `intake` (no egress) and `analysis`."""
    spec = {
        **DRY_RUN_SPEC,
        "env": {"MODE": "base"},
        "stages": {
            "intake": {"egress": [], "storage_gb": 1},
            "analysis": {
                "egress": [{"to": "10.20.0.0/16", "ports": [443]}],
                "storage_gb": 5,
                "env": {"MODE": "analysis"},
            },
        },
    }
    async with database.transaction(write=True) as session:
        template = Template(
            tenant_id=tenant_id, name=f"staged-{uuid.uuid4().hex[:8]}", provisioner=provisioner
        )
        session.add(template)
        await session.flush()
        session.add(
            TemplateVersion(
                template_id=template.id,
                version=1,
                tenant_id=tenant_id,
                provisioner=provisioner,
                spec=spec,
            )
        )
        return template.id


def permit_event(
    kind: str,
    *,
    permit_id: str,
    tenant_id: uuid.UUID,
    template_id: uuid.UUID,
    at: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "type": kind,
        "permit_id": permit_id,
        "tenant_id": str(tenant_id),
        "template_id": str(template_id),
        "occurred_at": (at or utcnow()).isoformat(),
        **extra,
    }


def new_permit() -> str:
    return f"permit-{uuid.uuid4().hex[:12]}"


def later(base: datetime, seconds: float) -> datetime:
    return base + timedelta(seconds=seconds)


async def workspace_of(
    database: Database, tenant_id: uuid.UUID, permit_id: str
) -> Workspace | None:
    async with database.transaction(write=False) as session:
        found: Workspace | None = (
            await session.execute(
                select(Workspace).where(
                    Workspace.tenant_id == tenant_id, Workspace.external_ref == permit_id
                )
            )
        ).scalar_one_or_none()
        return found


async def inbox_outcome(database: Database, message_id: str) -> str | None:
    async with database.transaction(write=False) as session:
        found: str | None = (
            await session.execute(
                select(InboxMessage.outcome).where(InboxMessage.message_id == message_id)
            )
        ).scalar_one_or_none()
        return found
