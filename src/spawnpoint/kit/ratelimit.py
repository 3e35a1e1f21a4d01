"""Rate limits and login throttling, counted in the `limits` library's storage.

Windows are fixed and aligned to the clock (a minute for rate limits, LOGIN_THROTTLE_MINUTES
for failed logins), so a window's reset time is known without asking the storage. Memory
storage counts for one process; with REDIS_URL every replica counts in the same keys.

Every authenticated request hits two counters at once, the principal's (a user or an API
key) and its tenant's; a public auth route hits one, its client address's. On Redis the
counters of one request are counted in one round trip: one script runs the `limits`
library's INCRBY-then-EXPIRE step for each key, under the storage's own key prefix.

Redis down or slower than RATE_LIMIT_REDIS_TIMEOUT_SECONDS never fails a request: the
process counts in its own memory for `FALLBACK_SECONDS`, then tries Redis again (counted
in `spawnpoint_rate_limit_fallbacks`). Limits and login throttling then hold per process
instead of per deployment, which is looser, not off. The answer
carries the IETF draft's `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` of
the tighter one, and a refusal is a 429 with `Retry-After`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage, Storage
from limits.aio.storage.redis.redispy import RedispyBridge
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spawnpoint.config import Settings
from spawnpoint.kit.errors import ProblemError
from spawnpoint.kit.metrics import RATE_LIMIT_FALLBACKS

log = logging.getLogger("spawnpoint.ratelimit")
T = TypeVar("T")

STATE_KEY = "spawnpoint.ratelimit"
MINUTE = 60
# After Redis failed, how long a process counts in its memory before trying Redis again.
FALLBACK_SECONDS = 1.0

# The `limits` library's incr_expire.lua, for each key in turn: ARGV holds an
# (expiry, amount) pair per key. Returns the counts in the order of KEYS.
INCR_EXPIRE_EACH = b"""
local counts = {}
for i, key in ipairs(KEYS) do
    local amount = tonumber(ARGV[2 * i])
    local current = redis.call("incrby", key, amount)
    if tonumber(current) == amount then
        redis.call("expire", key, ARGV[2 * i - 1])
    end
    counts[i] = current
end
return counts
"""


class TooManyRequests(ProblemError):
    status = 429
    slug = "too-many-requests"

    def __init__(self, detail: str, *, retry_after: int, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.headers = {"Retry-After": str(max(1, retry_after))}


@dataclass(frozen=True, slots=True)
class Window:
    """One counter's state after a hit: its limit, what is left, seconds until it resets."""

    limit: int
    remaining: int
    reset: int
    key: str = ""

    @property
    def exceeded(self) -> bool:
        return self.remaining < 0

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(max(0, self.remaining)).encode()),
            (b"ratelimit-reset", str(self.reset).encode()),
        ]


