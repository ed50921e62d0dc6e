"""Coordinator speed: verify + merge n regional artifacts, as a ratio to loading them.

For n in ``--regions`` (default 3 and 10) regional bundles of ``--params`` float32 parameters
(default 1e6) are written to a temporary inbox, each made by the region and gate code: weights
(safetensors), the manifest ``write_artifact`` signs with the region key and one approval by
a registered approver (``approve``).
Measured in the same run, alternating, median of ``--repeats``:

* load: read every bundle from disk and parse its weights (``read_inbox`` + safetensors);
* verify + merge: the same read, then ``screen`` (every check of ``candidates.py``: both
  signatures, weights digest, base version, architecture, export, approvals) and
  ``merge_models`` (capped weighted mean below 3 regions, the robust rule from 3 on).

``ratio`` = (verify + merge) / load. Goal: <= 1.5. For context, ``floor ratio``: reading the
bundles and SHA-256 of the weights alone (what any verification must do) over the load.

    python benchmarks/merge.py [--regions 3 10] [--params 1000000] [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load

from fedgate.crypto import generate_key, public_bytes
from fedgate.server.audit.actors import OPERATOR
from fedgate.server.audit.keys import ensure_region_key
from fedgate.server.audit.store import Store
from fedgate.server.coordinator.candidates import Expectation, read_inbox, screen
from fedgate.server.coordinator.federation import parse_federation
from fedgate.server.coordinator.merge import merge_models
from fedgate.server.db.blobs import BlobStore
from fedgate.server.gate.approvers import add_approver
from fedgate.server.gate.decisions import approve
from fedgate.server.gate.policy import Policy
from fedgate.server.region.artifact import Manifest, parse_artifact, write_artifact
from fedgate.server.trust.actors import add_actor

GOAL = 1.5
ARCH = "bench-mlp"
WIDTH = 1000


def _region_bundle(root: Path, inbox: Path, name: str, params: int, seed: int) -> dict[str, Any]:
    """One region's approved artifact, made by the region and gate code, copied to the inbox;
    returns the region's federation table."""
    home = root / name
    key = ensure_region_key(home, name)
    store = Store.open(f"sqlite:///{home / 'region.db'}", signer=key)
    operator, approver = generate_key(), generate_key()
    add_actor(store, name, "ops", OPERATOR, operator)
    add_approver(home, store, name, "alice", approver.public_key(), operator)
    rng = np.random.default_rng(seed)
    blobs = BlobStore(home / "blobs")
    sha = blobs.put_tensors({
        "w": rng.standard_normal((params // WIDTH - 1, WIDTH)).astype(np.float32),
        "b": rng.standard_normal(WIDTH).astype(np.float32),
    })  # fmt: skip
    manifest = Manifest(
        region=name, run_id="bench", base_global_version="", model=ARCH, rounds=3,
        aggregator="trimmed-mean", f=1, devices_accepted=10 + seed, updates_accepted=30,
        updates_rejected=0, rejected_by_reason={}, val_acc=0.9, val_loss=0.3, test_acc=0.9,
        base_val_acc=None, audit_seq=1, audit_head="a" * 64, config_sha256="b" * 64,
    )  # fmt: skip
    path = write_artifact(home, store, key, manifest, sha)
    decision = approve(home, store, parse_artifact(path, path.read_bytes()), Policy(), approver)
    store.engine.dispose()
    d = inbox / name
    (d / "approvals").mkdir(parents=True)
    (d / "manifest.dsse.json").write_bytes(path.read_bytes())
    (d / "approvals" / "0.dsse.json").write_bytes(decision.statement_path.read_bytes())  # type: ignore[union-attr]
    (d / "weights.safetensors").write_bytes(blobs.get(sha))
    return {"key": public_bytes(key).hex(), "approvers": [public_bytes(approver).hex()]}


def _write_inbox(root: Path, inbox: Path, n: int, params: int) -> dict[str, Any]:
    """n bundles under ``inbox``; returns the federation table that trusts them."""
    regions = {f"r{i:02d}": _region_bundle(root, inbox, f"r{i:02d}", params, i) for i in range(n)}
    return {"federation": {"architecture": ARCH}, "regions": regions}


def _load(inbox: Path) -> int:
    return sum(len(load(b.weights)) for b in read_inbox(inbox))


def _hash_floor(inbox: Path) -> int:
    return sum(len(hashlib.sha256(b.weights).digest()) for b in read_inbox(inbox))


def _verify_merge(inbox: Path, federation: Any) -> int:
    accepted, refused = screen(read_inbox(inbox), federation, Expectation(0))
    assert not refused, refused
    merge_models([c.tensors for c in accepted], [c.devices for c in accepted],
                 device_cap=federation.device_cap, robust=federation.robust)  # fmt: skip
    return len(accepted)


def _timed(fn: Any, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def run(n: int, params: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        inbox = Path(tmp) / "inbox"
        federation = parse_federation(_write_inbox(Path(tmp) / "regions", inbox, n, params))
        _load(inbox), _verify_merge(inbox, federation)  # warm the page cache and imports
        loads, merges, floors = [], [], []
        for _ in range(repeats):
            loads.append(_timed(_load, inbox))
            merges.append(_timed(_verify_merge, inbox, federation))
            floors.append(_timed(_hash_floor, inbox))
    load_s, merge_s = statistics.median(loads), statistics.median(merges)
    floor_s = statistics.median(floors)
    return {"regions": n, "params": params, "load_s": load_s, "verify_merge_s": merge_s,
            "read_and_sha256_s": floor_s, "ratio": merge_s / load_s,
            "floor_ratio": floor_s / load_s, "goal": GOAL}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--regions", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = [run(n, args.params, args.repeats) for n in args.regions]
    print(f"{'regions':>7} {'params':>9} {'load s':>8} {'verify+merge s':>15} {'ratio':>6} "
          f"{'read+sha256 s':>14} {'floor ratio':>11}")  # fmt: skip
    for r in rows:
        print(f"{r['regions']:>7} {r['params']:>9} {r['load_s']:>8.3f} "
              f"{r['verify_merge_s']:>15.3f} {r['ratio']:>6.2f} "
              f"{r['read_and_sha256_s']:>14.3f} {r['floor_ratio']:>11.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["ratio"] <= GOAL for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
