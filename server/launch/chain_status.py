"""What ``fedgate status`` shows of the global tier: per region the last artifact and the gate's
decision on it (and artifacts still waiting for one), and the global versions with their
lineage. Read-only: region databases and the coordinator's are opened read-only, and each
global version's statement is verified before its lineage is shown."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from fedgate.crypto import read_public_key
from fedgate.errors import VerificationError
from fedgate.server.audit.keys import coordinator_pub_path
from fedgate.server.coordinator.service import coordinator_dir, published_store
from fedgate.server.coordinator.versions import check_version
from fedgate.server.db import open_readonly, resolve_url
from fedgate.server.db.blobs import BlobStore
from fedgate.server.db.models import Approval, Artifact
from fedgate.server.launch.config import FederationConfig

ARTIFACTS, APPROVALS = Artifact.__table__, Approval.__table__


@dataclass(frozen=True)
class RegionGate:
    """A region's last artifact and the gate's state of it."""

    region: str
    artifact: str = ""  # weights digest; "" when the region made none yet
    run_id: str = ""
    val_acc: float | None = None
    state: str = "none"  # approved | refused | pending | none
    decided_by: tuple[str, ...] = ()  # approver fingerprints
    pending: tuple[str, ...] = ()  # this region's artifacts no approver decided yet


@dataclass(frozen=True)
class GlobalStatus:
    """One global version: its rule and the regional artifacts that went in (with shares)."""

    version: int
    base_version: int
    rule: str
    weights: str
    lineage: list[dict[str, Any]] = field(default_factory=list)
    verified: str = "ok"  # or why its statement did not verify


def region_gate(home: Path, region: str, db: str | None = None) -> RegionGate:
    """``region``'s last artifact and its decisions, from its database (read-only)."""
    url = resolve_url(db, home, region)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return RegionGate(region)
    engine = open_readonly(url)
    try:
        with engine.connect() as conn:
            arts = conn.execute(select(ARTIFACTS).order_by(ARTIFACTS.c.created_at)).all()
            decided: dict[str, list[Any]] = {}
            for row in conn.execute(select(APPROVALS).order_by(APPROVALS.c.id)):
                decided.setdefault(row.artifact_sha256, []).append(row)
    finally:
        engine.dispose()
    mine = [a for a in arts if (a.manifest or {}).get("region") == region]
    if not mine:
        return RegionGate(region)
    last = mine[-1]
    decisions = decided.get(last.sha256, [])
    state = decisions[-1].decision if decisions else "pending"
    return RegionGate(
        region, last.sha256, last.run_id or "", last.manifest.get("val_acc"), state,
        tuple(d.approver for d in decisions if d.approver),
        tuple(a.sha256 for a in mine if a.sha256 not in decided),
    )  # fmt: skip


def global_versions(home: Path) -> list[GlobalStatus]:
    """Every global version the home's coordinator published, newest first, with lineage."""
    with published_store(home) as store:
        if store is None:
            return []
        versions = store.versions()
    key = read_public_key(coordinator_pub_path(home))
    blobs = BlobStore(coordinator_dir(home) / "blobs")
    out = []
    for info in sorted(versions, key=lambda v: -v.version):
        try:
            lineage, verified = check_version(info, blobs, key)["lineage"], "ok"
        except VerificationError as exc:  # shown, not raised: status reports what it finds
            lineage, verified = [], str(exc)
        out.append(GlobalStatus(info.version, info.base_version, info.rule,
                                info.weights_sha256, lineage, verified))  # fmt: skip
    return out


def chain_status(home: Path, fed: FederationConfig) -> dict[str, Any]:
    """Both parts, as ``fedgate status --json`` prints them."""
    return {
        "gate": [asdict(region_gate(home, r.name, r.db or None)) for r in fed.regions],
        "global_versions": [asdict(v) for v in global_versions(home)],
    }
