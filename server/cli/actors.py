"""``fedgate region actors``: the operator and approver keys registered with a region.

Every change is an audit event in the region's chain (``actor.added`` / ``actor.removed``),
signed, once the region has an operator, by an operator's ``--actor-key``.
"""

from __future__ import annotations

# A verb imports what only it needs (Flower, torch, SQLAlchemy, ...) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
from pathlib import Path
from typing import Annotated

import typer

from fedgate.server.cli.common import ActorKeyOpt as ActorKey
from fedgate.server.cli.common import DbOpt as Db
from fedgate.server.cli.common import HomeOpt, operator_registry
from fedgate.server.cli.common import JsonOpt as AsJson
from fedgate.server.cli.common import RegionOpt as Region

actors_app = typer.Typer(help="Operator and approver keys registered with a region.")


@actors_app.command("add")
def add(
    region: Region,
    role: Annotated[str, typer.Option(help="operator or approver.")],
    name: Annotated[str, typer.Option(help="Who holds the key, e.g. alice.")],
    pub: Annotated[
        Path, typer.Option("--pub", help="Their public key file (hex; `actors keygen` writes one).")
    ],
    home: HomeOpt = None,
    db: Db = None,
    key: ActorKey = None,
) -> None:
    """Register NAME's public key as REGION's operator or approver."""
    # heavy import: loaded only when this verb runs
    from fedgate.crypto import read_public_key
    from fedgate.server.trust.actors import add_actor

    public = read_public_key(pub)
    with operator_registry(home, region, db, key) as registry:
        actor = add_actor(registry.store, region, name, role, public, registry.actor_key)
    typer.echo(f"registered {actor.label} as {actor.role} of region {region}")


@actors_app.command("remove")
def remove(
    who: Annotated[str, typer.Argument(help="Actor name, or 8+ hex digits of its fingerprint.")],
    region: Region,
    home: HomeOpt = None,
    db: Db = None,
    key: ActorKey = None,
) -> None:
    """Remove an actor: its key signs nothing in REGION from now on."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.trust.actors import remove_actor

    with operator_registry(home, region, db, key) as registry:
        actor = remove_actor(registry.store, region, who, registry.actor_key)
    typer.echo(f"removed {actor.label} ({actor.role}) from region {region}")


@actors_app.command("list")
def list_actors(
    region: Region, home: HomeOpt = None, db: Db = None, as_json: AsJson = False
) -> None:
    """List REGION's registered actors, as its audit chain says."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.trust.actors import actors, dumps

    with operator_registry(home, region, db) as registry:
        found = actors(registry.store, region)
    if as_json:
        typer.echo(dumps(found))
        return
    if not found:
        typer.echo(f"no actors registered in region {region}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"actors of region {region}", caption="--json shows full keys")
    for col in ("name", "role", "fingerprint", "added at seq"):
        table.add_column(col, no_wrap=True)
    for a in found:
        table.add_row(a.name, a.role, a.fingerprint[:16], str(a.seq))
    Console().print(table)


@actors_app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Private key file to write (mode 0600).")],
) -> None:
    """Make an actor key pair: OUT (private, 0600) and its public key beside it as .pubkey (hex,
    for `actors add --pub`; not .pub, so a directory of audit keys never picks it up)."""
    # heavy import: loaded only when this verb runs
    from fedgate.crypto import fingerprint, generate_key, save_private_key, save_public_key

    key = generate_key()
    save_private_key(key, out)
    pub = out.with_suffix(".pubkey")
    save_public_key(key, pub)
    typer.echo(f"{out} (mode 0600) and {pub}; key id {fingerprint(key)[:16]}")


def register(region_app: typer.Typer) -> None:
    """Attach ``actors`` to ``fedgate region``."""
    region_app.add_typer(actors_app, name="actors")
