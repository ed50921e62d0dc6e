"""The demo's pieces beside the run itself: its home, the accuracy plot, the audit verdict.

The verb that runs it (``fedgate demo``) is ``fedgate.server.cli.demo``."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMO_HOME = Path(".fedgate-demo")
DEMO_CYCLES = 2  # regional runs -> gate -> merge, twice: the second starts from global v1
DEMO_ROUNDS = 5  # rounds per region per cycle


def demo_approver(home: Path, regions: list[tuple[str, str | None]]):
    """The demo's approver: a key of its own (``<home>/keys/approver-demo.key``, never a region
    server's), registered as approver of every region by the home's operator key."""
    # heavy import (SQLAlchemy): `fedgate --help` imports this module
    from fedgate.server.audit.keys import ensure_key, keys_dir
    from fedgate.server.gate.approvers import add_approver
    from fedgate.server.trust.enrollment import region_registry

    key = ensure_key(keys_dir(home) / "approver-demo.key", keys_dir(home) / "approver-demo.pub")
    for region, db in regions:
        with region_registry(home, region, db, create=False) as registry:
            add_approver(home, registry.store, region, "demo-approver", key.public_key(),
                         registry.actor_key)  # fmt: skip
    return key


def plot_accuracy(
    histories: dict[str, list[dict[str, Any]]],
    path: Path,
    global_points: Sequence[tuple[int, float]] = (),
) -> None:
    """Validation accuracy per round per region as a PNG; ``global_points``: (round, test
    accuracy) of each global version, drawn at the round it was merged after."""
    # heavy import (matplotlib, SQLAlchemy): `fedgate --help` imports this module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for region, rows in histories.items():
        pts = [(r["round"], r["val-acc"]) for r in rows if r.get("val-acc") is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=region)
    if global_points:
        ax.plot([p[0] for p in global_points], [p[1] for p in global_points], marker="*",
                markersize=12, linestyle="--", color="black",
                label="global (common test split)")  # fmt: skip
    ax.set_xlabel("round")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(title="region")
    ax.set_title("fedgate demo: accuracy per round (cycles back to back)")
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


def verify_coordinator_audit(home: Path):
    """``fedgate audit verify --coordinator``: its chain, signed heads and global versions."""
    # heavy import (SQLAlchemy): `fedgate --help` imports this module
    from fedgate.server.audit.keys import coordinator_pub_path, load_pubkeys
    from fedgate.server.coordinator.service import coordinator_dir
    from fedgate.server.coordinator.versions import verify_coordinator
    from fedgate.server.db import open_readonly
    from fedgate.server.db.engine import coordinator_url

    engine = open_readonly(coordinator_url(home))
    try:
        keys = load_pubkeys([coordinator_pub_path(home)])
        return verify_coordinator(engine, coordinator_dir(home) / "blobs", keys)[0]
    finally:
        engine.dispose()


def audit_line(region: str, report, home: Path) -> str:
    """One line of the demo's audit verdict for a region."""
    if not report.ok:
        return f"[bold red]audit {region}: FAILED[/] {report.first}"
    return (
        f"[bold green]audit {region}: OK[/] {report.events} events, "
        f"{report.signed_heads} signed heads, head seq {report.last_seq} "
        f"(check it yourself: fedgate audit verify "
        f"{'--coordinator' if region == 'coordinator' else f'--region {region}'} --home {home})"
    )


@dataclass(frozen=True)
class EdgeOutcome:
    """The demo's last stage: the students' table, the release, each edge node's install."""

    reports: list[Any]  # StudentReport per profile
    published: list[str]  # release targets
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> sync and prediction


def offline_root_dir(home: Path) -> Path:
    """Where the demo keeps the release root key: beside the home, never inside it (the
    offline step a real deployment does on another machine)."""
    return home.parent / f"{home.name}-offline-root"


def ship_to_edge(
    home: Path, version: int, regions: Sequence[str], echo: Callable[[str], None]
) -> EdgeOutcome:
    """Distil global ``version`` into a student per edge profile, publish them as a signed TUF
    release for every region, serve it over HTTP on loopback, and let one edge node per region
    (profiles taken in turn: the first region a phone, the next a Pi) sync, install and
    predict one digit of the common test split."""
    # heavy imports (torch, onnxruntime, tuf): `fedgate --help` imports this module
    from fedgate.clients.edge.node import EdgeNode
    from fedgate.models.data import common_test_split
    from fedgate.server.coordinator.distill import distill_version
    from fedgate.server.release.lifecycle import init_release
    from fedgate.server.release.publish import publish_release
    from fedgate.server.release.serve import serve_releases

    reports = distill_version(home, version, progress=echo)
    root_dir = offline_root_dir(home)
    shutil.rmtree(root_dir, ignore_errors=True)
    init = init_release(home, root_dir)
    echo(f"release repository initialised (offline root key in {root_dir})")
    publication = publish_release(home, version, regions)
    published = [t.path for t in publication.targets]
    echo(f"published global v{version}'s students: {', '.join(published)}")
    test = common_test_split(0)
    out = EdgeOutcome(reports, published)
    profiles = [r.profile for r in reports]
    with serve_releases(home) as server:
        for i, region in enumerate(regions):
            profile = profiles[(i + 1) % len(profiles)]  # ("pi", "phone"): eu phone, us Pi
            name = f"{region}-{profile}"
            node = EdgeNode.init(home / "edge" / name, init.root_json, server.url, region, profile)
            synced = node.sync()
            pred = node.predict(test.x[i : i + 1])[0]
            out.nodes[name] = {
                "action": synced.action,
                "version": None if synced.current is None else synced.current.global_version,
                "digit": int(test.y[i]), "predicted": pred.cls, "probability": pred.probability,
            }  # fmt: skip
    return out
