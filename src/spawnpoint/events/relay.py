"""The outbox relay: committed outbox rows leave on a RabbitMQ topic exchange.

One relay leads at a time (the `events.relay` row of `leader_leases`, as the scheduler's
lease); every worker process runs one when RABBITMQ_URL is set, and the others wait to take
over. The leader reads the oldest unpublished rows and publishes them to
RABBITMQ_EVENTS_EXCHANGE (topic, durable) with publisher confirms and `mandatory`:
routing key = event type, `message_id` = outbox id, persistent, `application/json`, the
body being the payload the change committed. Only once the broker has confirmed a batch are
its rows marked published, in one statement, in a unit of work that also renews the lease.

- Delivery is at least once. A relay that dies between the confirm and the mark leaves its
  rows unpublished, and the next leader sends them again under the same `message_id`:
  consumers dedupe on it.
- Order per key (a workspace's events): a batch goes out in rounds, each round at most one
  event per key, the next round after the broker confirmed the previous one. An event the
  broker refuses (a nack) holds its key back, with backoff, until it is accepted, so no
  later event of that key overtakes it; the other keys go on.
- An unroutable event (no queue bound for its type) is returned by the broker: it is
  marked published with `last_error` saying so and counted, rather than retried for ever.
- Broker down: API commits go on (they only write rows); the relay reconnects with backoff
  and the backlog drains when the broker is back.
- Woken right after each commit that wrote an outbox row in this process (`on_commit`
  nudge, `Database.outbox_nudges`), and otherwise every `poll_interval`.
- Rows published more than OUTBOX_RETENTION_DAYS ago are deleted in batches by the leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.events.repository import PendingEvent, RelayRepository
from spawnpoint.jobs.outages import Outage
from spawnpoint.jobs.queue import new_owner_id
from spawnpoint.jobs.scheduler import LeaderLease
from spawnpoint.kit.clock import utcnow
from spawnpoint.kit.metrics import EVENTS_PUBLISH_FAILURES, EVENTS_PUBLISHED

log = logging.getLogger("spawnpoint.events.relay")

RELAY_LEASE = "events.relay"
UNROUTABLE = "unroutable"
_jitter = random.SystemRandom()


class BrokerUnavailable(RuntimeError):
    """The relay has no usable connection to RabbitMQ (down, refused, closed)."""


@dataclass
class Page:
    """Unpublished rows read for one batch; every row up to `cursor` was read (held keys'
    rows skipped), so the next batch reads after it."""

    read: int
    events: list[PendingEvent]
    cursor: uuid.UUID | None


@dataclass
class BatchOutcome:
    """What one batch's publication came to, before the mark."""

    read: int = 0
    confirmed: list[uuid.UUID] = field(default_factory=list)
    unroutable: list[uuid.UUID] = field(default_factory=list)
    # Refused by the broker (nack) or unanswered: the row's error, kept on the row.
    failed: dict[uuid.UUID, str] = field(default_factory=dict)
    # The connection broke mid-batch: the rest of the batch stays unpublished.
    broken: BaseException | None = None

    @property
    def settled(self) -> int:
        return len(self.confirmed) + len(self.unroutable)


def _backoff(attempt: int, *, first: float, cap: float) -> float:
    ceiling = min(cap, first * 2.0 ** min(attempt - 1, 30))
    return ceiling / 2 + _jitter.uniform(0, ceiling / 2)


