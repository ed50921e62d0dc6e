"""Device enrollment verbs: ``enroll-token``, ``enroll``, ``devices list`` / ``devices revoke``."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from fedgate.clients.identity import (
    KEY_FILE,
    DeviceIdentity,
    Enrollment,
    IdentityError,
    load_identity,
    read_enrollment,
    save_enrollment,
    save_trust_anchor,
    store_identity,
)
from fedgate.crypto import SignatureError, generate_key, read_public_key
from fedgate.server.enrollment import (
    DEFAULT_TOKEN_TTL,
    EnrollmentError,
    JsonDeviceRegistry,
    check_region_name,
    region_registry,
)

Region = Annotated[str, typer.Option("--region", help="Compliance region, e.g. eu.")]
Home = Annotated[
    Path,
    typer.Option("--home", envvar="FEDGATE_HOME", help="fedgate home holding regions/<region>/."),
]


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    try:
        yield
    except (CliError, EnrollmentError, IdentityError, SignatureError, FileExistsError) as exc:
        typer.secho(f"error: {exc}", err=True, fg="red")
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.secho(f"error: {exc.strerror or exc}: {exc.filename or ''}", err=True, fg="red")
        raise typer.Exit(1) from None


def _registry(home: Path, region: str) -> JsonDeviceRegistry:
    return region_registry(home, check_region_name(region))


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


def enroll_token(
    region: Region,
    home: Home,
    ttl_hours: Annotated[float, typer.Option(help="Hours until the token expires.")] = (
        DEFAULT_TOKEN_TTL / 3600
    ),
) -> None:
    """Issue a one-time enrollment token for REGION (printed once; only its hash is kept)."""
    with _clean_errors():
        token = _registry(home, region).issue_token(ttl_hours * 3600)
        typer.echo(token)
        typer.echo(f"one-time token for region {region}, expires in {ttl_hours:g} h", err=True)


def _device_key(device_dir: Path, force: bool) -> tuple[DeviceIdentity, bool]:
    """The key to enroll and whether it still has to be written (after registration)."""
    if (device_dir / KEY_FILE).exists() and not force:
        return load_identity(device_dir), False
    return DeviceIdentity(generate_key(), device_dir), True


def enroll(
    token: Annotated[str, typer.Option(help="One-time token from `fedgate enroll-token`.")],
    region: Region,
    home: Home,
    device_dir: Annotated[Path, typer.Option(help="Device directory holding device.key.")],
    profile: Annotated[str, typer.Option(help="Device profile: phone or pi.")] = "",
    region_key: Annotated[
        Path | None, typer.Option(help="Region server public key to trust (hex file).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing device key with a new one.")
    ] = False,
) -> None:
    """Enroll this device with REGION: make its key if missing and register it."""
    from fedgate.clients.profiles import PROFILES

    with _clean_errors():
        check_region_name(region)
        if profile and profile not in PROFILES:
            raise CliError(f"unknown profile {profile!r}; known: {', '.join(sorted(PROFILES))}")
        previous = read_enrollment(device_dir)
        if previous is not None and not force:
            where = "this region" if previous.region == region else f"region {previous.region}"
            raise CliError(
                f"{device_dir} is already enrolled in {where} as {previous.device_id[:16]}; "
                "a device belongs to one region (use --force for a new key)"
            )
        anchor = read_public_key(region_key) if region_key is not None else None
        identity, new_key = _device_key(device_dir, force)
        device = _registry(home, region).enroll(token, identity.public_key, profile=profile)
        if new_key:
            store_identity(identity, force=force)
        save_enrollment(device_dir, Enrollment(region, device.device_id, profile))
        if anchor is not None:
            save_trust_anchor(device_dir, region, anchor)
        typer.echo(f"enrolled device {device.device_id} in region {region}")
        if new_key:
            typer.echo(f"new device key: {device_dir / KEY_FILE} (mode 0600)", err=True)


def list_devices(
    region: Region,
    home: Home,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List REGION's enrolled devices and whether they are revoked."""
    with _clean_errors():
        registry = _registry(home, region)
        devices = registry.devices()
        if as_json:
            rows = [{**d.to_json(), "revoked": d.revoked} for d in devices]
            typer.echo(json.dumps(rows, indent=2))
            return
        if not devices:
            typer.echo(f"no devices enrolled in region {region} ({registry.path})")
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"devices of region {region}", caption="--json shows full ids")
        for col in ("device id", "profile", "enrolled (UTC)", "revoked (UTC)"):
            table.add_column(col, no_wrap=True)
        for d in devices:
            table.add_row(
                d.device_id[:16], d.profile or "-", _when(d.enrolled_at), _when(d.revoked_at)
            )
        Console().print(table)


def revoke_device(
    device: Annotated[str, typer.Argument(help="Device id (or a unique prefix of 8+ chars).")],
    region: Region,
    home: Home,
) -> None:
    """Revoke DEVICE: its updates are rejected from the next verification on."""
    with _clean_errors():
        registry = _registry(home, region)
        revoked = registry.revoke(registry.resolve(device))
        typer.echo(f"revoked device {revoked.device_id} in region {region}")


def register_region(region_app: typer.Typer) -> None:
    """Operator verbs on ``fedgate region``: ``enroll-token``, ``devices``, ``revoke``."""
    region_app.command("enroll-token")(enroll_token)
    region_app.command("devices")(list_devices)
    region_app.command("revoke")(revoke_device)


def register_client(client_app: typer.Typer) -> None:
    """Device verbs on ``fedgate client``: ``enroll``."""
    client_app.command("enroll")(enroll)
