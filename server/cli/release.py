"""``fedgate release``: signed edge releases with The Update Framework (``server/release``).

``init`` (the offline root key in a directory apart from the home), ``rotate-root`` (the
offline step), ``publish``, ``hold`` / ``pin`` / ``resume`` a region's channel, ``refresh``,
``serve`` and ``status``. Publishing and channel changes are events of the coordinator's
signed audit chain (``fedgate audit verify --coordinator``).
"""

from __future__ import annotations

# A verb imports what only it needs (tuf, SQLAlchemy, onnxruntime) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedgate.server.cli.common import HomeOpt, JsonOpt, console, err, resolve_home

if TYPE_CHECKING:
    from fedgate.server.release.publish import Publication

ReleaseDbOpt = Annotated[
    str | None,
    typer.Option("--db", help="Coordinator database URL (default: <home>/coordinator.db)."),
]
RootDirOpt = Annotated[
    Path,
    typer.Option(
        "--root-dir",
        help="Directory of the offline root key (root.key); must lie outside the home, e.g. "
        "on removable media.",
    ),
]
ReleaseRegionOpt = Annotated[
    str, typer.Option("--region", "-r", help="The region whose channel to change, e.g. eu.")
]


def _print(pub: Publication, as_json: bool, what: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(pub.to_dict(), sort_keys=True) + "\n")
        return
    for t in pub.targets:
        console.print(
            f"{what} {t.path}: global v{t.global_version} ({t.channel}), {t.length} bytes, "
            f"sha256 {t.sha256[:16]}",
            highlight=False,
        )
    for region, why in pub.skipped.items():
        err.print(f"[yellow]skipped[/] {region}: channel {why}", highlight=False)
    v = pub.versions
    console.print(
        f"metadata: root v{v.root}, targets v{v.targets}, snapshot v{v.snapshot}, "
        f"timestamp v{v.timestamp}",
        highlight=False,
    )


def init(home: HomeOpt = None, root_dir: RootDirOpt = ..., db: ReleaseDbOpt = None) -> None:
    """Create the release repository: a new offline root key in --root-dir, the online keys
    (targets, snapshot, timestamp) under <home>/release/keys, root v1 and empty metadata."""
    from fedgate.server.release.lifecycle import init_release

    result = init_release(resolve_home(home), root_dir, db=db)
    console.print(f"root key (keep offline): {result.root_key}", highlight=False)
    console.print(f"provision edge nodes with: {result.root_json}", highlight=False)


def rotate_root(
    home: HomeOpt = None,
    root_dir: RootDirOpt = ...,
    new_root_dir: Annotated[
        Path | None,
        typer.Option(
            "--new-root-dir", help="Replace the root key: make the new one here (offline)."
        ),
    ] = None,
    rotate_online: Annotated[
        bool,
        typer.Option("--rotate-online", help="Also replace the targets/snapshot/timestamp keys."),
    ] = False,
    db: ReleaseDbOpt = None,
) -> None:
    """The offline step: write the next root version, signed with the root key in --root-dir
    (and the new one); edge nodes follow the chain on their next sync."""
    from fedgate.server.release.lifecycle import rotate_root as rotate

    v = rotate(
        resolve_home(home), root_dir, new_root_dir=new_root_dir, rotate_online=rotate_online,
        db=db,
    )  # fmt: skip
    console.print(
        f"root v{v.root} written; targets v{v.targets}, snapshot v{v.snapshot}, timestamp "
        f"v{v.timestamp}. Put the root key back offline.",
        highlight=False,
    )


