"""The document /healthz and /readyz answer."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from spawnpoint.kit.schemas import ReadSchema


class CheckRead(ReadSchema):
    status: Literal["ok", "failed"]
    latency_ms: float = Field(description="How long the check took, failed or not.")
    error: str | None = Field(None, description="Why it failed.")


class SlowRequestRead(ReadSchema):
    method: str
    route: str = Field(description="The route template, never the path with its ids.")
    status: int
    duration_ms: float = Field(description="Time until the response started.")
    time: datetime


class SlowRequestPolicyRead(ReadSchema):
    threshold_ms: float = Field(description="SLOW_REQUEST_MS.")
    max_in_window: int = Field(description="SLOW_REQUEST_MAX.")
    window_seconds: float = Field(description="SLOW_REQUEST_WINDOW_SECONDS.")
    in_window: int = Field(description="Slow requests seen within the window now.")


class HealthRead(ReadSchema):
    status: Literal["ok", "degraded", "ready", "not-ready"] = Field(
        description="/healthz: `ok` or `degraded`; /readyz: `ready` or `not-ready`."
    )
    checks: dict[str, CheckRead] = Field(
        description="database and policy_engine always; redis and rabbitmq when configured."
    )
    queue_depth: int | None = Field(
        description="Queued jobs (due or waiting for a retry); null when the database "
        "could not be read."
    )
    queue_depth_by_job_type: dict[str, int] | None
    slow_requests: list[SlowRequestRead] = Field(description="The newest first, at most 20.")
    slow_request_policy: SlowRequestPolicyRead
    relay_lag_seconds: float | None = Field(
        None,
        description="With RABBITMQ_URL: age of the oldest outbox event not yet published (0 "
        "when none waits). Null without RABBITMQ_URL or when the database could not be read.",
    )
    reasons: list[str] = Field(description="Why the service is not ready; empty when it is.")
    time: datetime