class MemoryStorage(Storage):
    """Counters in this process's memory, safe to use from two event loops' threads.

    `spawnpoint serve` on SQLite counts requests on two loops (kit/loops.py). The `limits`
    library's asyncio memory storage guards each key with an `asyncio.Lock`, which belongs
    to one loop, and its threaded twin starts a timer thread every 10 ms to expire keys
    (each start a hand-over of the interpreter lock). Here one `threading.Lock` guards a
    dict, nothing waits inside it, and expired keys go when the dict has grown by
    `SWEEP_EVERY` keys since the last sweep. Fixed windows only: what `Counters` uses.
    """

    STORAGE_SCHEME = ["spawnpoint+memory"]
    SWEEP_EVERY = 10_000

    def __init__(self, uri: str | None = None, **options: Any) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, tuple[int, float]] = {}  # key: (count, expires at)
        self._sweep_at = self.SWEEP_EVERY
        super().__init__(uri, **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    async def incr(self, key: str, expiry: float, amount: int = 1) -> int:
        now = time.time()
        with self._lock:
            count, expires = self._counts.get(key, (0, 0.0))
            if expires <= now:
                count, expires = 0, now + expiry
            count += amount
            self._counts[key] = (count, expires)
            if len(self._counts) >= self._sweep_at:
                self._sweep(now)
        return count

    def _sweep(self, now: float) -> None:
        for stale in [k for k, (_, expires) in self._counts.items() if expires <= now]:
            del self._counts[stale]
        self._sweep_at = len(self._counts) + self.SWEEP_EVERY

    async def get(self, key: str) -> int:
        count, expires = self._counts.get(key, (0, 0.0))
        return count if expires > time.time() else 0

    async def get_expiry(self, key: str) -> float:
        _, expires = self._counts.get(key, (0, 0.0))
        return expires if expires > time.time() else time.time()

    async def check(self) -> bool:
        return True

    async def reset(self) -> int | None:
        with self._lock:
            count = len(self._counts)
            self._counts.clear()
        return count

    async def clear(self, key: str) -> None:
        with self._lock:
            self._counts.pop(key, None)


def build_storage(settings: Settings) -> Storage:
    """Redis storage when REDIS_URL is set (shared by replicas), else this process's memory."""
    if settings.redis_url:
        timeout = settings.rate_limit_redis_timeout_seconds
        return RedisStorage(
            "async+" + settings.redis_url,
            implementation="redispy",
            key_prefix=settings.rate_limit_key_prefix,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
    return MemoryStorage()


@dataclass(frozen=True, slots=True)
class Hit:
    """One counter to count a request in."""

    name: str
    identifier: str
    limit: int
    seconds: int


class Counters:
    """Fixed, clock-aligned windows over a `limits` storage (and, for a shared storage, this
    process's memory while that one fails)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.fallback = None if isinstance(storage, MemoryStorage) else MemoryStorage()
        self._failing_until = 0.0
        self._errors: tuple[type[BaseException], ...] = (TimeoutError, OSError)
        if self.fallback is not None:
            self._errors += _errors(storage)
        self._incr_each: Any = None
        # Plain Redis through redis-py only: a cluster would need a request's keys in one slot.
        if type(storage) is RedisStorage and isinstance(storage.bridge, RedispyBridge):
            self._incr_each = storage.bridge.get_connection().register_script(INCR_EXPIRE_EACH)

    @staticmethod
    def _key(name: str, identifier: str, limit: int, seconds: int, now: float) -> str:
        window = int(now // seconds)
        return RateLimitItemPerSecond(limit, seconds).key_for(name, identifier, str(window))

    @staticmethod
    def _reset(seconds: int, now: float) -> int:
        return max(1, math.ceil(seconds - now % seconds))

    async def _counted(
        self,
        shared: Callable[[Storage], Awaitable[T]],
        local: Callable[[Storage], Awaitable[T]] | None = None,
    ) -> T:
        """`shared(storage)`, or `local` (default `shared`) on the fallback memory while the
        shared storage fails."""
        local = local or shared
        if self.fallback is None:
            return await shared(self.storage)
        if time.monotonic() < self._failing_until:
            return await local(self.fallback)
        try:
            return await shared(self.storage)
        except self._errors as exc:
            self._failing_until = time.monotonic() + FALLBACK_SECONDS
            RATE_LIMIT_FALLBACKS.inc()
            log.warning("rate limits count in this process's memory: %s", exc)
            return await local(self.fallback)

    async def hit(
        self, name: str, identifier: str, *, limit: int, seconds: int, cost: int = 1
    ) -> Window:
        now = time.time()
        key = self._key(name, identifier, limit, seconds, now)
        count = await self._counted(lambda storage: storage.incr(key, seconds + 1, amount=cost))
        return Window(limit, limit - count, self._reset(seconds, now), key)

    async def hit_all(self, hits: Sequence[Hit]) -> list[Window]:
        """Count one request in each of `hits`, in one round trip on Redis."""
        now = time.time()
        keys = [self._key(h.name, h.identifier, h.limit, h.seconds, now) for h in hits]

        async def each(storage: Storage) -> list[int]:
            if isinstance(storage, MemoryStorage):
                # One after another: in memory no call waits, and a task per counter
                # (asyncio.gather) gave the event loop away on every request, so in the
                # embedded mode each poll waited a whole turn of the loop behind the rest.
                return [
                    await storage.incr(k, h.seconds + 1) for k, h in zip(keys, hits, strict=True)
                ]
            counts = await asyncio.gather(
                *(storage.incr(k, h.seconds + 1) for k, h in zip(keys, hits, strict=True))
            )
            return list(counts)

        async def at_once(storage: Storage) -> list[int]:
            if self._incr_each is None or len(hits) < 2:
                return await each(storage)
            args: list[int] = []
            for hit in hits:
                args += [hit.seconds + 1, 1]
            bridge = cast(RedisStorage, storage).bridge
            return list(await self._incr_each([bridge.prefixed_key(k) for k in keys], args))

        counts = await self._counted(at_once, each)
        return [
            Window(h.limit, h.limit - int(count), self._reset(h.seconds, now), key)
            for h, key, count in zip(hits, keys, counts, strict=True)
        ]

    async def give_back(self, window: Window, *, seconds: int) -> None:
        """Undo one hit of `window` (its own key: the window it was counted in)."""
        await self._counted(lambda storage: storage.incr(window.key, seconds + 1, amount=-1))

    async def peek(self, name: str, identifier: str, *, limit: int, seconds: int) -> Window:
        now = time.time()
        key = self._key(name, identifier, limit, seconds, now)
        count = await self._counted(lambda storage: storage.get(key))
        return Window(limit, limit - count, self._reset(seconds, now))


def _errors(storage: Storage) -> tuple[type[BaseException], ...]:
    errors = storage.base_exceptions
    return errors if isinstance(errors, tuple) else (errors,)


class RateLimiter:
    """RATE_LIMIT_PER_MINUTE per principal and RATE_LIMIT_TENANT_PER_MINUTE per tenant."""

    def __init__(self, settings: Settings, counters: Counters) -> None:
        self.per_principal = settings.rate_limit_per_minute
        self.per_tenant = settings.rate_limit_tenant_per_minute
        self.counters = counters

    @property
    def enabled(self) -> bool:
        return self.per_principal > 0 or self.per_tenant > 0

    async def hit(self, principal_key: str, tenant_key: str) -> Window | None:
        """Count one request; the tighter window, or None when no limit is configured."""
        hits = []
        if self.per_principal > 0:
            hits.append(Hit("rate", principal_key, self.per_principal, MINUTE))
        if self.per_tenant > 0:
            hits.append(Hit("tenant", tenant_key, self.per_tenant, MINUTE))
        if not hits:
            return None
        windows = await self.counters.hit_all(hits)
        return min(windows, key=lambda w: (w.remaining, -w.reset))

    async def hit_address(self, address: str) -> Window | None:
        """Count one unauthenticated request (register, refresh...) against its client
        address, in RATE_LIMIT_PER_MINUTE; None when rate limiting is off."""
        if self.per_principal <= 0:
            return None
        return await self.counters.hit(
            "rate", f"ip:{address}", limit=self.per_principal, seconds=MINUTE
        )


def refuse(window: Window) -> TooManyRequests:
    return TooManyRequests(
        f"Too many requests: the limit is {window.limit} per minute; retry after {window.reset} s.",
        retry_after=window.reset,
    )


def remember(scope: Scope, window: Window) -> None:
    """Keep the request's window for `RateLimitHeaders` to put on the answer."""
    scope.setdefault("state", {})[STATE_KEY] = window


class RateLimitHeaders:
    """Add the RateLimit-* headers of the request's window (if any) to its answer.

    Pure ASGI, so they reach every answer: models, plain responses and problem documents.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                window = scope.get("state", {}).get(STATE_KEY)
                if isinstance(window, Window):
                    message["headers"] = [*message.get("headers", []), *window.headers()]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class LoginThrottle:
    """Failed logins per account and per client IP, in LOGIN_THROTTLE_MINUTES windows."""

    def __init__(self, settings: Settings, counters: Counters) -> None:
        self.per_account = settings.login_failures_per_account
        self.per_ip = settings.login_failures_per_ip
        self.seconds = settings.login_throttle_minutes * MINUTE
        self.counters = counters

    async def attempt(self, *, account: str, ip: str) -> tuple[int | None, list[Window]]:
        """Count a login attempt before its password is checked, so parallel guesses
        cannot overrun the limit.

        Returns:
            Seconds to wait when the account or the IP has no attempts left (else None),
            and the windows counted, for `succeeded` to give the attempt back.
        """
        windows = await self.counters.hit_all(
            [
                Hit("login", account, self.per_account, self.seconds),
                Hit("login-ip", ip, self.per_ip, self.seconds),
            ]
        )
        waits = [w.reset for w in windows if w.exceeded]
        return (max(waits) if waits else None), windows

    async def succeeded(self, windows: list[Window]) -> None:
        """A successful login does not count against the account or the IP."""
        await asyncio.gather(*(self.counters.give_back(w, seconds=self.seconds) for w in windows))
