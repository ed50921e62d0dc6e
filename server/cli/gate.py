"""``fedgate gate``: an approver's verbs on a regional artifact (check, approve, reject) and a
region's approver keys; ``fedgate region artifact show|verify``. Every decision is an audit event
in the region's chain; ``gate check`` exits 2 when any check fails (after printing the table)."""

from __future__ import annotations

# A verb imports what only it needs (Flower, torch, SQLAlchemy, ...) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedgate.home import resolve_home
from fedgate.server.cli.common import ActorKeyOpt as ActorKey
from fedgate.server.cli.common import DbOpt as Db
from fedgate.server.cli.common import HomeOpt, console, operator_registry
from fedgate.server.cli.common import JsonOpt as AsJson
from fedgate.server.cli.common import RegionOpt as Region

if TYPE_CHECKING:
    from fedgate.server.gate.policy import Check, Policy
    from fedgate.server.region.artifact import Artifact

ArtifactArg = Annotated[
    str, typer.Argument(help="The artifact: its .dsse.json file, or the weights' digest (8+ hex).")
]
PolicyOpt = Annotated[
    Path | None,
    typer.Option("--policy", help="Policy TOML (default: <home>/regions/<region>/policy.toml)."),
]
ApproverKey = Annotated[
    Path, typer.Option("--key", help="Your approver private key (not the region server's).")
]

gate_app = typer.Typer(help="The approval gate: policy checks and approvers' signed decisions.")
approvers_app = typer.Typer(help="A region's approver keys (actors with the approver role).")
artifact_app = typer.Typer(help="A finished run's regional artifact: weights + signed manifest.")


def _verified(home: Path | None, ref: str) -> tuple[Path, Artifact]:
    # heavy import: loaded only when a verb runs
    from fedgate.server.region.artifact import verify_artifact

    where = resolve_home(home)
    return where, verify_artifact(where, ref)


def _policy(where: Path, region: str, path: Path | None) -> Policy:
    from fedgate.server.gate.policy import load_policy

    return load_policy(where, region, path)


