"""``fedgate edge``: an edge node's verbs (``clients/edge``): init, sync, status, rollback,
predict. A refusal (forged, tampered, rollback, expired, wrong release) is one line, exit 2.
"""

from __future__ import annotations

# A verb imports what only it needs (tuf, onnxruntime, numpy) inside its body, when it runs:
# `fedgate --help` loads none of it (tests/test_cli_startup.py).
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from fedgate.server.cli.common import JsonOpt, console, err

EdgeHomeOpt = Annotated[
    Path | None,
    typer.Option(
        "--edge-home", help="The edge node's directory (default: $FEDGATE_EDGE_HOME or "
        "~/.fedgate-edge).",
    ),
]  # fmt: skip


def _node(edge_home: Path | None):  # -> EdgeNode (typed lazily: no import at start-up)
    from fedgate.clients.edge.node import EdgeNode
    from fedgate.clients.edge.state import resolve_edge_home

    return EdgeNode(resolve_edge_home(edge_home))


def init(
    root: Annotated[
        Path, typer.Option("--root", help="The root.json this node is provisioned with.")
    ],
    url: Annotated[str, typer.Option("--url", help="Release server, e.g. http://host:8088.")],
    region: Annotated[str, typer.Option("--region", "-r", help="This node's region.")],
    profile: Annotated[str, typer.Option("--profile", help="Device profile, e.g. phone or pi.")],
    edge_home: EdgeHomeOpt = None,
) -> None:
    """Provision this edge node: trust anchor (TUF root metadata), server, region, profile."""
    from fedgate.clients.edge.node import EdgeNode
    from fedgate.clients.edge.state import resolve_edge_home

    node = EdgeNode.init(resolve_edge_home(edge_home), root, url, region, profile)
    console.print(f"edge node {region}/{profile} in {node.home.root}, releases from {url}",
                  highlight=False)  # fmt: skip


def sync(edge_home: EdgeHomeOpt = None, as_json: JsonOpt = False) -> None:
    """Fetch and verify the newest release for this node's region and profile; install it
    atomically (the old model serves until the new one is verified, loaded and probed)."""
    node = _node(edge_home)
    result = node.sync()
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), sort_keys=True) + "\n")
        return
    for event in result.reported:
        console.print(
            f"reported: {event['kind']} to v{event['version']} from v{event['previous']} at "
            f"{event['at']}",
            highlight=False,
        )
    cur = result.current
    line = {
        "installed": f"installed v{result.available}"
        + (f" (was v{result.previous.global_version})" if result.previous else ""),
        "up-to-date": f"up to date at v{result.available}",
        "skipped": f"v{result.available} not re-installed: this node rolled back from it",
        "kept": f"channel pinned at v{result.available}; installed v"
        f"{cur.global_version if cur else '-'} kept (a pin never downgrades a node)",
    }[result.action]
    console.print(f"{line} [{result.channel}]", highlight=False)


def status(edge_home: EdgeHomeOpt = None, as_json: JsonOpt = False) -> None:
    """Installed and available versions, the previous installs and unreported events."""
    st = _node(edge_home).status()
    if as_json:
        sys.stdout.write(json.dumps(st.to_dict(), sort_keys=True, indent=2) + "\n")
        return
    d = st.to_dict()
    inst = d["installed"]
    console.print(f"node {d['region']}/{d['profile']} at {d['url']}", highlight=False)
    console.print(
        "installed: "
        + (f"v{inst['global_version']} sha256 {inst['sha256'][:16]} since {inst['installed_at']}"
           if inst else "nothing"),
        highlight=False,
    )  # fmt: skip
    avail = f"v{d['available']} ({d['channel']})" if d["available"] else f"unknown: {d['server']}"
    console.print(f"available: {avail}", highlight=False)
    console.print(f"previous: {', '.join(f'v{v}' for v in d['previous']) or 'none'}",
                  highlight=False)  # fmt: skip
    if d["rolled_back_from"]:
        console.print(f"rolled back from: {', '.join(f'v{v}' for v in d['rolled_back_from'])}",
                      highlight=False)  # fmt: skip


def rollback(edge_home: EdgeHomeOpt = None) -> None:
    """Return to the previous installed version (loaded and probed first); recorded here and
    reported on the next sync, which will not re-install the version rolled back from."""
    old, new = _node(edge_home).rollback()
    console.print(f"rolled back from v{old.global_version} to v{new.global_version}",
                  highlight=False)  # fmt: skip


def predict(
    file: Annotated[Path, typer.Argument(help=".npz (array x, values in [0,1]) or 8x8 image.")],
    edge_home: EdgeHomeOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the installed student on FILE and print each sample's class and probability."""
    from fedgate.clients.edge.runtime import read_input

    x = read_input(file)
    node = _node(edge_home)
    preds = node.predict(x)
    version = node.home.state().current.global_version  # type: ignore[union-attr]
    if as_json:
        rows = [{"class": p.cls, "probability": p.probability} for p in preds]
        sys.stdout.write(json.dumps({"version": version, "predictions": rows}) + "\n")
        return
    for i, p in enumerate(preds):
        console.print(f"sample {i}: class {p.cls} (p={p.probability:.3f}) [v{version}]",
                      highlight=False)  # fmt: skip
    if not preds:
        err.print("no samples")


def register(app: typer.Typer) -> None:
    """Attach the ``edge`` sub-app to ``app``."""
    edge = typer.Typer(
        help="Edge nodes: receive signed releases (TUF), roll back, predict.", no_args_is_help=True
    )
    edge.command("init")(init)
    edge.command("sync")(sync)
    edge.command("status")(status)
    edge.command("rollback")(rollback)
    edge.command("predict")(predict)
    app.add_typer(edge, name="edge")
