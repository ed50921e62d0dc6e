"""``fedgate region actors``: the operator and approver keys registered with a region.

Every change is an audit event in the region's chain (``actor.added`` / ``actor.removed``),
signed, once the region has an operator, by an operator's ``--actor-key``.
"""

from __future__ import annotations

# A verb imports what only it needs (Flower, torch, SQLAlchemy, ...) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedgate.home import resolve_home
from fedgate.server.cli.common import DbOpt as Db
from fedgate.server.cli.common import HomeOpt
from fedgate.server.cli.common import JsonOpt as AsJson
from fedgate.server.cli.common import RegionOpt as Region

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedgate.server.trust.enrollment import DatabaseDeviceRegistry

ActorKey = Annotated[
    Path | None,
    typer.Option(
        "--actor-key",
        help="Your (an operator's) private key that signs this request "
        "(default: <home>/keys/operator.key).",
    ),
]

actors_app = typer.Typer(help="Operator and approver keys registered with a region.")


def actor_key(path: Path | None) -> Ed25519PrivateKey | None:
    """The ``--actor-key`` given, loaded (None: the registry's default, the home's key)."""
    # heavy import: loaded only when a verb runs
    from fedgate.server.trust.actors import load_actor_key

    return None if path is None else load_actor_key(path)


def _registry(home: Path | None, region: str, db: str | None, key: Path | None = None):
    # heavy import: loaded only when a verb runs
    from fedgate.server.trust.enrollment import check_region_name, region_registry

    where = resolve_home(home)
    return region_registry(
        where, check_region_name(region), db, create=False, actor_key=actor_key(key)
    )


def _store(registry: DatabaseDeviceRegistry):
    return registry.store


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
    with _registry(home, region, db, key) as registry:
        actor = add_actor(_store(registry), region, name, role, public, registry.actor_key)
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

    with _registry(home, region, db, key) as registry:
        actor = remove_actor(_store(registry), region, who, registry.actor_key)
    typer.echo(f"removed {actor.label} ({actor.role}) from region {region}")


@actors_app.command("list")
def list_actors(
    region: Region, home: HomeOpt = None, db: Db = None, as_json: AsJson = False
) -> None:
    """List REGION's registered actors, as its audit chain says."""
    # heavy import: loaded only when this verb runs
    from fedgate.server.trust.actors import actors, dumps

    with _registry(home, region, db) as registry:
        found = actors(_store(registry), region)
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
