"""``fedgate coordinator``: the global coordinator's verbs (init, merge, serve, status).

Refusals are printed (one line each: bundle, reason, detail) and recorded in the coordinator's
database and signed audit chain (``fedgate audit verify --coordinator``).
"""

from __future__ import annotations

# A verb imports what only it needs (SQLAlchemy, numpy, ...) inside its body, when it runs:
# `fedgate --help` loads none of it (tests/test_cli_startup.py).
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from fedgate.server.cli.common import HomeOpt, JsonOpt, console, err, resolve_home

if TYPE_CHECKING:
    from fedgate.server.coordinator.service import Coordinator, Outcome

CoordDbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Coordinator database URL (default: <home>/coordinator.db)."),
]
FederationOpt = Annotated[
    Path | None,
    typer.Option(
        "--federation",
        help="Federation TOML: regions, their keys and approvers "
        "(default: <home>/coordinator/federation.toml).",
    ),
]
InboxOpt = Annotated[
    Path | None,
    typer.Option(
        "--inbox", help="Directory of regional bundles (default: <home>/coordinator/inbox)."
    ),
]


def _open(home: Path | None, db: str | None, federation: Path | None) -> Coordinator:
    from fedgate.server.coordinator.service import Coordinator

    return Coordinator(resolve_home(home), db, federation)


def _print(outcome: Outcome, as_json: bool) -> None:
    from fedgate.server.coordinator.versions import describe, to_json

    for refusal in outcome.refusals:
        if as_json:
            sys.stdout.write(json.dumps({"refused": refusal.__dict__}, sort_keys=True) + "\n")
        else:
            err.print(f"[red]refused[/red] {escape(str(refusal))}", highlight=False)
    if outcome.published is not None:
        if as_json:
            sys.stdout.write(to_json(outcome.published) + "\n")
        else:
            console.print(describe(outcome.published), highlight=False)


def init(home: HomeOpt = None, db: CoordDbOpt = None) -> None:
    """Create the coordinator's key (<home>/keys/coordinator.key) and database."""
    from fedgate.server.audit.keys import coordinator_key_path, coordinator_pub_path, ensure_key
    from fedgate.server.coordinator.store import CoordinatorStore
    from fedgate.server.db.engine import coordinator_url

    where = resolve_home(home)
    ensure_key(coordinator_key_path(where), coordinator_pub_path(where))
    store = CoordinatorStore.open(db or coordinator_url(where))
    console.print(
        f"coordinator key {coordinator_pub_path(where)}; database "
        f"{store.engine.url.render_as_string(hide_password=True)}; current global version "
        f"{store.current_version()}",
        highlight=False,
    )


def merge(
    home: HomeOpt = None,
    db: CoordDbOpt = None,
    federation: FederationOpt = None,
    inbox: InboxOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Verify every regional bundle in the inbox and merge the accepted ones into the next
    global version; print and record each refusal."""
    from fedgate.server.coordinator.merge import MergeError
    from fedgate.server.coordinator.service import default_inbox

    coordinator = _open(home, db, federation)
    where = inbox or default_inbox(coordinator.home)
    outcome = coordinator.merge_once(where)
    _print(outcome, as_json)
    if outcome.published is None:
        raise MergeError(
            f"nothing to merge: none of the {len(outcome.refusals)} bundle(s) in {where} "
            "was accepted (refusals recorded)"
        )


def serve(
    home: HomeOpt = None,
    db: CoordDbOpt = None,
    federation: FederationOpt = None,
    inbox: InboxOpt = None,
    poll: Annotated[float, typer.Option("--poll", help="Seconds between inbox scans.")] = 2.0,
    deadline: Annotated[
        float | None,
        typer.Option(
            "--deadline",
            help="Merge what is accepted this many seconds after the last version "
            "(default: the federation's deadline_seconds).",
        ),
    ] = None,
    max_versions: Annotated[
        int | None, typer.Option("--max-versions", help="Stop after this many versions.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Long-running: merge when every region has an accepted artifact or the deadline passes."""
    from fedgate.server.coordinator.service import default_inbox

    coordinator = _open(home, db, federation)
    where = inbox or default_inbox(coordinator.home)
    err.print(f"coordinator watching {where} (Ctrl-C to stop)", highlight=False)
    coordinator.serve(
        where, poll=poll, deadline=deadline, max_versions=max_versions,
        report=lambda outcome: _print(outcome, as_json),
    )  # fmt: skip


def status(home: HomeOpt = None, db: CoordDbOpt = None, as_json: JsonOpt = False) -> None:
    """The current global version and every version's weights, statement and rule."""
    from fedgate.server.coordinator.store import CoordinatorStore
    from fedgate.server.db.engine import coordinator_url
    from fedgate.server.db.migrate import open_readonly

    where = resolve_home(home)
    store = CoordinatorStore(open_readonly(db or coordinator_url(where)))
    versions = store.versions()
    if as_json:
        rows = [{**v.__dict__, "created_at": v.created_at.isoformat()} for v in versions]
        out = {"current": store.current_version(), "versions": rows}
        sys.stdout.write(json.dumps(out, sort_keys=True, indent=2) + "\n")
        return
    console.print(f"current global version: {store.current_version()}", highlight=False)
    for v in versions:
        console.print(
            f"  v{v.version} (from v{v.base_version}) {v.rule}, {v.regions} region(s), weights "
            f"{v.weights_sha256[:16]}, statement {v.statement_sha256[:16]}",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Attach the ``coordinator`` sub-app to ``app``."""
    coordinator = typer.Typer(
        help="Global coordinator: verify regional artifacts and merge global versions.",
        no_args_is_help=True,
    )
    coordinator.command("init")(init)
    coordinator.command("merge")(merge)
    coordinator.command("serve")(serve)
    coordinator.command("status")(status)
    app.add_typer(coordinator, name="coordinator")
