"""What identity and abuse limits add to the app: state, middleware, shutdown."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from spawnpoint.apikeys.service import LastUsed
from spawnpoint.auth.passwords import Passwords
from spawnpoint.config import Settings
from spawnpoint.db import Database
from spawnpoint.kit.ratelimit import (
    Counters,
    LoginThrottle,
    RateLimiter,
    RateLimitHeaders,
    build_storage,
)

CORS_HEADERS = [
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "X-API-Key",
    "X-Reason",
    "X-Request-ID",
]
EXPOSED_HEADERS = [
    "Location",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "X-Request-ID",
]


def install_identity(app: FastAPI, settings: Settings, database: Database) -> None:
    """Password hashing, login throttling, rate limits (their headers) and CORS.

    Call after the other middleware is added: CORS must be outermost, so that a refusal
    (413, 429) reaches a browser with its CORS headers too.
    """
    counters = Counters(build_storage(settings))
    app.state.passwords = Passwords(settings)
    app.state.login_throttle = LoginThrottle(settings, counters)
    app.state.rate_limiter = RateLimiter(settings, counters)
    app.state.key_usage = LastUsed(database)
    app.add_middleware(RateLimitHeaders)
    origins = settings.cors_origin_list
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=CORS_HEADERS,
            expose_headers=EXPOSED_HEADERS,
            allow_credentials=False,
            max_age=600,
        )


async def close_identity(app: FastAPI) -> None:
    """Finish pending `last_used_at` writes; close the rate-limit storage's connections."""
    await app.state.key_usage.aclose()
    storage = app.state.rate_limiter.counters.storage
    bridge = getattr(storage, "bridge", None)
    client = getattr(bridge, "storage", None)
    if client is not None and hasattr(client, "aclose"):
        await client.aclose()
