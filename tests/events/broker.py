"""RabbitMQ for tests: a vhost of the test's own (rabbitmqctl), and a listener on the exchange.

The management plugin is not enabled on this machine's broker, so vhosts are made with
`rabbitmqctl` (about a second per call, run in a thread) and deleted after the test,
which drops every exchange, queue and message in them.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from conftest import IN_CI

RABBITMQ_HOST = "127.0.0.1"
RABBITMQ_PORT = 5672
# The relay's default RABBITMQ_EVENTS_EXCHANGE.
EXCHANGE = "spawnpoint.events"


def _ctl(*args: str) -> None:
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr or done.stdout}")


def _rabbitmqctl_or_skip() -> None:
    if shutil.which("rabbitmqctl") is None:
        message = "rabbitmqctl is not installed: cannot make a vhost per test"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: RabbitMQ tests are mandatory)", pytrace=False)
        pytest.skip(message)


def amqp_url(vhost: str, *, port: int = RABBITMQ_PORT) -> str:
    return f"amqp://guest:guest@{RABBITMQ_HOST}:{port}/{vhost}"


@asynccontextmanager
async def fresh_vhost() -> AsyncIterator[str]:
    """A new vhost guest may use; deleted, with everything in it, on exit."""
    _rabbitmqctl_or_skip()
    name = f"spawnpoint-test-{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(_ctl, "add_vhost", name)
    try:
        await asyncio.to_thread(_ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        await asyncio.to_thread(_ctl, "delete_vhost", name)


@dataclass
class Received:
    message_id: str
    routing_key: str
    body: bytes
    content_type: str | None
    delivery_mode: int
    headers: dict[str, Any]
    type: str | None


@dataclass
class Listener:
    """Every message the exchange routes to a queue bound with `binding` ("#": all)."""

    messages: list[Received] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [m.message_id for m in self.messages]

    def counts(self) -> Counter[str]:
        return Counter(self.ids())

    def first_seen(self) -> list[Received]:
        """Each message once, in the order of its first delivery (as a deduping consumer)."""
        seen: set[str] = set()
        found = []
        for message in self.messages:
            if message.message_id not in seen:
                seen.add(message.message_id)
                found.append(message)
        return found

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.messages.append(
            Received(
                message_id=str(message.message_id),
                routing_key=str(message.routing_key),
                body=message.body,
                content_type=message.content_type,
                delivery_mode=int(message.delivery_mode or 0),
                headers=dict(message.headers or {}),
                type=message.type,
            )
        )


@asynccontextmanager
async def listening(
    url: str, exchange: str, *, binding: str = "#", queue_arguments: dict[str, Any] | None = None
) -> AsyncIterator[Listener]:
    """Declare `exchange` (topic, durable, as the relay does) and consume a queue bound to it."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_exchange(
            exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, arguments=queue_arguments)
        await queue.bind(declared, binding)
        listener = Listener()
        await queue.consume(listener.on_message, no_ack=True)
        yield listener
    finally:
        await connection.close()


@asynccontextmanager
async def full_after(url: str, exchange: str, *, binding: str, length: int) -> AsyncIterator[None]:
    """A queue bound to `exchange` that nobody consumes and that refuses publications
    (`reject-publish`: the broker nacks them) once it holds `length` messages; gone on exit."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_exchange(
            exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(
            exclusive=True, arguments={"x-max-length": length, "x-overflow": "reject-publish"}
        )
        await queue.bind(declared, binding)
        yield
    finally:
        await connection.close()
