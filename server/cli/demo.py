"""``fedgate demo``: two regions on real SuperLinks and SuperNodes, end to end, then cleanup."""

from __future__ import annotations

# A verb imports what only it needs (Flower, torch, SQLAlchemy, ...) inside its body, when it
# runs: `fedgate --help` loads none of it (tests/test_cli_startup.py).
import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fedgate.atomic_file import write_atomic
from fedgate.server.cli.common import (
    FEDERATION_FILE,
    console,
    friendly,
    summary_table,
    write_report,
)
from fedgate.server.cli.cycle import report_cycle
from fedgate.server.launch.config import (
    DEFAULT_FEDERATION_TOML,
    FederationConfig,
    default_federation,
    validate_region,
)
from fedgate.server.launch.demo import (
    DEMO_CYCLES,
    DEMO_HOME,
    DEMO_ROUNDS,
    audit_line,
    demo_approver,
    offline_root_dir,
    plot_accuracy,
    ship_to_edge,
    verify_coordinator_audit,
    verify_region_audit,
)

if TYPE_CHECKING:
    from fedgate.server.launch.cycle import CycleResult


def run_demo(
    home: Path,
    fed: FederationConfig,
    console,
    timeout: float = 900.0,
    insecure: bool = False,
    cycles: int = DEMO_CYCLES,
) -> dict:
    """Bring the federation up under ``home``, run ``cycles`` cycles (every region trains, the
    gate approves what passes, the coordinator merges; the next cycle starts from the new
    global version), shut down, distil the last global version into edge students, release
    them and install them on an edge node per region, write results."""
    from fedgate.server.coordinator.distill import render_table
    from fedgate.server.launch.cycle import run_cycle
    from fedgate.server.launch.topology import down, up
    from fedgate.server.region.live_view import RunBoard

    t0 = time.monotonic()
    if home.exists():
        down(home)  # a previous demo interrupted hard: never leave its processes behind
        shutil.rmtree(home)
    shutil.rmtree(offline_root_dir(home), ignore_errors=True)  # the last demo's release root
    home.mkdir(parents=True)
    write_atomic(home / FEDERATION_FILE, DEFAULT_FEDERATION_TOML)
    console.rule("[bold]fedgate demo")
    console.print(
        f"home {home}: {len(fed.regions)} regions ({', '.join(fed.region_names)}), "
        f"{sum(len(r.nodes) for r in fed.regions)} devices, Dirichlet alpha={fed.alpha}; "
        f"{cycles} cycles of {fed.regions[0].rounds} rounds"
    )
    done: list[CycleResult] = []
    histories: dict[str, list[dict]] = {r.name: [] for r in fed.regions}
    try:
        up(fed, home, echo=console.print, insecure=insecure)
        t_up = time.monotonic() - t0
        approver = demo_approver(home, [(r.name, r.db or None) for r in fed.regions])
        for _ in range(cycles):
            with RunBoard({r.name: r.rounds for r in fed.regions}, console) as board:
                cycle = run_cycle(
                    home, fed, approver, lambda s, e: board.on_event(s.region, e),
                    console.print, timeout,
                    after_runs=lambda subs: [write_report(s.out_dir, home, False) for s in subs],
                )  # fmt: skip
            offset = len(done) * fed.regions[0].rounds
            for name, row in board.rows.items():
                histories[name] += [{**h, "round": h["round"] + offset} for h in row.history]
            report_cycle(cycle, home)
            done.append(cycle)
    finally:
        stopped = down(home)
        console.print(f"stopped {len(stopped)} processes")
    last = done[-1]
    edge = None
    if last.version is not None:
        console.rule(f"[bold]edge: global v{last.version} distilled, released, installed")
        edge = ship_to_edge(home, last.version, fed.region_names,
                            lambda line: console.print(line, highlight=False))  # fmt: skip
    audits = {r.name: verify_region_audit(home, r.name, r.db or None) for r in fed.regions}
    coordinator_audit = verify_coordinator_audit(home)
    wall = time.monotonic() - t0
    summary = {
        "federation": fed.name,
        "wall_seconds": round(wall, 1),
        "startup_seconds": round(t_up, 1),
        "cycles": [c.to_json() for c in done],
        "regions": {
            name: {
                **{k: v for k, v in res.items() if k not in ("kind", "ts")},
                "history": histories[name],
                "audit": audits[name].to_dict(),
            }
            for name, res in last.runs.items()
        },
        "coordinator_audit": coordinator_audit.to_dict(),
        "students": [] if edge is None else [r.__dict__ for r in edge.reports],
        "release": [] if edge is None else edge.published,
        "edge_nodes": {} if edge is None else edge.nodes,
    }
    write_atomic(home / "summary.json", json.dumps(summary, indent=2))
    rounds = fed.regions[0].rounds
    points = [((i + 1) * rounds, c.global_test_acc) for i, c in enumerate(done)
              if c.global_test_acc is not None]  # fmt: skip
    plot_accuracy(histories, home / "accuracy.png", points)
    console.print(summary_table(last.runs, f"the regions' runs in cycle {last.number}"))
    if edge is not None:
        console.print(render_table(edge.reports))
        for name, n in edge.nodes.items():
            console.print(f"edge node {name}: {n['action']} global v{n['version']}; a test "
                          f"digit {n['digit']} -> predicted {n['predicted']} "
                          f"(p={n['probability']:.2f})", highlight=False)  # fmt: skip
    for name, report in audits.items():
        console.print(audit_line(name, report, home))
    console.print(audit_line("coordinator", coordinator_audit, home))
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
    rounds: Annotated[int, typer.Option(help="Rounds per region in each cycle.")] = DEMO_ROUNDS,
    cycles: Annotated[
        int, typer.Option(min=1, help="Cycles: regional runs, gate, merge.")
    ] = DEMO_CYCLES,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No TLS or node authentication (experiments).")
    ] = False,
) -> None:
    """Two regions (eu, us) on real Flower SuperLinks and SuperNodes through the whole chain:
    regional runs, signed artifacts, the approval gate, global merges; then clean up."""
    fed = with_rounds(default_federation(), rounds)
    friendly(run_demo)(home.resolve(), fed, console, insecure=insecure, cycles=cycles)


def register(app: typer.Typer) -> None:
    """Attach ``fedgate demo`` to the root app."""
    app.command("demo")(demo_cmd)