class OutboxRelay:
    """Publishes the outbox to RabbitMQ while this process holds the relay lease.

    `run(stop)` is the loop; tests drive it step by step with `step()`, or split a batch
    with `publish_batch()` and `mark(outcome)`. `clock` is the wall clock the lease and the
    marks use.
    """

    def __init__(
        self,
        database: Database,
        settings: Settings,
        *,
        url: str | None = None,
        exchange: str | None = None,
        owner: str | None = None,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        lease_seconds: float = 15.0,
        publish_timeout: float = 30.0,
        connect_timeout: float = 10.0,
        reconnect_max_seconds: float | None = None,
        prune_interval: float = 60.0,
        prune_batch: int = 1000,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        found = url or settings.rabbitmq_url
        if not found:
            raise ValueError("the outbox relay needs RABBITMQ_URL")
        if batch_size < 1 or prune_batch < 1:
            raise ValueError("batch sizes must be at least 1")
        self.database = database
        self.settings = settings
        self.url = found
        self.exchange_name = exchange or settings.rabbitmq_events_exchange
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.reconnect_max_seconds = (
            reconnect_max_seconds
            if reconnect_max_seconds is not None
            else settings.rabbitmq_reconnect_max_seconds
        )
        self.retention = timedelta(days=settings.outbox_retention_days)
        self.prune_interval = prune_interval
        self.prune_batch = prune_batch
        self.clock = clock
        self.lease = LeaderLease(
            name=RELAY_LEASE,
            owner=owner or new_owner_id(),
            ttl=timedelta(seconds=lease_seconds),
        )
        self._renewed_at: datetime | None = None
        self._pruned_at: float | None = None
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._connect_failures = 0
        self._connect_after = 0.0  # monotonic time of the next connection attempt
        # Keys held back after the broker refused one of their events: key -> (failures,
        # monotonic time of the next try).
        self._held: dict[str, tuple[int, float]] = {}
        self._wake = asyncio.Event()

    @property
    def is_leader(self) -> bool:
        return self.lease.held

    @property
    def connected(self) -> bool:
        return (
            self._exchange is not None
            and self._channel is not None
            and not self._channel.is_closed
            and self._connection is not None
            and not self._connection.is_closed
        )

    def nudge(self) -> None:
        """Wake the loop: a commit wrote outbox rows (an `on_commit` callback)."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until `stop` is set; then close the connection and hand the lease over."""
        outage = Outage("outbox relay", log)
        self.database.outbox_nudges.add(self.nudge)
        try:
            while not stop.is_set():
                try:
                    delay = await self.step()
                except Exception as error:  # the database; the broker's are handled in step
                    delay = outage.failed(error)
                else:
                    outage.succeeded()
                if delay > 0:
                    # Never longer than the lease can go unrenewed, a broker outage included.
                    await self._wait(stop, min(delay, self.lease.ttl.total_seconds() / 3))
        finally:
            self.database.outbox_nudges.discard(self.nudge)
            await self.disconnect()
            with contextlib.suppress(Exception):
                await self.release()

    async def step(self) -> float:
        """One turn of the loop: contend for the lease, prune, publish one batch.

        Returns:
            How long to wait before the next turn (0: more is waiting).
        """
        if not await self.contend():
            await self.disconnect()
            return self.lease.ttl.total_seconds() / 3
        await self._prune_if_due()
        if not self.connected:
            wait = self._connect_after - time.monotonic()
            if wait > 0:
                return wait
            try:
                await self.connect()
            except Exception as error:  # down, refused, bad credentials: all "try later"
                return self._connect_failed(error)
        outcome = await self._drain()
        if outcome.broken is not None:
            await self.disconnect()
            return self._connect_failed(outcome.broken)
        if outcome.read >= self.batch_size and outcome.settled:
            return 0.0  # more is waiting
        return self.poll_interval

    async def contend(self) -> bool:
        """Take or renew the relay lease (every third of its lifetime); whether we hold it."""
        now = self.clock()
        renew_every = self.lease.ttl / 3
        if self.is_leader and self._renewed_at is not None and now - self._renewed_at < renew_every:
            return True
        was_leader = self.is_leader
        async with self.database.transaction(write=True) as session:
            leader = await self.lease.acquire(session, now=now)
        self._renewed_at = now if leader else None
        if leader != was_leader:
            log.info(
                "outbox relay %s leadership (owner %s, token %s)",
                "took" if leader else "lost",
                self.lease.owner,
                self.lease.fencing_token,
            )
        return leader

    async def release(self) -> None:
        """Give the lease up now (on shutdown), so another relay need not wait for expiry."""
        if self.is_leader:
            async with self.database.transaction(write=True) as session:
                await self.lease.release(session, now=self.clock())
        self._renewed_at = None

    async def connect(self) -> None:
        """Connect, open a confirming channel and declare the events exchange."""
        await self.disconnect()
        connection = await aio_pika.connect(self.url, timeout=self.connect_timeout)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=False)
            exchange = await channel.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        except BaseException:
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        self._connection, self._channel, self._exchange = connection, channel, exchange
        if self._connect_failures:
            log.info("outbox relay: RabbitMQ is reachable again")
        self._connect_failures = 0
        self._connect_after = 0.0

    async def disconnect(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = self._exchange = None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await connection.close()

    def _connect_failed(self, error: BaseException) -> float:
        self._connect_failures += 1
        if self._connect_failures == 1:
            log.warning(
                "outbox relay: RabbitMQ unavailable (%s: %s); retrying with backoff",
                type(error).__name__,
                error,
            )
        delay = _backoff(
            self._connect_failures, first=0.2, cap=max(0.2, self.reconnect_max_seconds)
        )
        self._connect_after = time.monotonic() + delay
        return delay

    async def _wait(self, stop: asyncio.Event, delay: float) -> None:
        # A nudge only shortens a wait for rows, never the backoff of a broken connection.
        waits = [asyncio.ensure_future(stop.wait())]
        if self.connected:
            waits.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        self._wake.clear()

    async def _pending(self, *, after: uuid.UUID | None = None) -> Page:
        """The oldest unpublished rows (after `after`) whose key is not held back.

        Held keys' rows are skipped; when they fill a whole page, the next page is read
        (a few at most), so a key the broker keeps refusing does not starve the others.
        """
        now = time.monotonic()
        # A key whose hold has run out is tried again (and held anew if refused again).
        held = {key for key, (_, until) in self._held.items() if until > now}
        found: list[PendingEvent] = []
        read = 0
        cursor = after
        async with self.database.transaction(write=False) as session:
            repository = RelayRepository(session)
            for _ in range(4):
                page = await repository.unpublished(limit=self.batch_size, after=cursor)
                read += len(page)
                found.extend(event for event in page if event.key not in held)
                if page:
                    cursor = page[-1].id
                if len(page) < self.batch_size or len(found) >= self.batch_size // 2:
                    break
        if len(found) > self.batch_size:
            found = found[: self.batch_size]
            cursor = found[-1].id
        # Forget holds that ran out on keys with nothing left to send (sent by another relay).
        keys = {event.key for event in found}
        for key in [k for k, (_, until) in self._held.items() if until <= now and k not in keys]:
            del self._held[key]
        return Page(read=read, events=found, cursor=cursor)

    async def publish_batch(self) -> BatchOutcome:
        """Publish the oldest unpublished events and wait for the broker's answers.

        Nothing is marked here (see `mark`): a relay that stops between the two leaves its
        rows to be sent again.
        """
        return await self._publish_page(await self._pending())

    async def _drain(self, *, batches: int = 20) -> BatchOutcome:
        """Up to `batches` batches back to back; the last one's outcome.

        The next batch is read while this one is published, and this one is marked while
        the next is published (marks one at a time, in order). The next batch holds only
        rows after this one's, and goes out only once every round of this one is confirmed,
        so each key's order holds across batches as within one.
        """
        page = await self._pending()
        marking: asyncio.Task[bool] | None = None
        prefetch: asyncio.Task[Page] | None = None
        try:
            for n in range(batches):
                if page.read >= self.batch_size and n + 1 < batches:
                    prefetch = asyncio.create_task(self._pending(after=page.cursor))
                outcome = await self._publish_page(page)
                if marking is not None and not await marking:
                    return outcome  # the lease is lost: this batch's mark would be refused too
                marking = asyncio.create_task(self.mark(outcome))
                if prefetch is None or outcome.broken is not None or not outcome.settled:
                    return outcome
                page = await prefetch
                prefetch = None
            return outcome
        finally:
            if prefetch is not None:
                prefetch.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await prefetch
            if marking is not None:
                await marking

    async def _publish_page(self, page: Page) -> BatchOutcome:
        outcome = BatchOutcome(read=page.read)
        now = time.monotonic()
        # Held again since the page was read (a refusal in the batch before): not yet.
        events = [e for e in page.events if self._held.get(e.key, (0, 0.0))[1] <= now]
        if not events:
            return outcome
        exchange = self._exchange
        if exchange is None:
            outcome.broken = BrokerUnavailable("not connected")
            return outcome
        by_key: dict[str, deque[PendingEvent]] = {}
        for event in events:
            by_key.setdefault(event.key, deque()).append(event)
        while by_key and outcome.broken is None:
            heads = [queue[0] for queue in by_key.values()]
            results = await asyncio.gather(
                *(self._publish(exchange, event) for event in heads), return_exceptions=True
            )
            for event, result in zip(heads, results, strict=True):
                queue = by_key[event.key]
                if isinstance(result, aiormq.exceptions.DeliveryError):
                    # Refused by the broker: hold the key so nothing overtakes this event.
                    outcome.failed[event.id] = f"refused by the broker: {result}"[:1000]
                    failures = self._held.get(event.key, (0, 0.0))[0] + 1
                    self._held[event.key] = (
                        failures,
                        time.monotonic() + _backoff(failures, first=0.5, cap=60.0),
                    )
                    EVENTS_PUBLISH_FAILURES.labels(reason="refused").inc()
                    del by_key[event.key]
                elif isinstance(result, BaseException):
                    if outcome.broken is None:
                        outcome.broken = result
                        EVENTS_PUBLISH_FAILURES.labels(reason="connection").inc()
                    del by_key[event.key]
                else:
                    if isinstance(result, aiormq.abc.DeliveredMessage):
                        outcome.unroutable.append(event.id)
                    else:
                        outcome.confirmed.append(event.id)
                    self._held.pop(event.key, None)
                    queue.popleft()
                    if not queue:
                        del by_key[event.key]
        return outcome

    async def _publish(self, exchange: AbstractExchange, event: PendingEvent) -> object:
        headers: dict[str, Any] = {"key": event.key}
        if event.tenant_id is not None:
            headers["tenant_id"] = str(event.tenant_id)
        message = aio_pika.Message(
            event.body,
            message_id=str(event.id),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            timestamp=event.created_at,
            type=event.type,
            headers=headers,
        )
        try:
            return await exchange.publish(
                message, routing_key=event.type, mandatory=True, timeout=self.publish_timeout
            )
        except TimeoutError as error:
            raise BrokerUnavailable(
                f"no confirm within {self.publish_timeout:g} s for event {event.id}"
            ) from error

    async def mark(self, outcome: BatchOutcome) -> bool:
        """Mark the confirmed rows published (one statement), in a unit of work that renews
        the lease first; record refusals on their rows. Whether the marks were written
        (False: the lease was lost, and the new leader will send the rows again)."""
        if not (outcome.confirmed or outcome.unroutable or outcome.failed):
            return True
        now = self.clock()
        async with self.database.transaction(write=True) as session:
            if not await self.lease.acquire(session, now=now):
                log.warning("outbox relay lost its lease before marking a batch")
                self._renewed_at = None
                return False
            self._renewed_at = now
            repository = RelayRepository(session)
            await repository.mark_published(outcome.confirmed, now=now)
            await repository.mark_published(
                outcome.unroutable, now=now, note=f"{UNROUTABLE}: no queue bound"
            )
            await repository.record_failures(outcome.failed)
        if outcome.confirmed:
            EVENTS_PUBLISHED.labels(outcome="routed").inc(len(outcome.confirmed))
        if outcome.unroutable:
            EVENTS_PUBLISHED.labels(outcome=UNROUTABLE).inc(len(outcome.unroutable))
            log.warning(
                "outbox relay: %d events had no queue bound on %s (marked, not retried)",
                len(outcome.unroutable),
                self.exchange_name,
            )
        return True

    async def _prune_if_due(self) -> None:
        due = self._pruned_at is None or time.monotonic() - self._pruned_at >= self.prune_interval
        if due:
            await self.prune()
            self._pruned_at = time.monotonic()

    async def prune(self, *, batches: int = 10) -> int:
        """Delete rows published more than OUTBOX_RETENTION_DAYS ago, `prune_batch` rows per
        transaction, at most `batches` transactions. Returns how many were deleted."""
        before = self.clock() - self.retention
        deleted = 0
        for _ in range(batches):
            async with self.database.transaction(write=True) as session:
                count = await RelayRepository(session).prune_published(
                    before=before, limit=self.prune_batch
                )
            deleted += count
            if count < self.prune_batch:
                break
        if deleted:
            log.info("outbox relay pruned %d events published before %s", deleted, before)
        return deleted


def relay_runners(
    database: Database, settings: Settings, stop: asyncio.Event, *, owner: str | None = None
) -> list[Coroutine[Any, Any, None]]:
    """The relay loop for a worker process when RABBITMQ_URL is set; nothing otherwise."""
    if not settings.rabbitmq_url:
        return []
    return [OutboxRelay(database, settings, owner=owner).run(stop)]


async def serve_relay(settings: Settings, *, batch_size: int, poll_interval: float) -> None:
    """`spawnpoint events relay`: the relay alone, until SIGTERM or SIGINT."""
    database = Database(settings.sqlalchemy_url, pool_size=2)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        relay = OutboxRelay(database, settings, batch_size=batch_size, poll_interval=poll_interval)
        await relay.run(stop)
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await database.dispose()
