"""The `spawnpoint` command: serve, migrate, worker, token, audit."""

from __future__ import annotations

import asyncio
import gc
import json
import re
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from spawnpoint import tracing
from spawnpoint.config import Settings, UnsafeSettingsError
from spawnpoint.db import Database
from spawnpoint.kit.clock import utcnow
from spawnpoint.logs import configure_logging
from spawnpoint.models import Role, User
from spawnpoint.security import mint_token
from spawnpoint.users.repository import AccountRepository

if TYPE_CHECKING:
    from spawnpoint.audit.keys import SigningKey

T = TypeVar("T")

app = typer.Typer(
    help="spawnpoint: a multi-tenant control plane for workspaces.", no_args_is_help=True
)
token_app = typer.Typer(help="Mint access tokens for local use.", no_args_is_help=True)
app.add_typer(token_app, name="token")
user_app = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
app.add_typer(user_app, name="user")
api_key_app = typer.Typer(help="Manage API keys.", no_args_is_help=True)
app.add_typer(api_key_app, name="api-key")
audit_app = typer.Typer(
    help="Verify, checkpoint, export and archive the tamper-evident audit log.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")
cache_app = typer.Typer(
    help="The Redis cache of permit status and connection documents.", no_args_is_help=True
)
app.add_typer(cache_app, name="cache")
events_app = typer.Typer(
    help="RabbitMQ events: the outbox relay, the permit consumer.", no_args_is_help=True
)
app.add_typer(events_app, name="events")

DURATION = re.compile(r"^(\d+)([smhd]?)$")
UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def load_settings() -> Settings:
    """Read the settings; exit with one clear line when they are unsafe here."""
    try:
        settings = Settings()
        settings.check_safe()
    except UnsafeSettingsError as exc:
        refuse_to_start(exc)
    return settings


def refuse_to_start(exc: UnsafeSettingsError) -> NoReturn:
    typer.echo(f"spawnpoint: refusing to start: {exc}", err=True)
    raise typer.Exit(2) from exc


def parse_duration(value: str) -> timedelta:
    match = DURATION.match(value.strip())
    if not match:
        raise typer.BadParameter("use a number with an optional unit: 90s, 30m, 12h, 7d")
    return timedelta(seconds=int(match[1]) * UNIT_SECONDS[match[2]])


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface; default HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Port; default PORT.")] = None,
    migrate: Annotated[
        bool | None,
        typer.Option(help="Apply migrations first (default: yes on SQLite, no on PostgreSQL)."),
    ] = None,
    worker: Annotated[
        bool,
        typer.Option(help="Run a job worker and the scheduler in this process."),
    ] = True,
) -> None:
    """Serve the API with uvicorn (uvloop, httptools)."""
    import uvicorn
    import uvloop

    from spawnpoint.app import create_app
    from spawnpoint.kit.loops import TwoLoops, WorkLoop, lower_switch_interval, uses_two_loops
    from spawnpoint.migrations import upgrade

    settings = load_settings()
    bind_host = host or settings.host
    try:
        settings.check_bind_host(bind_host)
    except UnsafeSettingsError as exc:
        refuse_to_start(exc)
    if migrate if migrate is not None else settings.sqlalchemy_url.startswith("sqlite"):
        upgrade(settings)
    configure_logging(settings)
    app_ = create_app(settings, run_worker=worker)
    asgi: Any = app_
    if worker and uses_two_loops(settings):
        # The polls on uvicorn's loop, the rest on a loop of its own (kit/loops.py).
        asgi = TwoLoops(app_, WorkLoop(uvloop.new_event_loop), app_.state.database)
        lower_switch_interval()
    # Everything built so far lives for the whole process: move it out of the garbage
    # collector's sight, so full collections stay short under load. Young collections come
    # every 10,000 allocations rather than every 700, as in `spawnpoint worker`: a full one
    # (15-30 ms of the interpreter lock with the embedded mode's heap, a pause for every
    # poll) then comes about fourteen times less often.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    uvicorn.run(
        asgi,
        host=bind_host,
        port=port if port is not None else settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        # Logs go through logs.configure_logging's handler; the request middleware writes
        # the access log, with the request id and route template.
        log_config=None,
        access_log=False,
        proxy_headers=True,
    )


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    down: Annotated[bool, typer.Option("--down", help="Downgrade to REVISION instead.")] = False,
) -> None:
    """Upgrade the database to the newest schema (or another revision)."""
    from spawnpoint.migrations import downgrade, upgrade

    settings = load_settings()
    if down:
        downgrade(settings, revision)
    else:
        upgrade(settings, revision)
    typer.echo(f"database at {'base' if down and revision == 'base' else revision}")


