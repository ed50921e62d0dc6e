"""The command line verbs (typer only), a file per kind of user; ``register`` attaches them.

Each verb module imports what it drives inside the verb, so ``fedgate --help`` stays fast
(``tests/test_cli_startup.py``: no torch, Flower or SQLAlchemy at start-up).
"""

from __future__ import annotations

import typer


def register(app: typer.Typer, region_app: typer.Typer, client_app: typer.Typer) -> None:
    """Attach every verb to the ``fedgate`` app and its ``region`` and ``client`` sub-apps."""
    from fedgate.server.cli.actors import register as register_actors
    from fedgate.server.cli.audit import register as register_audit
    from fedgate.server.cli.common import guard_every_verb
    from fedgate.server.cli.coordinator import register as register_coordinator
    from fedgate.server.cli.cycle import register as register_cycle
    from fedgate.server.cli.demo import register as register_demo
    from fedgate.server.cli.deploy import register as register_deploy
    from fedgate.server.cli.devices import register_client, register_region
    from fedgate.server.cli.distill import register as register_distill
    from fedgate.server.cli.edge import register as register_edge
    from fedgate.server.cli.gate import register as register_gate
    from fedgate.server.cli.pki import register as register_pki
    from fedgate.server.cli.region import register as register_operator
    from fedgate.server.cli.release import register as register_release
    from fedgate.server.cli.runs import register as register_runs

    register_demo(app)
    register_operator(app, region_app)
    register_runs(app, region_app)
    register_pki(region_app)
    register_region(region_app)
    register_actors(region_app)
    register_gate(app, region_app)
    register_client(client_app)
    app.add_typer(region_app, name="region")
    app.add_typer(client_app, name="client")
    register_audit(app)
    register_coordinator(app)
    register_cycle(app)
    register_release(app)
    register_edge(app)
    register_distill(app)
    register_deploy(app)
    guard_every_verb(app)
