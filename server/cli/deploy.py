"""``fedgate deploy compose``: compose.yaml rendered from the federation's host layout
(``server/launch/compose.py``), so the compose file is never a hand-kept copy."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated

import typer

from fedgate.errors import UsageError
from fedgate.server.cli.common import console, err

deploy_app = typer.Typer(
    help="Deployment files generated from the federation's topology.", no_args_is_help=True
)


class ComposeDrift(UsageError):
    """The compose file on disk is not the rendering of the layout (``--check``)."""


@deploy_app.command("compose")
def compose(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="Federation TOML whose regions and devices to render (default: the two-region "
            "phone + Pi federation the repository's compose.yaml deploys).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write here (default: print to stdout).")
    ] = None,
    check: Annotated[
        bool,
        typer.Option("--check", help="Do not write: exit 1 if --out differs from the rendering."),
    ] = False,
) -> None:
    """Render compose.yaml: per region its PostgreSQL, SuperLink (operator address on the
    region host's loopback), fleet-only proxy, ServerApp executor, enrollment service and
    operator tools; per device a SuperNode, its ClientApp and a one-time enrollment; the
    release server. Names and networks come from the same host layout `fedgate up` and the
    network-namespace topology use."""
    # heavy import (Jinja2, the config): only when the verb runs
    from fedgate.atomic_file import write_atomic
    from fedgate.server.launch.compose import COMPOSE_FEDERATION, render_compose
    from fedgate.server.launch.config import load_federation

    fed = COMPOSE_FEDERATION if config is None else load_federation(config)
    text = render_compose(fed)
    if check:
        if out is None:
            raise UsageError("--check needs --out FILE: the compose file to compare")
        current = out.read_text(encoding="utf-8") if out.is_file() else ""
        if current != text:
            diff = difflib.unified_diff(current.splitlines(), text.splitlines(),
                                        str(out), "rendering", lineterm="", n=1)  # fmt: skip
            err.print("\n".join(list(diff)[:40]), highlight=False, markup=False)
            raise ComposeDrift(
                f"{out} is not the rendering of the layout: regenerate it with "
                f"`fedgate deploy compose{f' --config {config}' if config else ''} --out {out}`"
            )
        console.print(f"{out} is the rendering of the layout", highlight=False, soft_wrap=True)
        return
    if out is None:
        typer.echo(text, nl=False)
        return
    write_atomic(out, text)
    devices = sum(len(r.nodes) for r in fed.regions)
    err.print(f"wrote {out} ({len(fed.regions)} region(s), {devices} device host(s))",
              highlight=False)  # fmt: skip


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app, name="deploy")
