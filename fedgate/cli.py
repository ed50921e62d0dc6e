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


def _register() -> None:
    """Attach every verb; each lives beside the code it drives."""
    from fedgate.server.cli_audit import register as register_audit
    from fedgate.server.cli_devices import register_client, register_region
    from fedgate.server.cli_pki import register as register_pki
    from fedgate.server.cli_region import register as register_operator
    from fedgate.server.cli_runs import register as register_runs

    register_operator(app, region_app)
    register_runs(app, region_app)
    register_pki(region_app)
    register_region(region_app)
    register_client(client_app)
    app.add_typer(region_app, name="region")
    app.add_typer(client_app, name="client")
    register_audit(app)


def main() -> None:
    _register()
    app()
