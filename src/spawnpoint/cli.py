"""The `spawnpoint` command: serve, migrate, token."""

from __future__ import annotations

import asyncio
import gc
import re
import sys
from datetime import timedelta
from typing import Annotated, NoReturn

import typer
from sqlalchemy import select

from spawnpoint.config import Settings, UnsafeSettingsError
from spawnpoint.db import Database
from spawnpoint.models import User
from spawnpoint.security import mint_token

app = typer.Typer(
    help="spawnpoint: a multi-tenant control plane for workspaces.", no_args_is_help=True
)
token_app = typer.Typer(help="Mint access tokens for local use.", no_args_is_help=True)
app.add_typer(token_app, name="token")

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
    import logging

    import uvicorn

    from spawnpoint.app import create_app
    from spawnpoint.migrations import upgrade

    settings = load_settings()
    bind_host = host or settings.host
    try:
        settings.check_bind_host(bind_host)
    except UnsafeSettingsError as exc:
        refuse_to_start(exc)
    if migrate if migrate is not None else settings.sqlalchemy_url.startswith("sqlite"):
        upgrade(settings)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    app_ = create_app(settings, run_worker=worker)
    # Everything built so far lives for the whole process: move it out of the garbage
    # collector's sight, so full collections stay short under load.
    gc.collect()
    gc.freeze()
    uvicorn.run(
        app_,
        host=bind_host,
        port=port if port is not None else settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
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
            found: User | None = (
                await session.execute(select(User).where(User.email == email.lower()))
            ).scalar_one_or_none()
            return found
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
) -> None:
    """Run background jobs and the scheduler until SIGTERM or SIGINT."""
    import logging

    from spawnpoint.jobs.registry import default_registry
    from spawnpoint.jobs.worker import serve_worker
    from spawnpoint.runtime import periodic_tasks

    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    registry = default_registry(settings)
    for reference in handlers or []:
        registry.load_reference(reference)
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
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


def main() -> None:
    sys.exit(app())