async def _user_by_email(settings: Settings, email: str) -> User | None:
    database = Database(settings.sqlalchemy_url, pool_size=1)
    try:
        async with database.transaction(write=False) as session:
            return await AccountRepository(session).by_email(email)
    finally:
        await database.dispose()


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", help="Email of the user the token is for.")],
    ttl: Annotated[str, typer.Option(help="Lifetime: 90s, 30m, 12h, 7d.")] = "12h",
) -> None:
    """Print a signed JWT for a user."""
    settings = load_settings()
    lifetime = parse_duration(ttl)
    found = asyncio.run(_user_by_email(settings, user))
    if found is None:
        typer.echo(f"spawnpoint: no user with email {user!r}", err=True)
        raise typer.Exit(1)
    if not settings.signing_secret:
        typer.echo("spawnpoint: JWT_SECRET is not set", err=True)
        raise typer.Exit(1)
    typer.echo(mint_token(settings, user_id=found.id, tenant_id=found.tenant_id, ttl=lifetime))


RoleOption = Annotated[
    str, typer.Option("--role", help="viewer, auditor, member, publisher, admin or operator.")
]


def _role(value: str) -> Role:
    try:
        return Role(value.strip().lower())
    except ValueError as exc:
        raise typer.BadParameter(
            f"unknown role {value!r}; use one of {[r.value for r in Role]}"
        ) from exc


def _fail(message: str) -> NoReturn:
    typer.echo(f"spawnpoint: {message}", err=True)
    raise typer.Exit(1)


@user_app.command("create")
def user_create(
    email: Annotated[str, typer.Option("--email", help="The user's email (their login).")],
    tenant: Annotated[str, typer.Option("--tenant", help="Tenant id or slug.")],
    role: RoleOption = "member",
    password_prompt: Annotated[
        bool,
        typer.Option(
            "--password-prompt",
            help="Ask for the password (hidden, twice); else print a one-time set-password "
            "token for POST /api/v1/auth/set-password.",
        ),
    ] = False,
    display_name: Annotated[str, typer.Option(help="Shown name.")] = "",
) -> None:
    """Create a user in a tenant (audited as the system actor `cli`)."""
    from spawnpoint.auth.passwords import MAX_PASSWORD, MIN_PASSWORD, Passwords
    from spawnpoint.auth.service import AccountAdmin
    from spawnpoint.kit.errors import ProblemError

    settings = load_settings()
    chosen = _role(role)
    password_hash = None
    if password_prompt:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
            _fail(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
        password_hash = Passwords(settings).hasher.hash(password)

    async def run(database: Database) -> tuple[User, str | None]:
        async with database.unit_of_work(write=True) as uow:
            return await AccountAdmin(uow, settings=settings).create_user(
                email=email,
                role=chosen,
                tenant=tenant,
                password_hash=password_hash,
                display_name=display_name,
            )

    try:
        user, token = asyncio.run(_with_database(settings, run))
    except (LookupError, ProblemError, ValueError) as exc:
        _fail(str(getattr(exc, "detail", exc)))
    typer.echo(
        json.dumps(
            {
                "id": str(user.id),
                "email": user.email,
                "role": user.role,
                "tenant_id": str(user.tenant_id),
            }
        )
    )
    if token is not None:
        typer.echo(f"set-password token (shown once): {token}", err=True)


@api_key_app.command("create")
def api_key_create(
    user: Annotated[str, typer.Option("--user", help="Email of the user the key acts for.")],
    name: Annotated[str, typer.Option("--name", help="What the key is for.")],
    role: Annotated[
        str | None,
        typer.Option("--role", help="The key's role, no higher than the user's; default theirs."),
    ] = None,
) -> None:
    """Create an API key for a user and print its secret (shown this once)."""
    from spawnpoint.auth.service import AccountAdmin
    from spawnpoint.kit.errors import ProblemError

    settings = load_settings()
    chosen = _role(role) if role is not None else None

    async def run(database: Database) -> str:
        async with database.unit_of_work(write=True) as uow:
            _, secret = await AccountAdmin(uow, settings=settings).create_api_key(
                email=user, name=name, role=chosen
            )
            return secret

    try:
        secret = asyncio.run(_with_database(settings, run))
    except (LookupError, ProblemError, ValueError) as exc:
        _fail(str(getattr(exc, "detail", exc)))
    typer.echo(secret)


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(min=1, help="Jobs run at once.")] = 8,
    lease_seconds: Annotated[
        float, typer.Option(min=1, help="Job lease; heartbeats renew it every third.")
    ] = 30.0,
    poll_interval: Annotated[
        float, typer.Option(min=0.01, help="Longest wait between claims without a wake-up.")
    ] = 1.0,
    grace_seconds: Annotated[
        float, typer.Option(min=0, help="On SIGTERM, how long running jobs may finish.")
    ] = 30.0,
    rescue_interval: Annotated[
        float, typer.Option(min=0.1, help="How often the leader rescues expired leases.")
    ] = 5.0,
    scheduler: Annotated[bool, typer.Option(help="Take part in scheduler leader election.")] = True,
    handlers: Annotated[
        list[str] | None,
        typer.Option(
            "--handlers",
            help="Extra handler registrations as module:function (called with the registry); "
            "plug-ins normally use the spawnpoint.jobs entry-point group.",
        ),
    ] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=65535,
            help="Serve this worker's Prometheus metrics (job durations, retries) on this port "
            "at HOST; default: none (an API process on the same host adds them up through "
            "PROMETHEUS_MULTIPROC_DIR).",
        ),
    ] = None,
) -> None:
    """Run background jobs and the scheduler until SIGTERM or SIGINT."""
    from spawnpoint.jobs.registry import default_registry
    from spawnpoint.jobs.worker import serve_worker
    from spawnpoint.runtime import periodic_tasks

    settings = load_settings()
    configure_logging(settings)
    tracing.configure_tracing(settings)
    if metrics_port is not None:
        from spawnpoint.kit.metrics import serve_metrics

        serve_metrics(metrics_port, settings.host)
    registry = default_registry(settings)
    for reference in handlers or []:
        registry.load_reference(reference)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    # As in `serve`: what startup built lives as long as the process, and out of the
    # collector's sight, full collections stay short. A busy worker allocates a few dozen
    # objects per job (its task, context, outcome...), so young collections come every
    # 10,000 allocations rather than every 700: the collector took a sixth of a draining
    # worker's CPU before (bench/job_queue.py).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    runner(
        serve_worker(
            settings,
            registry,
            concurrency=concurrency,
            lease_seconds=lease_seconds,
            poll_interval=poll_interval,
            grace_seconds=grace_seconds,
            scheduler=scheduler,
            tasks=periodic_tasks(settings, rescue_interval=timedelta(seconds=rescue_interval)),
        )
    )


