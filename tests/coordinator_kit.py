"""Regional bundles for the coordinator tests: a federation of regions with keys and
approvers, and bundles (manifest, approvals, weights) made as a region and approver would."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from safetensors.numpy import save

from fedgate.crypto import generate_key, public_bytes
from fedgate.server.coordinator.candidates import APPROVAL_TYPE, MANIFEST_TYPE, Bundle
from fedgate.statements import sign_statement, statement

ARCH = "mlp-test-v1"


@dataclass
class Region:
    name: str
    key: Ed25519PrivateKey = field(default_factory=generate_key)
    approver: Ed25519PrivateKey = field(default_factory=generate_key)


@dataclass
class Fed:
    regions: dict[str, Region]

    def toml(self, **settings: Any) -> str:
        head = {"architecture": ARCH, **settings}
        lines = ["[federation]"]
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in head.items()]
        for r in self.regions.values():
            lines += [
                f"[regions.{r.name}]",
                f'key = "{public_bytes(r.key).hex()}"',
                f'approvers = ["{public_bytes(r.approver).hex()}"]',
            ]
        return "\n".join(lines) + "\n"

    def write(self, home: Path, **settings: Any) -> Path:
        path = home / "coordinator" / "federation.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.toml(**settings))
        return path


def make_fed(*names: str) -> Fed:
    return Fed({n: Region(n) for n in names})


def tensors(seed: int, size: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "layer.weight": rng.standard_normal((size // 4, 4)).astype(np.float32),
        "layer.bias": rng.standard_normal(size // 4).astype(np.float32),
    }


def manifest_predicate(region: str, **over: Any) -> dict[str, Any]:
    pred = {
        "region": region, "run_id": "run-1", "base_version": 0, "architecture": ARCH,
        "rounds": 3, "aggregator": "median", "f": 1, "devices_accepted": 10,
        "rejected_by_reason": {}, "metrics": {"val_acc": 0.9}, "audit_head": "0" * 64,
        "config_digest": "1" * 64, "export_allowed": True,
    }  # fmt: skip
    pred.update(over)
    return pred


def approval(key: Ed25519PrivateKey, artifact: str, decision: str = "approved") -> bytes:
    pred = {"approver": "alice", "decision": decision, "policy_digest": "2" * 64,
            "checks": {"val_acc": "pass"}, "time": "2026-12-02T00:00:00Z"}  # fmt: skip
    return sign_statement(key, statement("artifact", artifact, APPROVAL_TYPE, pred))


def bundle(
    region: Region,
    weights: dict[str, np.ndarray] | None = None,
    *,
    signer: Ed25519PrivateKey | None = None,
    approvers: list[Ed25519PrivateKey] | None = None,
    source: str = "",
    **over: Any,
) -> Bundle:
    data = save(weights if weights is not None else tensors(sum(region.name.encode())))
    pred = manifest_predicate(region.name, **over)
    manifest = sign_statement(
        signer or region.key,
        statement("weights", hashlib.sha256(data).hexdigest(), MANIFEST_TYPE, pred),
    )
    artifact = hashlib.sha256(manifest).hexdigest()
    keys = [region.approver] if approvers is None else approvers
    return Bundle(source or region.name, manifest, tuple(approval(k, artifact) for k in keys), data)


def write_bundle(inbox: Path, name: str, b: Bundle) -> Path:
    d = inbox / name
    (d / "approvals").mkdir(parents=True, exist_ok=True)
    (d / "manifest.dsse.json").write_bytes(b.manifest)
    (d / "weights.safetensors").write_bytes(b.weights)
    for i, a in enumerate(b.approvals):
        (d / "approvals" / f"{i}.dsse.json").write_bytes(a)
    return d
