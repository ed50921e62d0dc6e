"""The ``fedgate`` command line: one typer app with a sub-app per kind of user."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="fedgate",
    help="Federated learning across compliance regions, built on Flower.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Attach every sub-app; each lives beside the code it drives."""
    from fedgate.server.cli_region import register as register_region

    register_region(app)


def main() -> None:
    _register()
    app()
