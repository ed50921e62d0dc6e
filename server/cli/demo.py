"""``fedgate demo``: two regions on real SuperLinks and SuperNodes, end to end, then cleanup."""

from __future__ import annotations

# A verb imports what only it needs (Flower, torch, SQLAlchemy, ...) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Annotated

import typer

from fedgate.atomic_file import write_atomic
from fedgate.server.cli.common import (
    FEDERATION_FILE,
    console,
    friendly,
    summary_table,
    write_report,
)
from fedgate.server.launch.config import (
    DEFAULT_FEDERATION_TOML,
    FederationConfig,
    default_federation,
    validate_region,
)
from fedgate.server.launch.demo import DEMO_HOME, audit_line, plot_accuracy, verify_region_audit


def run_demo(
    home: Path, fed: FederationConfig, console, timeout: float = 900.0, insecure: bool = False
) -> dict:
    """Bring the federation up under ``home``, train every region, write results, shut down."""
    from fedgate.server.launch.runner import follow, submit
    from fedgate.server.launch.topology import down, up
    from fedgate.server.region.live_view import RunBoard

    t0 = time.monotonic()
    if home.exists():
        down(home)  # a previous demo interrupted hard: never leave its processes behind
        shutil.rmtree(home)
    home.mkdir(parents=True)
    write_atomic(home / FEDERATION_FILE, DEFAULT_FEDERATION_TOML)
    console.rule("[bold]fedgate demo")
    console.print(
        f"home {home}: {len(fed.regions)} regions ({', '.join(fed.region_names)}), "
        f"{sum(len(r.nodes) for r in fed.regions)} devices, Dirichlet alpha={fed.alpha}"
    )
    try:
        up(fed, home, echo=console.print, insecure=insecure)
        t_up = time.monotonic() - t0
        subs = [submit(fed, r, home) for r in fed.regions]
        try:
            with RunBoard({r.name: r.rounds for r in fed.regions}, console) as board:
                finished = follow(subs, lambda s, e: board.on_event(s.region, e), timeout)
        finally:
            for sub in subs:  # the per-run plot, also for a run that failed
                write_report(sub.out_dir, home, False)
    finally:
        stopped = down(home)
        console.print(f"stopped {len(stopped)} processes")
    audits = {r.name: verify_region_audit(home, r.name, r.db or None) for r in fed.regions}
    wall = time.monotonic() - t0
    summary = {
        "federation": fed.name,
        "wall_seconds": round(wall, 1),
        "startup_seconds": round(t_up, 1),
        "regions": {
            name: {
                **{k: v for k, v in res.items() if k not in ("kind", "ts")},
                "history": board.rows[name].history,
                "run_dir": str(next(s.out_dir for s in subs if s.region == name)),
                "audit": audits[name].to_dict(),
            }
            for name, res in finished.items()
        },
    }
    write_atomic(home / "summary.json", json.dumps(summary, indent=2))
    plot_accuracy({n: board.rows[n].history for n in finished}, home / "accuracy.png")
    console.print(summary_table(finished, "fedgate demo summary"))
    for name, report in audits.items():
        console.print(audit_line(name, report, home))
    console.print(
        f"wall time {wall:.1f} s (start-up {t_up:.1f} s); wrote {home / 'summary.json'} "
        f"and {home / 'accuracy.png'}"
    )
    return summary


def with_rounds(fed: FederationConfig, rounds: int) -> FederationConfig:
    """``fed`` with every region's rounds overridden, checked like the config file's."""
    regions = tuple(dataclasses.replace(r, rounds=rounds) for r in fed.regions)
    for region in regions:
        validate_region(region, "command line")
    return dataclasses.replace(fed, regions=regions)


def demo_cmd(
    home: Annotated[
        Path, typer.Option("--home", help="Fresh state directory for the demo (wiped first).")
    ] = DEMO_HOME,
    rounds: Annotated[int | None, typer.Option(help="Rounds per region (default 5).")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS or node authentication (experiments).")
    ] = False,
) -> None:
    """Train two regions (eu, us) on real Flower SuperLinks and SuperNodes, then clean up."""
    fed = default_federation()
    if rounds is not None:
        fed = with_rounds(fed, rounds)
    friendly(run_demo)(home.resolve(), fed, console, insecure=insecure)


def register(app: typer.Typer) -> None:
    """Attach ``fedgate demo`` to the root app."""
    app.command("demo")(demo_cmd)