def _chain_option(value: str) -> uuid.UUID:
    """A tenant id, or `platform` (or the nil UUID) for the platform chain."""
    from spawnpoint.models.audit import PLATFORM_CHAIN

    if value.strip().lower() == "platform":
        return PLATFORM_CHAIN
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise typer.BadParameter("use a tenant id, or `platform` for the platform chain") from exc


def _time_option(value: str | None) -> datetime | None:
    """An ISO 8601 time; one without an offset is taken as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(
            "use an ISO 8601 time: 2024-06-01 or 2024-06-01T12:00:00Z"
        ) from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _signing_key(settings: Settings) -> SigningKey:
    from spawnpoint.audit.keys import SigningKey, SigningKeyError

    try:
        return SigningKey.from_settings(settings)
    except SigningKeyError as exc:
        typer.echo(f"spawnpoint: {exc}", err=True)
        raise typer.Exit(2) from exc


async def _with_database(settings: Settings, work: Callable[[Database], Awaitable[T]]) -> T:
    database = Database(settings.sqlalchemy_url, pool_size=2)
    try:
        return await work(database)
    finally:
        await database.dispose()


TenantOption = Annotated[
    str, typer.Option("--tenant", help="Tenant id, or `platform` for the platform chain.")
]


@audit_app.command("verify")
def audit_verify(
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant", help="Tenant id, or `platform`; default: every chain, one line each."
        ),
    ] = None,
) -> None:
    """Recompute chains against their signed checkpoints; exit 1 when one is invalid."""
    from spawnpoint.audit.chain import tenant_of
    from spawnpoint.audit.service import chain_ids, verify_chain

    settings = load_settings()
    key = _signing_key(settings)

    async def run(database: Database) -> bool:
        chains = [_chain_option(tenant)] if tenant is not None else await chain_ids(database)
        valid = True
        for chain_id in chains:
            result = await verify_chain(database, key, chain_id)
            line = {
                "valid": result.valid,
                "checked": result.checked,
                "first_invalid_seq": result.first_invalid_seq,
                "reason": result.reason,
            }
            if tenant is None:
                line = {"tenant_id": str(tenant_of(chain_id)), **line}
            typer.echo(json.dumps(line))
            valid = valid and result.valid
        return valid

    if not asyncio.run(_with_database(settings, run)):
        raise typer.Exit(1)


@audit_app.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign a checkpoint of every chain head that moved since its last one."""
    from spawnpoint.audit.service import write_checkpoints

    settings = load_settings()
    key = _signing_key(settings)

    async def run(database: Database) -> int:
        async with database.transaction(write=True) as session:
            return len(await write_checkpoints(session, key))

    typer.echo(f"{asyncio.run(_with_database(settings, run))} checkpoints signed")


