"""Device enrollment verbs.

Operators: ``fedgate region enroll-token``, ``fedgate region devices``, ``fedgate region
revoke``. Devices: ``fedgate client enroll``. All work on the region's database (see
``fedgate.server.trust.enrollment.region_registry``).
"""

from __future__ import annotations

# A verb imports what only it needs (Flower, torch, SQLAlchemy, ...) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer

from fedgate.atomic_file import write_atomic
from fedgate.home import resolve_home
from fedgate.server.cli.common import ActorKeyOpt as ActorKey
from fedgate.server.cli.common import DbOpt as Db
from fedgate.server.cli.common import HomeOpt as Home
from fedgate.server.cli.common import JsonOpt as AsJson
from fedgate.server.cli.common import RegionOpt as Region
from fedgate.server.cli.common import friendly, operator_registry
from fedgate.server.trust.enrollment_limits import DEFAULT_TOKEN_TTL

Superlink = Annotated[
    str | None,
    typer.Option(
        help="The region SuperLink's operator address HOST:PORT, to (un)register the device's "
        "node key (default: the local topology under --home, if it runs).",
    ),
]
RootCerts = Annotated[
    Path | None,
    typer.Option(
        help="Region CA to trust at --superlink (default: <home>/regions/<r>/tls/ca.pem)."
    ),
]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="--superlink speaks plain HTTP (experiments only).")
]


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M")


@friendly
def enroll_token(
    region: Region,
    home: Home = None,
    db: Db = None,
    ttl_hours: Annotated[float, typer.Option(help="Hours until the token expires.")] = (
        DEFAULT_TOKEN_TTL / 3600
    ),
    actor_key: ActorKey = None,
) -> None:
    """Issue a one-time enrollment token for REGION (printed once; only its hash is kept),
    a request signed by an operator's key."""
    with operator_registry(home, region, db, actor_key) as registry:
        token = registry.issue_token(ttl_hours * 3600)
        typer.echo(token)
        typer.echo(f"one-time token for region {region}, expires in {ttl_hours:g} h", err=True)


@friendly
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
    superlink: Superlink = None,
    root_certificates: RootCerts = None,
    insecure: InsecureOpt = False,
) -> None:
    """Enroll this device with REGION: its signing key with the region's registry, its node
    key with the region's SuperLink. Re-run on an enrolled device to retry the node key."""
    # heavy import: loaded only when this verb runs
    from fedgate.clients.identity import KEY_FILE, check_profile, enroll_identity, read_enrollment
    from fedgate.crypto import read_public_key
    from fedgate.server.launch.transport import control_target
    from fedgate.server.trust.enrollment import check_region_name, region_anchor, region_registry

    check_region_name(region)
    check_profile(profile)
    where = resolve_home(home)
    device_dir = device_dir or where / "device"
    target = control_target(where, region, superlink, root_certificates, insecure)
    previous = read_enrollment(device_dir)
    if previous is not None and previous.region == region and not force:
        typer.echo(f"device {previous.device_id} is already enrolled in region {region}")
        _node_key(target, device_dir, previous.device_id, region)
        return
    anchor = read_public_key(region_key) if region_key else region_anchor(where, region)
    with region_registry(where, region, db, create=False) as registry:
        done = enroll_identity(
            device_dir,
            region,
            profile,
            anchor,
            lambda pub: registry.enroll(token, pub, profile=profile).device_id,
            force=force,
        )
    typer.echo(f"enrolled device {done.enrollment.device_id} in region {region}")
    _node_key(target, device_dir, done.enrollment.device_id, region)
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


def _node_key(target, device_dir: Path, device_id: str, region: str) -> None:
    """Make and (if a SuperLink is known) register the node key; keep the region CA beside it."""
    # heavy import: loaded only when a verb runs
    from fedgate.server.trust.node_registration import register_device_node

    if target is not None and target.root_certificates is not None:
        ca = device_dir / "anchors" / f"{region}-ca.pem"
        write_atomic(ca, Path(target.root_certificates).read_bytes())
    node, node_id = register_device_node(target, device_dir, device_id)
    if node_id is None:
        typer.echo(
            f"node key {node.public_path}: not registered yet (no SuperLink of region {region} "
            "given or running); re-run with --superlink HOST:PORT to register it",
            err=True,
        )
    else:
        typer.echo(f"node key registered with the SuperLink at {target.address} (node {node_id})")


