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
region_app = typer.Typer(
    help="ML engineers and operators: run and manage one region.", no_args_is_help=True
)
client_app = typer.Typer(
    help="Edge clients: enroll a device with its region, join training.", no_args_is_help=True
)


_registered = False


def _register() -> None:
    """Attach every verb (once); each lives in ``fedgate.server.cli`` beside the code it drives."""
    global _registered
    if _registered:
        return
    # the verbs load when the CLI runs, not when fedgate.cli is imported
    from fedgate.server.cli import register

    register(app, region_app, client_app)
    _registered = True


def main() -> None:
    _register()
    app()
