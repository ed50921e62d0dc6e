"""The demo's pieces beside the run itself: its home, the accuracy plot, the audit verdict.

The verb that runs it (``fedgate demo``) is ``fedgate.server.cli.demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_HOME = Path(".fedgate-demo")


def plot_accuracy(histories: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Validation accuracy per round per region as a PNG."""
    # heavy import (matplotlib, SQLAlchemy): `fedgate --help` imports this module
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
    # heavy import (matplotlib, SQLAlchemy): `fedgate --help` imports this module
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
