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
import time
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
    url: Annotated[
        str | None,
        typer.Option(
            help="The region's enrollment service as devices reach it, https://HOST:PORT "
            "(default: the one `fedgate up` runs under --home)."
        ),
    ] = None,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Print the bare one-time secret for `fedgate client enroll --region` on "
            "this machine (operator-local), not a network token.",
        ),
    ] = False,
    qr: Annotated[
        bool, typer.Option("--qr", help="Also draw the token as a QR code (for phones).")
    ] = False,
) -> None:
    """Issue a one-time enrollment token for REGION (printed once; only its hash is kept),
    a request signed by an operator's key.

    It prints one string holding the enrollment service URL, the SHA-256 of the region CA,
    the region, the expiry and the secret: all a device needs for `fedgate client enroll
    --token`. Without --url and no enrollment service running under --home (or with
    --local), it prints the bare secret for enrolling on this machine."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.launch.transport import local_service_url

    where = resolve_home(home)
    if not local and url is None:
        url = local_service_url(where, region)
    if url is not None and not url.startswith("https://"):
        raise typer.BadParameter("--url must start with https://")
    with operator_registry(home, region, db, actor_key) as registry:
        secret = registry.issue_token(ttl_hours * 3600)
    if local or url is None:
        typer.echo(secret)
        note = "" if local else " (no enrollment service running here: pass --url for devices)"
        typer.echo(
            f"operator-local one-time secret for region {region}, expires in {ttl_hours:g} h"
            f"{note}; use it with `fedgate client enroll --region {region} --token` on this "
            "machine",
            err=True,
        )
        return
    from fedgate.server.trust.enroll_run import network_token

    token = network_token(where, region, url.rstrip("/"), secret, time.time() + ttl_hours * 3600)
    typer.echo(token)
    if qr:
        import segno

        segno.make(token, error="l").terminal(compact=True)
    typer.echo(
        f"one-time enrollment token for region {region} at {url}, expires in {ttl_hours:g} h; "
        "on the device: fedgate client enroll --token TOKEN --profile pi",
        err=True,
    )


DeviceDir = Annotated[
    Path | None,
    typer.Option(
        "--device-home",
        "--device-dir",
        help="The device's own directory: keys, enrollment, trust anchors, Flower state "
        "(default: <home>/device).",
    ),
]


@friendly
def enroll(
    token: Annotated[
        str,
        typer.Option(
            help="The token from `fedgate region enroll-token`: a network token (fge1.…, "
            "all a device needs) or an operator-local secret (fgt_…, with --region)."
        ),
    ],
    profile: Annotated[str, typer.Option(help="Device profile: phone or pi.")],
    region: Annotated[
        str | None,
        typer.Option("--region", "-r", help="Region (operator-local secrets only)."),
    ] = None,
    home: Home = None,
    db: Db = None,
    device_dir: DeviceDir = None,
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
    """Enroll this device with a region.

    With a network token (fge1.…): over the network, from any machine that reaches the
    region's enrollment service; the token pins the region CA. With an operator-local
    secret (fgt_…) and --region: on the operator's machine, directly on the region's
    database and SuperLink (re-run on an enrolled device to retry the node key)."""
    # heavy import: loaded only when this verb runs
    from fedgate.clients.identity import KEY_FILE, check_profile, enroll_identity, read_enrollment
    from fedgate.enrollment_wire import is_network_token

    check_profile(profile)
    where = resolve_home(home)
    device_dir = device_dir or where / "device"
    if is_network_token(token):
        _enroll_network(token, profile, device_dir, force)
        return
    if region is None:
        raise typer.BadParameter(
            "an operator-local secret (fgt_…) needs --region; devices elsewhere need a "
            "network token (`fedgate region enroll-token --url …`)"
        )
    from fedgate.crypto import read_public_key
    from fedgate.server.launch.transport import control_target
    from fedgate.server.trust.enrollment import check_region_name, region_anchor, region_registry

    check_region_name(region)
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


def _enroll_network(token: str, profile: str, device_dir: Path, force: bool) -> None:
    """``client enroll`` with a network token (fedgate.clients.enroll_client)."""
    from fedgate.clients.enroll_client import check_token, enroll_over_network

    parsed = check_token(token)
    typer.echo(f"enrolling with region {parsed.region} at {parsed.url} (CA pinned by the token)")
    done = enroll_over_network(token, profile, device_dir, force=force)
    e = done.enrollment
    typer.echo(f"enrolled device {e.device_id} in region {e.region} (profile {e.profile})")
    node = "registered" if done.node_id is not None else "not needed (fleet without TLS)"
    typer.echo(f"node key {node}; fleet address {e.fleet}")
    typer.echo(f"keys and trust anchors in {device_dir} (private keys mode 0600)", err=True)
    typer.echo(f"next: fedgate client join --device-home {device_dir}")


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
        str | None,
        typer.Option(
            help="The region's device-facing (fleet proxy) address HOST:PORT (default: the "
            "one the region gave at network enrollment)."
        ),
    ] = None,
    home: Home = None,
    device_dir: DeviceDir = None,
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
    status_every: Annotated[
        float, typer.Option(help="Seconds between asking the region about this device.")
    ] = 10.0,
) -> None:
    """Join training until Ctrl-C: run this device's SuperNode and its ClientApp, showing
    each round (examples, loss, update sent, the region's verdict). A revoked device is
    told so and stops with exit 2."""
    # heavy import: loaded only when this verb runs
    from fedgate.clients.identity import IdentityError, read_enrollment
    from fedgate.clients.join import JoinSpec, exit_now
    from fedgate.clients.join import join as run_join

    device_dir = device_dir or resolve_home(home) / "device"
    enrollment = read_enrollment(device_dir)
    if enrollment is None:
        raise IdentityError(f"{device_dir} is not enrolled; run `fedgate client enroll`")
    superlink = superlink or enrollment.fleet or None
    if superlink is None:
        raise typer.BadParameter("--superlink HOST:PORT is needed (the region's fleet address)")
    ca = None
    if not insecure:
        ca = root_certificates or device_dir / "anchors" / f"{enrollment.region}-ca.pem"
        if not ca.is_file():
            raise IdentityError(f"no region CA at {ca}; pass --root-certificates")
    else:
        typer.secho("warning: --insecure: no TLS to the SuperLink", err=True, fg="yellow")
    spec = JoinSpec(device_dir, superlink, ca, runtime_port, data_dir, partition_id,
                    num_partitions)  # fmt: skip
    code = run_join(spec, echo=typer.echo, status_every=status_every)
    exit_now(code)  # not typer.Exit: see exit_now


@friendly
def enrollment_service(
    region: Region,
    fleet_address: Annotated[
        str, typer.Option(help="The fleet (proxy) address devices are given, HOST:PORT.")
    ],
    home: Home = None,
    db: Db = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (HTTPS).")] = 9095,
    public_url: Annotated[
        str | None,
        typer.Option(help="How devices reach this service (default: https://HOST:PORT)."),
    ] = None,
    superlink: Annotated[
        str | None,
        typer.Option(
            help="The SuperLink's operator address HOST:PORT (TLS, region CA) where node keys "
            "are registered; omit only for a fleet without TLS and node authentication."
        ),
    ] = None,
    rate: Annotated[float, typer.Option(help="Requests per second per client address.")] = 20.0,
    burst: Annotated[int, typer.Option(help="Requests a client address may burst.")] = 60,
) -> None:
    """Run REGION's enrollment service (HTTPS with the region's certificate) until stopped:
    devices enroll with one token, ask their status; it alone writes their records."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.trust.enroll_run import serve, service_settings, service_url

    where = resolve_home(home)
    url = public_url or service_url(host, port)
    settings = service_settings(
        where, region, fleet_address=fleet_address, public_url=url, superlink=superlink,
        db=db, rate=rate, burst=burst,
    )  # fmt: skip
    typer.echo(f"enrollment service of region {region} on {url} (fleet {fleet_address})")
    serve(settings, where, host, port)