def publish(
    global_version: Annotated[
        int, typer.Option("--global-version", min=1, help="The global version to release.")
    ],
    regions: Annotated[
        str | None,
        typer.Option(
            "--regions", help="Comma-separated regions (default: the federation file's regions)."
        ),
    ] = None,
    home: HomeOpt = None,
    students: Annotated[
        Path | None,
        typer.Option(
            "--students",
            help="Students directory (default: <home>/coordinator/students/v<N>).",
        ),
    ] = None,
    db: ReleaseDbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish the global version's students, one signed target per (region, profile), to
    every named region whose channel is live; held and pinned regions are skipped."""
    from fedgate.server.release.publish import publish_release

    names = [r.strip() for r in regions.split(",") if r.strip()] if regions else None
    err.print(f"publishing global version {global_version} ...", highlight=False)
    pub = publish_release(resolve_home(home), global_version, names, db=db, students_root=students)
    _print(pub, as_json, "published")


def _channel(region: str, state: str, version: int | None, home: Path | None, db: str | None,
             as_json: bool) -> None:  # fmt: skip
    from fedgate.server.release.publish import set_channel

    pub = set_channel(resolve_home(home), region, state, version, db=db)
    _print(pub, as_json, state)


def hold(
    region: ReleaseRegionOpt, home: HomeOpt = None, db: ReleaseDbOpt = None,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Hold the region's channel at the version it has: new publishes skip it until resume."""
    _channel(region, "held", None, home, db, as_json)


def pin(
    region: ReleaseRegionOpt,
    version: Annotated[int, typer.Option("--version", min=1, help="Global version to pin.")],
    home: HomeOpt = None,
    db: ReleaseDbOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Pin the region's channel to a global version (its students are published to the region
    now; new publishes skip it until resume). Installed nodes are never downgraded by a pin."""
    _channel(region, "pinned", version, home, db, as_json)


def resume(
    region: ReleaseRegionOpt, home: HomeOpt = None, db: ReleaseDbOpt = None,
    as_json: JsonOpt = False,
) -> None:  # fmt: skip
    """Let a held or pinned region follow new publishes again."""
    _channel(region, "live", None, home, db, as_json)


def refresh(home: HomeOpt = None) -> None:
    """Re-sign the online metadata that expires within half its lifetime (for cron; `serve`
    does it by itself)."""
    from fedgate.server.release.lifecycle import refresh_repository

    due = refresh_repository(resolve_home(home))
    console.print(f"re-signed: {', '.join(sorted(due)) or 'nothing was due'}", highlight=False)


def serve(
    home: HomeOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any).")] = 8088,
    refresh_every: Annotated[
        float,
        typer.Option("--refresh-every", help="Seconds between expiry checks (0: never re-sign)."),
    ] = 300.0,
) -> None:
    """Serve the repository over HTTP (static, read-only) until Ctrl-C; the content is signed,
    so a mirror or proxy in between cannot alter it unnoticed."""
    import threading

    from fedgate.server.release.serve import serve_releases

    with serve_releases(
        resolve_home(home), port, host, refresh_every=refresh_every or None
    ) as server:
        console.print(f"serving releases at {server.url} (Ctrl-C to stop)", highlight=False)
        threading.Event().wait()


def status(home: HomeOpt = None, db: ReleaseDbOpt = None, as_json: JsonOpt = False) -> None:
    """Every published target (region, profile, global version, channel) and the metadata's
    versions and expiry."""
    from fedgate.server.release.channels import channels, open_store
    from fedgate.server.release.publish import published_targets
    from fedgate.server.release.repository import ReleaseRepository

    where = resolve_home(home)
    repo = ReleaseRepository(where).require()
    targets = published_targets(where)
    chans = channels(open_store(where, db))
    expiry = {r: repo.read(r).signed.expires.isoformat() for r in ("root", "targets", "snapshot",
                                                                    "timestamp")}  # fmt: skip
    if as_json:
        out = {
            "targets": [t.__dict__ | {"path": t.path} for t in targets],
            "channels": {r: c.describe() for r, c in chans.items()},
            "metadata": repo.versions().__dict__, "expires": expiry,
            "root_json": str(repo.root_json_path()),
        }  # fmt: skip
        sys.stdout.write(json.dumps(out, sort_keys=True, indent=2) + "\n")
        return
    from rich.table import Table

    table = Table(title="published releases")
    for col in ("target", "global version", "channel", "bytes", "sha256"):
        table.add_column(col)
    for t in targets:
        table.add_row(t.path, str(t.global_version), t.channel, str(t.length), t.sha256[:16])
    console.print(table)
    for role, when in expiry.items():
        console.print(f"{role} expires {when}", highlight=False)


def register(app: typer.Typer) -> None:
    """Attach the ``release`` sub-app to ``app``."""
    release = typer.Typer(
        help="Signed edge releases (The Update Framework): publish students, hold or pin a "
        "region, serve the repository.",
        no_args_is_help=True,
    )
    release.command("init")(init)
    release.command("rotate-root")(rotate_root)
    release.command("publish")(publish)
    release.command("hold")(hold)
    release.command("pin")(pin)
    release.command("resume")(resume)
    release.command("refresh")(refresh)
    release.command("serve")(serve)
    release.command("status")(status)
    app.add_typer(release, name="release")