@friendly
def list_devices(region: Region, home: Home = None, db: Db = None, as_json: AsJson = False) -> None:
    """List REGION's enrolled devices and whether they are revoked (creates nothing)."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.db.engine import parse_url, resolve_url, sqlite_path
    from fedgate.server.trust.enrollment import check_region_name, existing_region_key

    url = parse_url(resolve_url(db, resolve_home(home), check_region_name(region)))
    missing = sqlite_path(url) if url.get_backend_name() == "sqlite" else None
    if missing is not None and not missing.exists():  # never create a database to list it
        existing_region_key(resolve_home(home), region)  # a region never set up here: say so
        typer.echo(
            "[]"
            if as_json
            else f"no devices enrolled in region {region} (no database yet at {missing})"
        )
        return
    with operator_registry(home, region, db) as registry:
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


@friendly
def revoke(
    device: Annotated[str, typer.Argument(help="Device id (or a unique prefix of 8+ chars).")],
    region: Region,
    home: Home = None,
    db: Db = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit log.")] = "",
    superlink: Superlink = None,
    root_certificates: RootCerts = None,
    insecure: InsecureOpt = False,
    actor_key: ActorKey = None,
) -> None:
    """Revoke DEVICE (a request signed by an operator's key): its updates are rejected from
    the next verification on, and its node key is unregistered at the region's SuperLink (it
    can no longer connect)."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.launch.transport import control_target
    from fedgate.server.trust.node_registration import unregister_device_node

    where = resolve_home(home)
    with operator_registry(home, region, db, actor_key) as registry:
        revoked = registry.revoke(registry.resolve(device), reason=reason)
    typer.echo(f"revoked device {revoked.device_id} in region {region}")
    target = control_target(where, region, superlink, root_certificates, insecure)
    dropped = unregister_device_node(target, revoked.device_id)
    if dropped is None:
        typer.echo(
            "its node key was not unregistered: no SuperLink given (--superlink) or running",
            err=True,
        )
    else:
        typer.echo(f"unregistered node(s) {dropped} at {target.address}")


@friendly
def join(
    superlink: Annotated[
        str, typer.Option(help="The region's device-facing (fleet proxy) address HOST:PORT.")
    ],
    home: Home = None,
    device_dir: Annotated[
        Path | None, typer.Option(help="The enrolled device directory (default: <home>/device).")
    ] = None,
    root_certificates: Annotated[
        Path | None,
        typer.Option(help="Region CA (default: <device-dir>/anchors/<region>-ca.pem)."),
    ] = None,
    insecure: InsecureOpt = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="This device's own data: a directory of .npz files.")
    ] = None,
    partition_id: Annotated[int, typer.Option(help="Digits shard (without --data-dir).")] = 0,
    num_partitions: Annotated[int, typer.Option(help="Shards of the digits pool.")] = 1,
    runtime_port: Annotated[
        int, typer.Option(help="Loopback port for the SuperNode's runtime API.")
    ] = 9094,
) -> None:
    """Join training: run this device's SuperNode and its ClientApp until Ctrl-C."""
    # heavy import: loaded only when this verb runs
    from fedgate.clients.identity import IdentityError, read_enrollment
    from fedgate.clients.join import JoinSpec
    from fedgate.clients.join import join as run_join

    device_dir = device_dir or resolve_home(home) / "device"
    enrollment = read_enrollment(device_dir)
    if enrollment is None:
        raise IdentityError(f"{device_dir} is not enrolled; run `fedgate client enroll`")
    ca = None
    if not insecure:
        ca = root_certificates or device_dir / "anchors" / f"{enrollment.region}-ca.pem"
        if not ca.is_file():
            raise IdentityError(f"no region CA at {ca}; pass --root-certificates")
    else:
        typer.secho("warning: --insecure: no TLS to the SuperLink", err=True, fg="yellow")
    spec = JoinSpec(device_dir, superlink, ca, runtime_port, data_dir, partition_id,
                    num_partitions)  # fmt: skip
    code = run_join(spec, echo=typer.echo)
    raise typer.Exit(code)


def register_region(region_app: typer.Typer) -> None:
    """Operator verbs on ``fedgate region``: ``enroll-token``, ``devices``, ``revoke``."""
    region_app.command("enroll-token")(enroll_token)
    region_app.command("devices")(list_devices)
    region_app.command("revoke")(revoke)


def register_client(client_app: typer.Typer) -> None:
    """Device verbs on ``fedgate client``: ``enroll``, ``join``."""
    client_app.command("enroll")(enroll)
    client_app.command("join")(join)