@friendly
def status(
    home: Home = None,
    device_dir: DeviceDir = None,
    as_json: AsJson = False,
) -> None:
    """Ask this device's region whether it is active, revoked or unknown (signed with the
    device key), with the region's verdicts on its latest updates. Exit 2 if revoked."""
    from fedgate.clients.enroll_client import device_status

    device_dir = device_dir or resolve_home(home) / "device"
    answer = device_status(device_dir)
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    else:
        typer.echo(f"device {answer['device_id'][:16]} in region {answer['region']}: "
                   f"{answer['status']}")  # fmt: skip
        for u in answer.get("updates", []):
            why = f" ({u['reason']})" if u.get("reason") else ""
            typer.echo(f"  run {u['run']} round {u['round']}: {u['verdict']}{why}")
    if answer["status"] != "active":
        raise typer.Exit(2)


def register_region(region_app: typer.Typer) -> None:
    """Operator verbs on ``fedgate region``: ``enroll-token``, ``devices``, ``revoke``."""
    region_app.command("enroll-token")(enroll_token)
    region_app.command("devices")(list_devices)
    region_app.command("revoke")(revoke)
    region_app.command("enrollment-service")(enrollment_service)


def register_client(client_app: typer.Typer) -> None:
    """Device verbs on ``fedgate client``: ``enroll``, ``join``, ``status``."""
    client_app.command("enroll")(enroll)
    client_app.command("join")(join)
    client_app.command("status")(status)
