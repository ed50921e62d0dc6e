"""Regions for the coordinator tests, made the way fedgate makes them: a region home with its
server key, database and a registered approver; artifacts written by ``write_artifact``
(``server/region/artifact.py``) and approved by ``approve`` (``server/gate/decisions.py``)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgate.crypto import fingerprint, generate_key, public_bytes
from fedgate.server.audit.actors import OPERATOR
from fedgate.server.audit.keys import ensure_region_key
from fedgate.server.audit.store import Store
from fedgate.server.coordinator.candidates import Bundle
from fedgate.server.db.blobs import BlobStore
from fedgate.server.gate.approvers import add_approver
from fedgate.server.gate.decisions import approve
from fedgate.server.gate.policy import Policy
from fedgate.server.region.artifact import Manifest, parse_artifact, write_artifact
from fedgate.server.trust.actors import add_actor

ARCH = "mlp-test-v1"
_SEEDS = itertools.count(1)


@dataclass
class Region:
    name: str
    home: Path
    key: Ed25519PrivateKey
    store: Store
    operator: Ed25519PrivateKey
    approver: Ed25519PrivateKey
    registered: set[str] = field(default_factory=set)

    def register(self, key: Ed25519PrivateKey) -> None:
        """Make ``key`` an approver in this region's own store (once)."""
        if fingerprint(key) not in self.registered:
            add_approver(self.home, self.store, self.name, f"a{len(self.registered)}",
                         key.public_key(), self.operator)  # fmt: skip
            self.registered.add(fingerprint(key))


def make_region(root: Path, name: str) -> Region:
    home = root / f"region-{name}"
    key = ensure_region_key(home, name)
    store = Store.open(f"sqlite:///{home / 'region.db'}", signer=key)
    operator = generate_key()
    add_actor(store, name, "ops", OPERATOR, operator)
    region = Region(name, home, key, store, operator, generate_key())
    region.register(region.approver)
    return region


@dataclass
class Fed:
    regions: dict[str, Region]

    def toml(self, export: dict[str, bool] | None = None, **settings: Any) -> str:
        head = {"architecture": ARCH, **settings}
        lines = ["[federation]"]
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in head.items()]
        for r in self.regions.values():
            lines += [
                f"[regions.{r.name}]",
                f'key = "{public_bytes(r.key).hex()}"',
                f'approvers = ["{public_bytes(r.approver).hex()}"]',
                f"export = {str((export or {}).get(r.name, True)).lower()}",
            ]
        return "\n".join(lines) + "\n"

    def write(self, home: Path, **settings: Any) -> Path:
        path = home / "coordinator" / "federation.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.toml(**settings))
        return path


def make_fed(root: Path, *names: str) -> Fed:
    return Fed({n: make_region(root, n) for n in names})


def tensors(seed: int, size: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layer.weight": rng.standard_normal((size // 4, 4)).astype(np.float32),
        "layer.bias": rng.standard_normal(size // 4).astype(np.float32),
    }


def manifest(region: str, run: str, **over: Any) -> Manifest:
    good = Manifest(
        region=region, run_id=run, base_global_version="", model=ARCH, rounds=3,
        aggregator="trimmed-mean", f=1, devices_accepted=10, updates_accepted=12,
        updates_rejected=3, rejected_by_reason={"bad-signature": 3}, val_acc=0.9, val_loss=0.3,
        test_acc=0.88, base_val_acc=None, audit_seq=1, audit_head="a" * 64,
        config_sha256="b" * 64,
    )  # fmt: skip
    if over.get("base_global_version"):
        over.setdefault("base_val_acc", 0.85)
    return replace(good, **over)


def bundle(
    region: Region,
    weights: dict[str, np.ndarray] | None = None,
    *,
    signer: Ed25519PrivateKey | None = None,
    approvers: list[Ed25519PrivateKey] | None = None,
    source: str = "",
    **over: Any,
) -> Bundle:
    """A new artifact of ``region`` (fresh weights unless given), approved by ``approvers``
    (default: the region's approver); ``signer`` replaces the region key (a forgery)."""
    seed = next(_SEEDS)
    blobs = BlobStore(region.home / "blobs")
    sha = blobs.put_tensors(weights if weights is not None else tensors(seed))
    m = manifest(region.name, f"run-{seed}", **over)
    path = write_artifact(region.home, region.store, signer or region.key, m, sha)
    artifact = parse_artifact(path, path.read_bytes())
    approvals = []
    for key in [region.approver] if approvers is None else approvers:
        region.register(key)
        decision = approve(region.home, region.store, artifact, Policy(), key)
        assert decision.statement_path is not None
        approvals.append(decision.statement_path.read_bytes())
    return Bundle(source or f"{region.name}-{seed}", path.read_bytes(), tuple(approvals),
                  blobs.get(sha))  # fmt: skip


def write_bundle(inbox: Path, name: str, b: Bundle) -> Path:
    d = inbox / name
    (d / "approvals").mkdir(parents=True, exist_ok=True)
    (d / "manifest.dsse.json").write_bytes(b.manifest)
    (d / "weights.safetensors").write_bytes(b.weights)
    for i, a in enumerate(b.approvals):
        (d / "approvals" / f"{i}.dsse.json").write_bytes(a)
    return d