@audit_app.command("export")
def audit_export(
    tenant: TenantOption,
    since: Annotated[
        str | None, typer.Option(help="Entries at or after this time (ISO 8601; UTC if bare).")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(help="Up to the checkpoint covering the last entry before this time."),
    ] = None,
) -> None:
    """Write a chain's entries and the signed checkpoint covering them as JSON lines."""
    from spawnpoint.audit.service import export_chain

    settings = load_settings()
    key = _signing_key(settings)
    chain_id = _chain_option(tenant)
    start, end = _time_option(since), _time_option(until)

    async def run(database: Database) -> int:
        exported = await export_chain(
            database, key, chain_id, write=sys.stdout.write, since=start, until=end
        )
        return exported.entries

    count = asyncio.run(_with_database(settings, run))
    typer.echo(f"{count} entries exported", err=True)


@audit_app.command("partitions")
def audit_partitions(
    ahead: Annotated[int, typer.Option(min=0, max=120, help="Months after this one.")] = 3,
) -> None:
    """Create the audit log's monthly partitions ahead (PostgreSQL; nothing to do on SQLite)."""
    from spawnpoint.audit.archive import create_partitions_ahead

    settings = load_settings()

    async def run(database: Database) -> list[str]:
        async with database.transaction(write=True) as session:
            return await create_partitions_ahead(session, now=utcnow(), ahead=ahead)

    names = asyncio.run(_with_database(settings, run))
    typer.echo("\n".join(names) if names else "no partitions: the database is not PostgreSQL")


@audit_app.command("archive")
def audit_archive() -> None:
    """Archive the months past AUDIT_RETENTION_DAYS to DATA_DIR/audit-archive, then drop them."""
    from spawnpoint.audit.archive import archive_expired

    settings = load_settings()
    key = _signing_key(settings)

    async def run(database: Database) -> tuple[list[str], int]:
        async with database.transaction(write=True) as session:
            report = await archive_expired(
                session,
                key,
                data_dir=settings.data_dir,
                retention_days=settings.audit_retention_days,
                now=utcnow(),
            )
        return report.months, report.entries

    months, entries = asyncio.run(_with_database(settings, run))
    typer.echo(
        f"{entries} entries of {len(months)} months archived"
        + (f": {', '.join(months)}" if months else "")
    )


@events_app.command("relay")
def events_relay(
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Events published per batch.")
    ] = 500,
    poll_interval: Annotated[
        float, typer.Option(min=0.01, help="Longest wait between reads of the outbox.")
    ] = 1.0,
) -> None:
    """Publish the outbox to RABBITMQ_EVENTS_EXCHANGE until SIGTERM or SIGINT (one leader)."""
    from spawnpoint.events.relay import serve_relay

    settings = load_settings()
    if not settings.rabbitmq_url:
        _fail("the outbox relay needs RABBITMQ_URL")
    configure_logging(settings)
    asyncio.run(serve_relay(settings, batch_size=batch_size, poll_interval=poll_interval))


@cache_app.command("rebuild")
def cache_rebuild(
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Workspaces read and written per batch.")
    ] = 500,
    keep_orphans: Annotated[
        bool,
        typer.Option("--keep-orphans", help="Keep the keys of permits no workspace has any more."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace documents Redis holds at a newer version than the database's "
            "(after restoring the database from a backup).",
        ),
    ] = False,
) -> None:
    """Rewrite every permit workspace's status and connection documents in Redis."""
    from spawnpoint.workspaces.status_cache import StatusCache, attach_status_cache, rebuild

    settings = load_settings()
    if not settings.redis_url:
        _fail("the status cache needs REDIS_URL")

    async def run(database: Database) -> dict[str, int]:
        keeper = attach_status_cache(database, StatusCache.from_settings(settings))
        try:
            report = await rebuild(
                keeper, batch_size=batch_size, delete_orphans=not keep_orphans, force=force
            )
        finally:
            await keeper.aclose()
        return vars(report)

    report = asyncio.run(_with_database(settings, run))
    typer.echo(json.dumps(report))
    if report["failed"]:
        raise typer.Exit(1)


@events_app.command("consume")
def events_consume() -> None:
    """Apply permit events from RABBITMQ_QUEUE until SIGTERM or SIGINT (no job worker)."""
    from spawnpoint.permits.consumer import serve_consumer

    settings = load_settings()
    if not settings.rabbitmq_url:
        _fail("the permit consumer needs RABBITMQ_URL")
    configure_logging(settings)
    asyncio.run(serve_consumer(settings))


def main() -> None:
    sys.exit(app())