def _table(checks: list[Check], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("check", "result", "measured", "limit"):
        table.add_column(col, no_wrap=True)
    for c in checks:
        result = "[green]pass[/]" if c.passed else "[red]FAIL[/]"
        if not c.applicable:
            result = "[dim]n/a[/]"
        table.add_row(c.name, result, c.measured, c.limit)
    console.print(table)


@gate_app.command("check")
def check(
    artifact: ArtifactArg, home: HomeOpt = None, policy: PolicyOpt = None, as_json: AsJson = False
) -> None:
    """Verify ARTIFACT and evaluate every policy check (exit 2 if any fails)."""
    from fedgate.server.gate.decisions import GateRefused, failures
    from fedgate.server.gate.policy import base_accuracy, evaluate

    where, found = _verified(home, artifact)
    rules = _policy(where, found.manifest.region, policy)
    checks = evaluate(found.manifest, rules, base_accuracy(found.manifest))
    if as_json:
        typer.echo(json.dumps({"artifact": found.sha256, "policy_sha256": rules.digest,
                               "checks": [c.to_json() for c in checks]}, indent=2))  # fmt: skip
    else:
        _table(checks, f"gate checks: artifact {found.sha256[:16]} (policy {rules.digest[:12]})")
    failed = failures(checks)
    if failed:
        raise GateRefused(f"{len(failed)} check(s) fail: {', '.join(c.name for c in failed)}")


@gate_app.command("approve")
def approve_cmd(
    artifact: ArtifactArg,
    key: ApproverKey,
    home: HomeOpt = None,
    db: Db = None,
    policy: PolicyOpt = None,
) -> None:
    """Sign an approval of ARTIFACT with your approver key, only if every check passes."""
    from fedgate.crypto import load_private_key
    from fedgate.server.gate.decisions import approve

    where, found = _verified(home, artifact)
    region = found.manifest.region
    rules = _policy(where, region, policy)
    signer = load_private_key(key)
    with operator_registry(where, region, db) as registry:
        decision = approve(where, registry.store, found, rules, signer)
    _table(list(decision.checks), f"approved: artifact {found.sha256[:16]}")
    typer.echo(f"approval statement: {decision.statement_path}")


@gate_app.command("reject")
def reject_cmd(
    artifact: ArtifactArg,
    reason: Annotated[str, typer.Option("--reason", help="Why the artifact is refused.")],
    key: Annotated[
        Path | None, typer.Option("--key", help="Your approver private key (recorded as who).")
    ] = None,
    home: HomeOpt = None,
    db: Db = None,
    policy: PolicyOpt = None,
) -> None:
    """Record a refusal of ARTIFACT with REASON (and every check's result)."""
    from fedgate.crypto import load_private_key
    from fedgate.server.gate.decisions import reject

    where, found = _verified(home, artifact)
    region = found.manifest.region
    rules = _policy(where, region, policy)
    signer = None if key is None else load_private_key(key)
    with operator_registry(where, region, db) as registry:
        reject(where, registry.store, found, rules, reason, signer)
    typer.echo(f"refused artifact {found.sha256[:16]} of region {region}: {reason}")


@approvers_app.command("add")
def approvers_add(
    region: Region,
    name: Annotated[str, typer.Option(help="Who holds the key, e.g. alice.")],
    pub: Annotated[Path, typer.Option("--pub", help="Their public key file (hex).")],
    home: HomeOpt = None,
    db: Db = None,
    key: ActorKey = None,
) -> None:
    """Register NAME's public key as an approver of REGION (signed by an operator)."""
    from fedgate.crypto import read_public_key
    from fedgate.server.gate.approvers import add_approver

    where = resolve_home(home)
    public = read_public_key(pub)
    with operator_registry(where, region, db, key) as registry:
        actor = add_approver(where, registry.store, region, name, public, registry.actor_key)
    typer.echo(f"registered {actor.label} as approver of region {region}")


@approvers_app.command("list")
def approvers_list(
    region: Region, home: HomeOpt = None, db: Db = None, as_json: AsJson = False
) -> None:
    """List REGION's approvers, as its audit chain says."""
    from fedgate.server.gate.approvers import list_approvers
    from fedgate.server.trust.actors import dumps

    with operator_registry(home, region, db) as registry:
        found = list_approvers(registry.store, region)
    if as_json:
        typer.echo(dumps(found))
        return
    if not found:
        typer.echo(f"no approvers registered in region {region}")
    for a in found:
        typer.echo(f"{a.name}\t{a.fingerprint}\tadded at seq {a.seq}")


@approvers_app.command("remove")
def approvers_remove(
    who: Annotated[str, typer.Argument(help="Approver name, or 8+ hex digits of its key id.")],
    region: Region,
    home: HomeOpt = None,
    db: Db = None,
    key: ActorKey = None,
) -> None:
    """Remove an approver: its key decides nothing in REGION from now on."""
    from fedgate.server.gate.approvers import remove_approver

    with operator_registry(home, region, db, key) as registry:
        actor = remove_approver(registry.store, region, who, registry.actor_key)
    typer.echo(f"removed approver {actor.label} from region {region}")


def _describe(found: Artifact) -> dict[str, Any]:
    return {"artifact": found.sha256, "envelope": str(found.path),
            "envelope_sha256": found.envelope_sha256, "subject": found.statement.subject.name,
            "manifest": found.manifest.to_json()}  # fmt: skip


@artifact_app.command("show")
def artifact_show(artifact: ArtifactArg, home: HomeOpt = None, as_json: AsJson = False) -> None:
    """Print an artifact's manifest (NOT verified: use `verify`)."""
    from fedgate.server.region.artifact import load_artifact

    found = load_artifact(resolve_home(home), artifact)
    if as_json:
        typer.echo(json.dumps(_describe(found), indent=2))
        return
    typer.echo(f"artifact {found.sha256}  ({found.path}; signatures not checked)")
    for name, value in found.manifest.to_json().items():
        typer.echo(f"  {name:22} {value}")


@artifact_app.command("verify")
def artifact_verify(artifact: ArtifactArg, home: HomeOpt = None) -> None:
    """Check an artifact: the region key's signature, its manifest, and the weights' digest."""
    found = _verified(home, artifact)[1]
    m = found.manifest
    typer.echo(f"verified: artifact {found.sha256} of region {m.region}, run {m.run_id}, "
               f"signed by the region key; weights match")  # fmt: skip


@artifact_app.command("export")
def artifact_export(
    artifact: ArtifactArg,
    home: HomeOpt = None,
    to: Annotated[
        Path | None,
        typer.Option("--to", help="The coordinator's inbox (default: <home>/coordinator/inbox)."),
    ] = None,
) -> None:
    """Hand an approved ARTIFACT to the coordinator: its manifest, approvals and weights as one
    bundle directory in the inbox (written whole or not at all)."""
    from fedgate.server.coordinator.service import default_inbox
    from fedgate.server.gate.export import approvals_of, export_bundle

    where, found = _verified(home, artifact)
    target = export_bundle(where, found, to or default_inbox(where))
    count = len(approvals_of(where, found.sha256))
    typer.echo(f"exported artifact {found.sha256[:16]} of region {found.manifest.region} with "
               f"{count} approval(s) to {target}")  # fmt: skip


def register(app: typer.Typer, region_app: typer.Typer) -> None:
    """Attach ``gate`` (with ``approvers``) to ``fedgate`` and ``artifact`` to ``region``."""
    gate_app.add_typer(approvers_app, name="approvers")
    app.add_typer(gate_app, name="gate")
    region_app.add_typer(artifact_app, name="artifact")
