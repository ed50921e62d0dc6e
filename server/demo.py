"""``fedgate demo``: two regions on real SuperLinks and SuperNodes, end to end, then cleanup."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from fedgate.server.config import DEFAULT_FEDERATION_TOML, FederationConfig, default_federation

DEMO_HOME = Path(".fedgate-demo")


def plot_accuracy(histories: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Validation accuracy per round per region as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for region, rows in histories.items():
        pts = [(r["round"], r["val-acc"]) for r in rows if r.get("val-acc") is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=region)
    ax.set_xlabel("round")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(title="region")
    ax.set_title("fedgate demo: accuracy per round")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def verify_region_audit(home: Path, region: str, db: str | None = None):
    """``fedgate audit verify`` for one region: chain and signed heads, read-only."""
    from fedgate.server.audit.keys import load_pubkeys, region_pub_path
    from fedgate.server.audit.verify import verify_database
    from fedgate.server.db import open_readonly, resolve_url

    engine = open_readonly(resolve_url(db, home, region))
    try:
        return verify_database(engine, load_pubkeys([region_pub_path(home, region)]))
    finally:
        engine.dispose()


def audit_line(region: str, report, home: Path) -> str:
    """One line of the demo's audit verdict for a region."""
    if not report.ok:
        return f"[bold red]audit {region}: FAILED[/] {report.first}"
    return (
        f"[bold green]audit {region}: OK[/] {report.events} events, "
        f"{report.signed_heads} signed heads, head seq {report.last_seq} "
        f"(check it yourself: fedgate audit verify --region {region} --home {home})"
    )


def run_demo(
    home: Path, fed: FederationConfig, console, timeout: float = 900.0, insecure: bool = False
) -> dict:
    """Bring the federation up under ``home``, train every region, write results, shut down."""
    from fedgate.server.cli_region import FEDERATION_FILE, summary_table, write_report
    from fedgate.server.live_view import RunBoard
    from fedgate.server.runner import follow, submit
    from fedgate.server.topology import down, up

    t0 = time.monotonic()
    if home.exists():
        down(home)  # a previous demo interrupted hard: never leave its processes behind
        shutil.rmtree(home)
    home.mkdir(parents=True)
    (home / FEDERATION_FILE).write_text(DEFAULT_FEDERATION_TOML)
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
    (home / "summary.json").write_text(json.dumps(summary, indent=2))
    plot_accuracy({n: board.rows[n].history for n in finished}, home / "accuracy.png")
    console.print(summary_table(finished, "fedgate demo summary"))
    for name, report in audits.items():
        console.print(audit_line(name, report, home))
    console.print(
        f"wall time {wall:.1f} s (start-up {t_up:.1f} s); wrote {home / 'summary.json'} "
        f"and {home / 'accuracy.png'}"
    )
    return summary


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
    import dataclasses

    from fedgate.server.cli_region import console, friendly

    fed = default_federation()
    if rounds is not None:
        fed = dataclasses.replace(
            fed, regions=tuple(dataclasses.replace(r, rounds=rounds) for r in fed.regions)
        )
    friendly(run_demo)(home.resolve(), fed, console, insecure=insecure)
