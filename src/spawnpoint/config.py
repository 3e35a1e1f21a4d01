"""Settings read from the environment and `.env`.

Variable names and defaults follow the Spawn Service seed's configuration table exactly;
DESIGN.md adds ENVIRONMENT, DATA_DIR, PROVISIONER and POLICY_ENGINE.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import os
import secrets
import uuid
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_SECRET_BYTES = 32
DEV_SECRET_FILE = ".jwt-secret"  # noqa: S105  (a file name, not a secret)
DEV_AUDIT_KEY_FILE = ".audit-signing-key"
DEFAULT_DEV_BYPASS_TOKEN = "DEV-LOCAL-TOKEN"  # noqa: S105  (public by design: the seed's)


class UnsafeSettingsError(RuntimeError):
    """Raised when the settings must not be used in the configured environment."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        # Fields with the provisioning seed's WPS_* names as aliases stay settable by name.
        populate_by_name=True,
    )

    environment: Literal["development", "production"] = Field(
        "development",
        description="`production` refuses the dev bypass token, weak JWT secrets and a missing "
        "DATABASE_URL at start-up, and turns the API docs off unless DOCS_ENABLED=true.",
    )
    data_dir: Path = Field(
        Path("./data"), description="Directory for the embedded database, workspaces, artifacts."
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL. Unset: SQLite at DATA_DIR/spawnpoint.db (development only; "
        "production refuses to start without it). Production: "
        "postgresql+psycopg://spawn_service:spawn_service@localhost:5432/spawn_service",
    )
    database_pool_size: int = Field(
        10, ge=1, description="Connections kept per process (PostgreSQL)."
    )
    host: str = Field("127.0.0.1", description="Interface `spawnpoint serve` binds to.")
    docs_enabled: bool | None = Field(
        None,
        description="Serve /docs, /redoc and /openapi.json. Unset: on in development, "
        "off in production.",
    )
    port: int = Field(8000, ge=0, le=65535, description="Port `spawnpoint serve` listens on.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info",
        validation_alias=AliasChoices("log_level", "wps_logging__level"),
        description="Log level of the server and workers (also WPS_LOGGING__LEVEL, any case).",
    )
    log_format: Literal["json", "console"] = Field(
        "json",
        description="`json`: one JSON object per line (structlog), with request id, tenant, "
        "actor, route and reason; `console`: the same fields, aligned for a terminal.",
    )
    access_log: bool = Field(
        True, description="Log one line per HTTP request (method, route, status, duration)."
    )
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("redis_url", "wps_redis__url"),
        description="Redis URL (optional; also WPS_REDIS__URL); when set, /healthz and /readyz "
        "check it.",
    )
    status_cache_prefix: str = Field(
        "spawnpoint:permit",
        min_length=1,
        max_length=100,
        pattern=r"^[^*?\[\]]+$",
        description="Prefix of the Redis keys that hold the permit workspaces' status and "
        "connection documents (with REDIS_URL).",
    )
    status_cache_timeout_seconds: float = Field(
        0.1,
        gt=0,
        le=10,
        description="How long a Redis read or write of a permit document may take before the "
        "status and connection routes answer from the database instead.",
    )
    status_cache_retry_seconds: float = Field(
        1.0,
        ge=0,
        le=300,
        description="After Redis failed, how long the permit routes answer from the database "
        "before trying Redis again.",
    )
    status_cache_sweep_seconds: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="How often the scheduler rewrites a batch of permit documents in Redis "
        "from the database, repairing drift.",
    )
    status_cache_sweep_batch: int = Field(
        500,
        ge=1,
        le=10_000,
        description="Permit documents the repair sweep rewrites per run.",
    )
    rabbitmq_url: str | None = Field(
        None,
        validation_alias=AliasChoices("rabbitmq_url", "wps_rabbitmq__url"),
        description="RabbitMQ URL (optional; also WPS_RABBITMQ__URL); when set, /healthz and "
        "/readyz check it, every worker consumes permit events from RABBITMQ_QUEUE, and one "
        "worker (the relay's leader) publishes the outbox to RABBITMQ_EVENTS_EXCHANGE.",
    )
    rabbitmq_queue: str = Field(
        "spe.workspace.events",
        min_length=1,
        max_length=200,
        validation_alias=AliasChoices("rabbitmq_queue", "wps_rabbitmq__queue"),
        description="Durable queue of inbound permit events (also WPS_RABBITMQ__QUEUE); its "
        "dead-letter queue is `<queue>.dead-letter` and its parking queue `<queue>.parked`.",
    )
    rabbitmq_queue_type: Literal["quorum", "classic"] = Field(
        "quorum", description="Type of the permit queues when spawnpoint declares them."
    )
    rabbitmq_permits_exchange: str = Field(
        "spe.permits",
        max_length=200,
        description="Topic exchange the permit queue is bound to (declared durable at start-up); "
        "empty: no binding, publishers send to the queue through the default exchange.",
    )
    rabbitmq_permits_binding_key: str = Field(
        "#",
        min_length=1,
        max_length=255,
        description="Binding key of the permit queue on RABBITMQ_PERMITS_EXCHANGE.",
    )
    rabbitmq_max_deliveries: int = Field(
        5,
        ge=1,
        le=1000,
        description="A permit event whose effect fails this many times goes to the "
        "dead-letter queue, with the last error in its `x-death-reason` header.",
    )
    rabbitmq_prefetch: int = Field(
        32,
        ge=1,
        le=10_000,
        description="Permit events a consumer holds unacknowledged at once (and so handles "
        "at once).",
    )
    rabbitmq_park_seconds: float = Field(
        5.0,
        gt=0,
        le=86_400,
        description="How long a stage change for a permit with no workspace yet waits in the "
        "parking queue before it is tried again.",
    )
    rabbitmq_max_parks: int = Field(
        120,
        ge=1,
        le=100_000,
        description="A stage change parked this many times without its permit appearing goes "
        "to the dead-letter queue.",
    )
    rabbitmq_reconnect_max_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Longest wait between attempts to reach RabbitMQ (the backoff doubles "
        "from 0.5 s up to this).",
    )
    rabbitmq_events_exchange: str = Field(
        "spawnpoint.events",
        min_length=1,
        max_length=200,
        description="Topic exchange (declared durable) the outbox relay publishes events to, "
        "routing key = event type, message_id = outbox id.",
    )
    outbox_retention_days: int = Field(
        7,
        ge=1,
        le=36_500,
        description="Outbox rows published longer ago than this are deleted by the relay.",
    )
    disable_pulumi: bool = Field(
        False,
        validation_alias=AliasChoices("disable_pulumi", "wps_disable_pulumi"),
        description="The provisioning seed's WPS_DISABLE_PULUMI: true makes `dry-run` the "
        "default provisioner (PROVISIONER, when set, still wins).",
    )
    health_check_timeout_seconds: float = Field(
        2.0, gt=0, le=60, description="How long one dependency check of /healthz may take."
    )
    slow_request_ms: float = Field(
        500.0, gt=0, description="A request slower than this is listed by /healthz and /readyz."
    )
    slow_request_max: int = Field(
        5,
        ge=0,
        le=10_000,
        description="/readyz answers 503 while more slow requests than this fall within "
        "SLOW_REQUEST_WINDOW_SECONDS.",
    )
    slow_request_window_seconds: float = Field(
        60.0, gt=0, le=86_400, description="How far back /readyz counts slow requests."
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP collector URL (e.g. http://collector:4318); when set and the "
        "otel extra is installed, request and job spans are exported there.",
    )
    otel_service_name: str = Field(
        "spawnpoint", description="The service.name resource attribute of exported spans."
    )
    metrics_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="How long the database-derived gauges of /metrics (queue depth, "
        "workspaces by state, quota usage) are reused between scrapes.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1, description="Largest request body accepted (413 beyond it)."
    )
    max_json_depth: int = Field(
        32, ge=2, le=512, description="Deepest nesting of arrays and objects in a JSON body."
    )
    max_json_field_bytes: int = Field(
        65_536,
        ge=2,
        description="Largest free-form JSON field (spawn parameters), in bytes of JSON.",
    )

    artifact_max_bytes: int = Field(
        1_073_741_824,
        ge=1,
        description="Largest artifact content accepted (413 beyond it, refused while the "
        "upload streams in).",
    )

    orchestrator_url: str = Field(
        "http://orchestrator:8080", description="Base URL of the orchestrator service."
    )
    orchestrator_scenarios_path: str = Field(
        "/api/scenarios", description="Orchestrator endpoint for new scenarios."
    )
    console_base_url: str = Field(
        "https://mvp.local/console", description="Base URL used to build scenario access links."
    )
    opa_url: str = Field("http://opa:8181", description="Base URL for the OPA sidecar.")
    opa_policy_path: str = Field(
        "/v1/data/spawn/allow", description="Policy path used for spawn authorization."
    )
    policy_engine: Literal["embedded", "opa"] = Field(
        "embedded", description="`embedded` evaluates Rego in process; `opa` asks OPA_URL."
    )
    policy_timeout_seconds: float = Field(
        2.0, gt=0, description="How long a policy decision may take before the spawn fails (503)."
    )
    provisioner: str = Field(
        "local", description="Default provisioner driver for templates that name none."
    )
    job_log_follow_idle_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="`GET /api/jobs/{id}/logs?follow=true` ends after this long without a "
        "new line, even while the job still runs.",
    )
    job_log_poll_seconds: float = Field(
        0.25,
        gt=0,
        le=60,
        description="How often a followed job log is checked for new lines.",
    )

    jwt_secret: str | None = Field(
        None, description="Symmetric signing secret for JWT validation (at least 32 bytes)."
    )
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = Field(
        "HS256", description="The only JWT signing algorithm accepted."
    )
    jwt_audience: str | None = Field(None, description="Expected JWT audience (optional).")
    jwt_issuer: str | None = Field(None, description="Expected JWT issuer (optional).")
    auth_cache_seconds: float = Field(
        2.0,
        ge=0,
        description="How long a user's role and status are reused between requests; 0: never.",
    )
    dev_bypass_token: str = Field(
        DEFAULT_DEV_BYPASS_TOKEN,
        description="Development shortcut token: acts as the demo tenant's admin and operator. "
        "Honoured only when ENVIRONMENT=development; empty disables it.",
    )
    allow_dev_bypass_on_network: bool = Field(
        False,
        description="Let `spawnpoint serve` listen on a non-loopback address while the dev "
        "bypass token is active (refused otherwise: anyone on the network would be an operator).",
    )

    audit_signing_key: str | None = Field(
        None,
        description="Ed25519 private key that signs audit checkpoints: the raw 32-byte key "
        "in base64, or a PKCS#8 PEM. Required in production; in development one is generated "
        "once under DATA_DIR (.audit-signing-key, mode 0600) when unset.",
    )
    audit_retention_days: int = Field(
        2557,
        ge=1,
        description="How long audit entries stay in the database (default seven years); "
        "older months are archived to DATA_DIR/audit-archive/ and then dropped.",
    )
    audit_checkpoint_interval_seconds: float = Field(
        300.0, gt=0, description="How often the scheduler signs a checkpoint of every chain."
    )
    metering_interval_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description="How often the scheduler meters running workspaces' cost (their hourly "
        "cost records are extended in place each time).",
    )
    currency: str = Field(
        "USD",
        pattern=r"^[A-Z]{3}$",
        description="ISO 4217 code of the currency templates' `hourly_cost` is in.",
    )

    registration: Literal["open", "invite", "closed"] | None = Field(
        None,
        description="Who may register: `open` (anyone; a new tenant on DEFAULT_PLAN_ID with "
        "the person as its admin), `invite` (a tenant admin's invite token is needed) or "
        "`closed`. Unset: `open` in development, `invite` in production.",
    )
    default_plan_id: uuid.UUID = Field(
        uuid.UUID("00000000-0000-0000-0000-000000000010"),
        description="The plan of tenants created by open registration.",
    )
    access_token_minutes: int = Field(
        15, ge=1, le=1440, description="Lifetime of the access tokens login and refresh issue."
    )
    refresh_token_days: int = Field(
        14, ge=1, le=365, description="Lifetime of a refresh token (each use issues a new one)."
    )
    invite_days: int = Field(7, ge=1, le=90, description="How long an invite token is valid.")
    password_token_hours: int = Field(
        72,
        ge=1,
        le=720,
        description="How long a set-password token (users made by admins) is valid.",
    )
    password_hash_memory_kib: int = Field(
        19_456,
        ge=19_456,
        le=4_194_304,
        description="argon2id memory cost in KiB (OWASP's minimum, 19 MiB, or more); stored "
        "hashes with lower parameters are rehashed at the next login.",
    )
    password_hash_time_cost: int = Field(
        2, ge=2, le=64, description="argon2id iterations (at least 2)."
    )
    password_hash_parallelism: int = Field(
        1, ge=1, le=64, description="argon2id lanes (at least 1)."
    )
    login_failures_per_account: int = Field(
        5, ge=1, description="Failed logins per account per LOGIN_THROTTLE_MINUTES before 429."
    )
    login_failures_per_ip: int = Field(
        50, ge=1, description="Failed logins per client IP per LOGIN_THROTTLE_MINUTES before 429."
    )
    login_throttle_minutes: int = Field(
        15, ge=1, le=1440, description="The window failed logins are counted in."
    )
    # One at a time measured best (bench/vs_jupyterhub.py, 32 clients polling: 54 spawns/s
    # against 40 with 4 and 17 with no limit); the reads wait, the worker moves.
    read_admission: int = Field(
        1,
        ge=0,
        le=1000,
        description="With the in-process worker (`spawnpoint serve`), API reads handled at "
        "once on the worker's event loop; more wait their turn, so a flood of reads cannot "
        "starve the worker (SQLite's polls have a loop of their own). 0: no limit.",
    )
    # Generous by default: a control plane's clients poll (32 clients reading their
    # workspaces every 50 ms are 38,400 requests a minute from one token), and a limit is
    # there to stop a runaway script, not a busy class.
    rate_limit_per_minute: int = Field(
        60_000,
        ge=0,
        description="Requests per minute per principal (user or API key) on authenticated "
        "routes; 0 turns rate limiting off. Shared through Redis when REDIS_URL is set.",
    )
    rate_limit_tenant_per_minute: int = Field(
        120_000,
        ge=0,
        description="Requests per minute per tenant on authenticated routes; 0: none.",
    )
    rate_limit_key_prefix: str = Field(
        "spawnpoint",
        min_length=1,
        max_length=100,
        description="Prefix of the rate-limit and login-throttle keys in Redis.",
    )
    rate_limit_redis_timeout_seconds: float = Field(
        0.25,
        gt=0,
        le=10,
        description="How long a rate-limit or login-throttle count in Redis may take. Past "
        "it, or with Redis down, each process counts in its own memory (a second at a time) "
        "until Redis answers again: requests are still limited, never failed.",
    )
    cors_origins: str = Field(
        "",
        description="Comma-separated origins allowed to call the API from a browser "
        "(CORS); empty: none.",
    )

    demo_tenant_id: uuid.UUID = Field(
        uuid.UUID("00000000-0000-0000-0000-000000000001"),
        description="UUID for the seeded demo tenant.",
    )
    demo_plan_id: uuid.UUID = Field(
        uuid.UUID("00000000-0000-0000-0000-000000000010"),
        description="UUID for the seeded demo plan.",
    )
    demo_template_id: uuid.UUID = Field(
        uuid.UUID("00000000-0000-0000-0000-000000000100"),
        description="UUID for the seeded demo template.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        # The provisioning seed writes levels in capitals (WPS_LOGGING__LEVEL=INFO).
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _dry_run_without_pulumi(self) -> Settings:
        if self.disable_pulumi and "provisioner" not in self.model_fields_set:
            self.provisioner = "dry-run"
        return self

    @property
    def is_development(self) -> bool:
        return self.environment == "development"

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the async driver each backend needs."""
        url = self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'spawnpoint.db'}"
        for plain, async_prefix in (
            ("postgresql://", "postgresql+psycopg://"),
            ("postgres://", "postgresql+psycopg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return async_prefix + url.removeprefix(plain)
        return url

    @property
    def registration_mode(self) -> str:
        if self.registration is not None:
            return self.registration
        return "open" if self.is_development else "invite"

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def dev_bypass_active(self) -> bool:
        return self.is_development and bool(self.dev_bypass_token)

    @property
    def dev_bypass_warning(self) -> str:
        """The start-up warning while the bypass is on; names the token only if it is public."""
        token = (
            DEFAULT_DEV_BYPASS_TOKEN
            if self.dev_bypass_token == DEFAULT_DEV_BYPASS_TOKEN
            else "the DEV_BYPASS_TOKEN value"
        )
        return (
            f"dev bypass token is active: anyone with {token} is an operator; "
            "set DEV_BYPASS_TOKEN= to disable"
        )

    @property
    def docs_available(self) -> bool:
        return self.is_development if self.docs_enabled is None else self.docs_enabled

    def check_bind_host(self, host: str) -> None:
        """Refuse to serve the dev bypass token on an address other machines can reach."""
        if (
            self.dev_bypass_active
            and not self.allow_dev_bypass_on_network
            and not is_loopback(host)
        ):
            raise UnsafeSettingsError(
                f"the dev bypass token is active and {host!r} is not a loopback address; "
                "listen on 127.0.0.1, set DEV_BYPASS_TOKEN= to disable the bypass, "
                "or set ALLOW_DEV_BYPASS_ON_NETWORK=true"
            )

    def unsafe_reasons(self) -> list[str]:
        """Name every setting that must not be used in this environment."""
        if self.environment != "production":
            return []
        reasons = []
        if not self.database_url:
            # The SQLite fallback is a development convenience; in production it would
            # silently split the deployment's state across per-host files.
            reasons.append("DATABASE_URL is missing; production needs an explicit database URL")
        if "dev_bypass_token" in self.model_fields_set and self.dev_bypass_token:
            reasons.append(
                "DEV_BYPASS_TOKEN is set; the dev bypass must be disabled (empty) in production"
            )
        if not self.jwt_secret:
            reasons.append("JWT_SECRET is missing; production needs a secret of at least 32 bytes")
        elif len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            reasons.append("JWT_SECRET is shorter than 32 bytes")
        if not self.audit_signing_key:
            # A key generated on one host would sign checkpoints no other replica can
            # check, and a lost file would orphan every checkpoint it signed.
            reasons.append(
                "AUDIT_SIGNING_KEY is missing; production needs the Ed25519 key that signs "
                "audit checkpoints"
            )
        return reasons

    def check_safe(self) -> None:
        reasons = self.unsafe_reasons()
        if reasons:
            raise UnsafeSettingsError("; ".join(reasons))

    @cached_property
    def audit_key_material(self) -> str | None:
        """AUDIT_SIGNING_KEY; in development a random key generated once under DATA_DIR."""
        if self.audit_signing_key or not self.is_development:
            return self.audit_signing_key
        # Any 32 random bytes are an Ed25519 private key (its seed).
        return generated_once(
            self.data_dir / DEV_AUDIT_KEY_FILE,
            lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
        )

    @cached_property
    def signing_secret(self) -> str | None:
        """The JWT secret; in development one is generated once under DATA_DIR if unset."""
        if self.jwt_secret or not self.is_development:
            return self.jwt_secret
        return generated_once(self.data_dir / DEV_SECRET_FILE, lambda: secrets.token_urlsafe(48))


def generated_once(path: Path, make: Callable[[], str]) -> str:
    """The secret in `path`; made by `make` and stored there if there is none yet.

    Processes that start at once (an API and its workers) must all end up with the same
    secret: each writes its candidate to a file of its own, and a hard link publishes one
    complete file under `path` or fails because another process's is already there. No
    process can read a file that is still being written, or overwrite the one that won.
    """
    try:
        if found := path.read_text().strip():
            return found
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}")
    descriptor = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(make())
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(candidate, path)
    finally:
        candidate.unlink()
    return path.read_text().strip()


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only: 127.0.0.0/8, ::1 or `localhost`.

    Names are not resolved: what a name resolves to can change after the check.
    """
    name = host.strip().removeprefix("[").removesuffix("]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback
