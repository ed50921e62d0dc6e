"""Device enrollment verbs.

Operators: ``fedgate region enroll-token``, ``fedgate region devices``, ``fedgate region
revoke``. Devices: ``fedgate client enroll``. All work on the region's database (see
``fedgate.server.enrollment.region_registry``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import SQLAlchemyError

from fedgate.clients.identity import KEY_FILE, IdentityError, check_profile, enroll_identity
from fedgate.crypto import SignatureError, read_public_key
from fedgate.server.db.engine import DatabaseError
from fedgate.server.enrollment import (
    DEFAULT_TOKEN_TTL,
    DatabaseDeviceRegistry,
    EnrollmentError,
    check_region_name,
    region_anchor,
    region_registry,
    revoke_device,
)

Region = Annotated[str, typer.Option("--region", help="Compliance region, e.g. eu.")]
Home = Annotated[
    Path | None,
    typer.Option("--home", help="State directory (default: $FEDGATE_HOME or ~/.fedgate)."),
]
Db = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="Region database URL (default: $FEDGATE_DB, else <home>/region-<region>.db).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    """Expected failures become one red ``error:`` line and exit status 1."""
    try:
        yield
    except (
        EnrollmentError,
        IdentityError,
        SignatureError,
        DatabaseError,
        FileExistsError,
    ) as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    except SQLAlchemyError as exc:
        first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        typer.secho(f"error: database: {first}", err=True, fg="red")
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.secho(f"error: {exc.strerror or exc}: {exc.filename or ''}", err=True, fg="red")
        raise typer.Exit(1) from None


def _home(home: Path | None) -> Path:
    from fedgate.server.cli_region import default_home

    return (home or default_home()).resolve()


def _registry(home: Path | None, region: str, db: str | None) -> DatabaseDeviceRegistry:
    return region_registry(_home(home), check_region_name(region), db)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def enroll_token(
    region: Region,
    home: Home = None,
    db: Db = None,
    ttl_hours: Annotated[float, typer.Option(help="Hours until the token expires.")] = (
        DEFAULT_TOKEN_TTL / 3600
    ),
) -> None:
    """Issue a one-time enrollment token for REGION (printed once; only its hash is kept)."""
    with _clean_errors(), _registry(home, region, db) as registry:
        token = registry.issue_token(ttl_hours * 3600)
        typer.echo(token)
        typer.echo(f"one-time token for region {region}, expires in {ttl_hours:g} h", err=True)


def enroll(
    token: Annotated[str, typer.Option(help="One-time token from `fedgate region enroll-token`.")],
    region: Region,
    profile: Annotated[str, typer.Option(help="Device profile: phone or pi.")],
    home: Home = None,
    db: Db = None,
    device_dir: Annotated[
        Path | None, typer.Option(help="Device directory for device.key (default: <home>/device).")
    ] = None,
    region_key: Annotated[
        Path | None,
        typer.Option(
            help="Region server public key to trust (default: <home>/keys/region-<region>.pub)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing device key with a new one.")
    ] = False,
) -> None:
    """Enroll this device with REGION: make its key if missing and register it."""
    with _clean_errors():
        check_region_name(region)
        check_profile(profile)
        where = _home(home)
        device_dir = device_dir or where / "device"
        anchor = read_public_key(region_key) if region_key else region_anchor(where, region)
        with region_registry(where, region, db) as registry:
            done = enroll_identity(
                device_dir,
                region,
                profile,
                anchor,
                lambda pub: registry.enroll(token, pub, profile=profile).device_id,
                force=force,
            )
        typer.echo(f"enrolled device {done.enrollment.device_id} in region {region}")
        if done.new_key:
            typer.echo(f"new device key: {device_dir / KEY_FILE} (mode 0600)", err=True)
        typer.echo(f"trusting region {region}'s server key: {done.anchor_path}", err=True)
        old = done.replaced
        if old is not None and old.device_id != done.enrollment.device_id:
            typer.echo(
                f"note: the old key {old.device_id[:16]} stays enrolled in region {old.region} "
                f"until revoked (`fedgate region revoke {old.device_id[:16]} "
                f"--region {old.region}`)",
                err=True,
            )


def list_devices(region: Region, home: Home = None, db: Db = None, as_json: AsJson = False) -> None:
    """List REGION's enrolled devices and whether they are revoked."""
    with _clean_errors(), _registry(home, region, db) as registry:
        devices = registry.devices()
        if as_json:
            typer.echo(json.dumps([d.to_json() for d in devices], indent=2))
            return
        if not devices:
            typer.echo(f"no devices enrolled in region {region} ({registry.url})")
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"devices of region {region}", caption="--json shows full ids")
        for col in ("device id", "profile", "status", "enrolled (UTC)", "revoked (UTC)"):
            table.add_column(col, no_wrap=True)
        for d in devices:
            status = "[red]revoked[/]" if d.revoked else "[green]active[/]"
            table.add_row(
                d.device_id[:16],
                d.profile or "-",
                status,
                _when(d.enrolled_at),
                _when(d.revoked_at),
            )
        Console().print(table)


def revoke(
    device: Annotated[str, typer.Argument(help="Device id (or a unique prefix of 8+ chars).")],
    region: Region,
    home: Home = None,
    db: Db = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
) -> None:
    """Revoke DEVICE: its updates are rejected from the next verification on."""
    with _clean_errors():
        revoked = revoke_device(_home(home), check_region_name(region), device, db, reason=reason)
        typer.echo(f"revoked device {revoked.device_id} in region {region}")


def register_region(region_app: typer.Typer) -> None:
    """Operator verbs on ``fedgate region``: ``enroll-token``, ``devices``, ``revoke``."""
    region_app.command("enroll-token")(enroll_token)
    region_app.command("devices")(list_devices)
    region_app.command("revoke")(revoke)


def register_client(client_app: typer.Typer) -> None:
    """Device verbs on ``fedgate client``: ``enroll``."""
    client_app.command("enroll")(enroll)
