"""``fedgate region init``: a region's CA, server certificate, signing key and first operator,
in one step."""

from __future__ import annotations

# A verb imports what only it needs (Flower, torch, SQLAlchemy, ...) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedgate.atomic_file import PUBLIC, write_atomic
from fedgate.home import resolve_home
from fedgate.server.cli.common import friendly

if TYPE_CHECKING:
    from fedgate.server.trust.pki import RegionTls


def export_public(tls: RegionTls, region_pub: Path, directory: Path) -> list[Path]:
    """Copy the region's public material (CA certificate, signing public key) to
    ``directory``, world-readable; never a private key."""
    directory.mkdir(parents=True, exist_ok=True)
    copied = []
    for source in (tls.ca_cert, region_pub):
        target = directory / source.name
        write_atomic(target, source.read_bytes(), mode=PUBLIC)
        copied.append(target)
    return copied


@friendly
def region_init(
    region: Annotated[str, typer.Option("--region", "-r", help="Region to set up, e.g. eu.")],
    home: Annotated[
        Path | None,
        typer.Option("--home", help="State directory (default: $FEDGATE_HOME or ~/.fedgate)."),
    ] = None,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            help="Extra DNS name or IP address devices and operators use for this region's "
            "SuperLink or proxy (repeatable); localhost and 127.0.0.1 are always included.",
        ),
    ] = None,
    public_dir: Annotated[
        Path | None,
        typer.Option(
            "--public-dir",
            help="Also copy what devices need (ca.pem and the region's public signing key) "
            "into this directory, e.g. a volume shared with device containers.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace the CA and server certificate (every device then needs the new "
            "ca.pem). The region signing key is never replaced.",
        ),
    ] = False,
) -> None:
    """Create REGION's TLS CA and server certificate, its signing key and the home's operator
    key, registered as the region's local-operator if it has no operator yet (idempotent)."""
    # heavy import: loaded only when this verb runs
    from fedgate.crypto import fingerprint
    from fedgate.server.audit.keys import ensure_region_key, region_pub_path
    from fedgate.server.trust.actors import ensure_region_operator, operator_key_path
    from fedgate.server.trust.pki import ensure_region_pki

    home = resolve_home(home)
    result = ensure_region_pki(home, region, host or (), force=force)
    key = ensure_region_key(home, region)
    operator = ensure_region_operator(home, region)
    if public_dir is not None:
        copied = export_public(result.tls, region_pub_path(home, region), public_dir)
    tls = result.tls
    ca = "new" if result.created_ca else "kept"
    server = f"issued ({result.reason})" if result.issued_server else "kept"
    typer.echo(f"region {region} in {home}")
    typer.echo(f"  CA certificate  {tls.ca_cert} ({ca}; give this file to devices and operators)")
    typer.echo(f"  CA key          {tls.ca_key} (mode 0600; keep offline once issued)")
    typer.echo(
        f"  server cert     {tls.server_cert} ({server}, valid to {result.not_after:%Y-%m-%d})"
    )
    typer.echo(f"  server key      {tls.server_key} (mode 0600; SuperLink and fleet proxy only)")
    typer.echo(f"  names           {', '.join(result.names)}")
    typer.echo(f"  signing key     {region_pub_path(home, region)} (id {fingerprint(key)[:16]})")
    registered = f"registered as {operator.label}" if operator else "kept"
    typer.echo(f"  operator key    {operator_key_path(home)} (mode 0600; {registered})")
    if public_dir is not None:
        typer.echo(f"  public copies   {', '.join(str(p) for p in copied)}")


def register(region_app: typer.Typer) -> None:
    """Attach ``init`` to ``fedgate region``."""
    region_app.command("init")(region_init)
