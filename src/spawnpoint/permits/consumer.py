"""The permit consumer: permit events from RabbitMQ applied exactly once, acked after commit.

Run by every worker when RABBITMQ_URL is set (`spawnpoint worker`, the in-process worker of
`spawnpoint serve`) and alone by `spawnpoint events consume`. At start-up it declares, all
durable:

- RABBITMQ_QUEUE (a quorum queue by default), bound to RABBITMQ_PERMITS_EXCHANGE (a topic
  exchange) with RABBITMQ_PERMITS_BINDING_KEY;
- `<queue>.dead-letter`: messages no retry can apply, each with the reason in its
  `x-death-reason` header (and an audit entry);
- `<queue>.parked`: stage changes for permits that have no workspace yet; each waits there
  RABBITMQ_PARK_SECONDS (its expiration), then the broker dead-letters it back to the queue.

Each message is handled in its own task (at most RABBITMQ_PREFETCH at once: the broker
sends no more unacknowledged ones) and acked only after its effect, its inbox row, its
outbox events and audit entry have committed together (`PermitService`); a crash before the
ack means a redelivery, which the inbox row turns into a no-op. Outcomes:

- applied, refused (quota, policy, budget: a `permit.refused` outbox event), ignored
  (already handled, older than the permit's last event, nothing to do): ack;
- invalid (no `message_id`, not JSON, a schema violation, an unknown tenant, template or
  stage): to the dead-letter queue at once;
- parked: to the parking queue, counted in `x-spawnpoint-parks`; after RABBITMQ_MAX_PARKS
  to the dead-letter queue;
- the effect failed: handled again after a backoff, as a copy at the end of the queue with
  `x-spawnpoint-failures` counting; after RABBITMQ_MAX_DELIVERIES failures (counting
  redeliveries after a lost connection, the quorum queue's `x-delivery-count`) to the
  dead-letter queue. An unreachable database is no failure of the message: it is held and
  tried again until the database answers.

A lost connection (a broker restart, a dropped link) is reopened with a doubling backoff
from half a second up to RABBITMQ_RECONNECT_MAX_SECONDS, as is the first one; each new
connection gets a new channel, its prefetch, the declarations and the consumer, and the
backoff starts over once it consumes again. Deliveries of the lost connection that were not
acked are redelivered by the broker; those whose effect had committed are no-ops then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
)
from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from spawnpoint.config import Settings
from spawnpoint.db import Database, first_line, is_unavailable
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.routing import scan
from spawnpoint.kit.schemas import json_field_limit
from spawnpoint.models.permits import MESSAGE_ID_LENGTH, InboxOutcome
from spawnpoint.permits.repository import PermitRows
from spawnpoint.permits.schemas import PermitEvent
from spawnpoint.permits.service import (
    RETRIES,
    Handled,
    InvalidMessage,
    Parked,
    PermitService,
    Retry,
    dead_letter_entry,
)
from spawnpoint.policy.engine import PolicyEngine, build_policy_engine

log = logging.getLogger("spawnpoint.permits.consumer")

FAILURES = "x-spawnpoint-failures"
PARKS = "x-spawnpoint-parks"
DEATH_REASON = "x-death-reason"
DELIVERY_COUNT = "x-delivery-count"
# Backoff of a failed effect before it is tried again, and of an unreachable database.
RETRY_BASE_SECONDS = 0.25
RETRY_MAX_SECONDS = 10.0
FIRST_CONNECT_SECONDS = 0.5

PERMITS_CONSUMED = Counter(
    "spawnpoint_permit_events_consumed",
    "Permit events handled and acknowledged, by type and outcome (applied, refused, "
    "ignored, parked, dead_lettered).",
    ["type", "outcome"],
)
PERMITS_DEAD_LETTERED = Counter(
    "spawnpoint_permit_events_dead_lettered",
    "Permit events sent to the dead-letter queue, by why: invalid, failed (the effect kept "
    "failing) or parked (a stage change whose permit never got a workspace).",
    ["reason"],
)
KNOWN_TYPES = frozenset(
    {"permit.approved", "permit.stage_changed", "permit.revoked", "permit.closed"}
)


def dead_letter_queue(queue: str) -> str:
    return f"{queue}.dead-letter"


def parking_queue(queue: str) -> str:
    return f"{queue}.parked"


def _count(headers: Mapping[str, Any], name: str) -> int:
    value = headers.get(name)
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return max(value, 0)
    if isinstance(value, bytes | str):
        with contextlib.suppress(ValueError):
            return max(int(value), 0)
    return 0


def _type_label(value: object) -> str:
    return value if isinstance(value, str) and value in KNOWN_TYPES else "unknown"


@dataclass(frozen=True)
class Invalid:
    """Why a message cannot be applied, and what is known of it."""

    reason: str
    tenant_id: uuid.UUID | None = None
    type: str | None = None
    permit_id: str | None = None


def parse(body: bytes, *, max_bytes: int, max_depth: int) -> PermitEvent | Invalid:
    """The message body as a `PermitEvent`, or why it is not one."""
    if len(body) > max_bytes:
        return Invalid(f"the body is {len(body)} bytes; at most {max_bytes} are accepted")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Invalid(f"the body is not JSON: {exc}")
    if not isinstance(document, dict):
        return Invalid("the body is not a JSON object")
    errors, _ = scan(document, max_depth=max_depth)
    raw_type, raw_permit = document.get("type"), document.get("permit_id")
    kind = raw_type if isinstance(raw_type, str) else None
    permit_id = raw_permit if isinstance(raw_permit, str) else None
    if errors:
        reason = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors)
        return Invalid(reason, type=kind, permit_id=permit_id)
    try:
        return PermitEvent.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        return Invalid(f"schema violation: {problems}", type=kind, permit_id=permit_id)


class PermitConsumer:
    """Consumes RABBITMQ_QUEUE until `stop` is set (see the module's docstring).

    Args:
        database: Where permits, workspaces, the inbox and the outbox live.
        settings: RABBITMQ_* settings; `rabbitmq_url` must be set.
        policy: The spawn policy engine; default: one built from `settings` (and closed).
    """

    def __init__(
        self, database: Database, settings: Settings, *, policy: PolicyEngine | None = None
    ) -> None:
        if not settings.rabbitmq_url:
            raise ValueError("the permit consumer needs RABBITMQ_URL")
        self.database = database
        self.settings = settings
        self.url = settings.rabbitmq_url
        self._own_policy = policy is None
        self.policy = policy or build_policy_engine(
            settings, timeout=settings.policy_timeout_seconds
        )
        self.queue_name = settings.rabbitmq_queue
        # Messages whose transactions run at once: the rest of the prefetch waits here, not
        # for a connection of the pool (beyond it, each checkout would open a new one),
        # and the job worker sharing the pool keeps its share. Approvals for one tenant
        # queue on its lock anyway.
        self.slots = max(1, min(settings.rabbitmq_prefetch, settings.database_pool_size // 2))
        self._slots = asyncio.Semaphore(self.slots)
        self.ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._channel: AbstractChannel | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, declare, consume until `stop`, reconnecting with a doubling backoff
        whenever the connection is lost; then finish in-flight work."""
        delay = FIRST_CONNECT_SECONDS
        try:
            while not stop.is_set():
                if await self._consume_once(stop):
                    delay = FIRST_CONNECT_SECONDS  # it consumed: a later loss starts over
                if stop.is_set():
                    break
                log.warning("RabbitMQ connection lost or refused; next try in %.1f s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, self.settings.rabbitmq_reconnect_max_seconds)
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._close_policy()
            log.info("permit consumer stopped")

    async def _consume_once(self, stop: asyncio.Event) -> bool:
        """One connection's life: open it, consume until `stop` or until it is lost.
        Returns whether it got as far as consuming."""
        try:
            connection = await aio_pika.connect(self.url, timeout=10.0)
        except Exception as exc:  # any failure to connect: the caller tries again
            log.warning("RabbitMQ unreachable: %s", first_line(exc))
            return False
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        consuming = False
        try:
            channel = await connection.channel(publisher_confirms=True)
            self._channel = channel
            await channel.set_qos(prefetch_count=self.settings.rabbitmq_prefetch)
            queue = await self.declare(channel)
            tag = await queue.consume(self._on_message)
            consuming = True
            log.info(
                "consuming permit events from %s (prefetch %d, %d at once)",
                self.queue_name,
                self.settings.rabbitmq_prefetch,
                self.slots,
            )
            self.ready.set()
            stopping = asyncio.ensure_future(stop.wait())
            losing = asyncio.ensure_future(lost.wait())
            try:
                await asyncio.wait({stopping, losing}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                losing.cancel()
            if stop.is_set() and not lost.is_set():
                with contextlib.suppress(Exception):
                    await queue.cancel(tag)
                if self._tasks:
                    # Unfinished ones are redelivered once the connection closes.
                    await asyncio.wait(set(self._tasks), timeout=10.0)
        except Exception as exc:  # the connection broke while being set up
            log.warning("RabbitMQ connection failed: %s", first_line(exc))
        finally:
            self.ready.clear()
            with contextlib.suppress(Exception):
                await connection.close()
        return consuming

    async def _close_policy(self) -> None:
        if self._own_policy:
            await self.policy.aclose()

    async def declare(self, channel: AbstractChannel) -> AbstractQueue:
        """Declare the queue, its dead-letter and parking queues and the binding."""
        name = self.queue_name
        queue = await channel.declare_queue(
            name, durable=True, arguments={"x-queue-type": self.settings.rabbitmq_queue_type}
        )
        await channel.declare_queue(dead_letter_queue(name), durable=True)
        await channel.declare_queue(
            parking_queue(name),
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": name},
        )
        if self.settings.rabbitmq_permits_exchange:
            exchange = await channel.declare_exchange(
                self.settings.rabbitmq_permits_exchange,
                aio_pika.ExchangeType.TOPIC,
                durable=True,
            )
            await queue.bind(exchange, routing_key=self.settings.rabbitmq_permits_binding_key)
        return queue

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        token = json_field_limit.set(self.settings.max_json_field_bytes)
        try:
            await self.process(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("permit event %s could not be settled", message.message_id)
            # Back to the queue after a pause (the quorum queue counts the redelivery in
            # x-delivery-count, so a message that always ends here is dead-lettered); when
            # the channel is gone, the broker redelivers it anyway.
            await asyncio.sleep(RETRY_MAX_SECONDS / 10)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        finally:
            json_field_limit.reset(token)
            if task is not None:
                self._tasks.discard(task)

    async def process(self, message: AbstractIncomingMessage) -> None:
        """Handle one delivery to its end: acked, parked, retried or dead-lettered."""
        headers = dict(message.headers or {})
        message_id = message.message_id
        event = parse(
            message.body,
            max_bytes=self.settings.max_body_bytes,
            max_depth=self.settings.max_json_depth,
        )
        if not message_id or len(message_id) > MESSAGE_ID_LENGTH:
            what = "no message_id" if not message_id else "a message_id over 255 characters"
            known = event if isinstance(event, Invalid) else self._invalid(event, "")
            invalid = Invalid(
                f"the message has {what}",
                tenant_id=known.tenant_id,
                type=known.type,
                permit_id=known.permit_id,
            )
            await self._dead_letter(message, invalid, "invalid", None)
            return
        if isinstance(event, Invalid):
            await self._dead_letter(message, event, "invalid", message_id)
            return
        failures = _count(headers, FAILURES) + _count(headers, DELIVERY_COUNT)
        if failures >= self.settings.rabbitmq_max_deliveries:
            reason = f"delivered {failures} times without an outcome"
            await self._dead_letter(message, self._invalid(event, reason), "failed", message_id)
            return
        delay = RETRY_BASE_SECONDS
        while True:
            try:
                handled = await self._apply(message_id, event)
            except InvalidMessage as exc:
                await self._dead_letter(
                    message, self._invalid(event, str(exc)), "invalid", message_id
                )
                return
            except Parked as exc:
                await self._park(message, event, headers, str(exc), message_id)
                return
            except Exception as exc:
                if is_unavailable(exc):
                    # Not the message's fault: hold it until the database is back.
                    log.warning(
                        "database unavailable (%s); permit event %s waits %.1f s",
                        first_line(exc),
                        message_id,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_SECONDS)
                    continue
                await self._failed(message, event, headers, failures + 1, exc, message_id)
                return
            break
        await message.ack()
        PERMITS_CONSUMED.labels(event.type.value, handled.outcome.value).inc()
        log.info(
            "permit event %s: %s (%s)",
            event.type.value,
            handled.outcome.value,
            handled.detail,
            extra={"permit_id": event.permit_id, "message_id": message_id},
        )

    @staticmethod
    def _invalid(event: PermitEvent, reason: str) -> Invalid:
        return Invalid(reason, event.tenant_id, event.type.value, event.permit_id)

    async def _apply(self, message_id: str, event: PermitEvent) -> Handled:
        for attempt in range(1, RETRIES + 1):
            try:
                async with self._slots, self.database.unit_of_work(write=True) as uow:
                    service = PermitService(PermitRows(uow.session), policy=self.policy)
                    return await service.handle(message_id=message_id, event=event, attempt=attempt)
            except (Retry, IntegrityError):
                # Another consumer created the permit, its workspace or this message's
                # inbox row meanwhile: the next attempt sees what it wrote.
                if attempt == RETRIES:
                    raise
        raise AssertionError("unreachable")

    async def _publish(
        self,
        message: AbstractIncomingMessage,
        routing_key: str,
        headers: dict[str, Any],
        **extra: Any,
    ) -> None:
        channel = self._channel
        if channel is None:
            raise RuntimeError("the consumer has no channel")
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            timestamp=message.timestamp,
            type=message.type,
            app_id=message.app_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            **extra,
        )
        # Publisher confirms: this returns once the broker has the copy.
        await channel.default_exchange.publish(copy, routing_key=routing_key)

    async def _failed(
        self,
        message: AbstractIncomingMessage,
        event: PermitEvent,
        headers: dict[str, Any],
        failures: int,
        exc: Exception,
        message_id: str,
    ) -> None:
        reason = f"{type(exc).__name__}: {first_line(exc)}"[:500]
        if failures >= self.settings.rabbitmq_max_deliveries:
            log.error("permit event %s failed %d times: %s", message_id, failures, reason)
            await self._dead_letter(
                message,
                self._invalid(event, f"failed {failures} times; last: {reason}"),
                "failed",
                message_id,
            )
            return
        log.warning("permit event %s failed (%d): %s; tried again", message_id, failures, reason)
        await asyncio.sleep(min(RETRY_BASE_SECONDS * 2**failures, RETRY_MAX_SECONDS))
        retry_headers = {k: v for k, v in headers.items() if k != DELIVERY_COUNT}
        retry_headers[FAILURES] = failures
        retry_headers["x-spawnpoint-last-error"] = reason
        await self._publish(message, self.queue_name, retry_headers)
        await message.ack()

    async def _park(
        self,
        message: AbstractIncomingMessage,
        event: PermitEvent,
        headers: dict[str, Any],
        reason: str,
        message_id: str,
    ) -> None:
        parks = _count(headers, PARKS) + 1
        if parks > self.settings.rabbitmq_max_parks:
            await self._dead_letter(
                message,
                self._invalid(event, f"parked {parks - 1} times: {reason}"),
                "parked",
                message_id,
            )
            return
        park_headers = {k: v for k, v in headers.items() if k != DELIVERY_COUNT}
        park_headers[PARKS] = parks
        await self._publish(
            message,
            parking_queue(self.queue_name),
            park_headers,
            expiration=self.settings.rabbitmq_park_seconds,
        )
        await message.ack()
        PERMITS_CONSUMED.labels(event.type.value, "parked").inc()
        log.info(
            "permit event %s parked (%d): %s",
            message_id,
            parks,
            reason,
            extra={"permit_id": event.permit_id, "message_id": message_id},
        )

    async def _dead_letter(
        self,
        message: AbstractIncomingMessage,
        invalid: Invalid,
        why: str,
        message_id: str | None,
    ) -> None:
        """Record the message as dead-lettered (inbox row, audit entry), then move it."""
        await self._record_dead_letter(invalid, message_id)
        headers = {k: v for k, v in (message.headers or {}).items() if k != DELIVERY_COUNT}
        headers[DEATH_REASON] = invalid.reason[:1000]
        headers["x-death-queue"] = self.queue_name
        headers["x-death-at"] = utcnow().isoformat()
        await self._publish(message, dead_letter_queue(self.queue_name), headers)
        await message.ack()
        PERMITS_DEAD_LETTERED.labels(why).inc()
        PERMITS_CONSUMED.labels(_type_label(invalid.type), "dead_lettered").inc()
        log.warning(
            "permit event %s dead-lettered: %s",
            message_id,
            invalid.reason,
            extra={"permit_id": invalid.permit_id, "message_id": message_id},
        )

    async def _record_dead_letter(self, invalid: Invalid, message_id: str | None) -> None:
        delay = RETRY_BASE_SECONDS
        while True:
            try:
                async with self._slots, self.database.unit_of_work(write=True) as uow:
                    rows = PermitRows(uow.session)
                    tenant_id = invalid.tenant_id
                    if (
                        tenant_id is not None
                        and (await rows.tenant_and_account(tenant_id))[0] is None
                    ):
                        tenant_id = None  # an unknown tenant has no chain: the platform's
                    if message_id is not None:
                        if await rows.handled(message_id) is not None:
                            return  # recorded by an earlier delivery; only the move is left
                        await rows.record(
                            message_id=message_id,
                            outcome=InboxOutcome.dead_lettered.value,
                            type=invalid.type[:100] if invalid.type else None,
                            permit_id=invalid.permit_id[:200] if invalid.permit_id else None,
                            tenant_id=invalid.tenant_id,
                            detail=invalid.reason[:2000],
                        )
                    uow.record(
                        dead_letter_entry(
                            tenant_id=tenant_id,
                            message_id=message_id,
                            reason=invalid.reason,
                            event_type=invalid.type,
                            permit_id=invalid.permit_id,
                        )
                    )
                return
            except IntegrityError:
                if message_id is None:
                    raise
                continue  # another delivery recorded it first; the next look finds it
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)


async def run_consumer(
    database: Database,
    settings: Settings,
    stop: asyncio.Event,
    *,
    ready: asyncio.Event | None = None,
) -> None:
    """Run a `PermitConsumer` until `stop` is set (`ready` is set once it consumes)."""
    consumer = PermitConsumer(database, settings)
    if ready is not None:
        consumer.ready = ready
    await consumer.run(stop)


async def serve_consumer(settings: Settings) -> None:
    """`spawnpoint events consume`: the consumer alone, until SIGTERM or SIGINT.

    The jobs it enqueues (provision, destroy) are run by the workers of the deployment.
    """
    from spawnpoint.workspaces.status_cache import detach_status_cache, install_status_cache

    database = Database(
        settings.sqlalchemy_url,
        pool_size=max(2, min(settings.database_pool_size, settings.rabbitmq_prefetch)),
    )
    # Transitions written here update the permit status cache too (with REDIS_URL).
    install_status_cache(database, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await PermitConsumer(database, settings).run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await detach_status_cache(database)
        await database.dispose()
