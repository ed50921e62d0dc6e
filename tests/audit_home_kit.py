"""A home for the auditor's views, made through fedgate's own writers: per region its server key,
database, enrolled (and one revoked) devices through the device registry, runs written by the
Store with signed heads, model blobs, a regional artifact approved at the gate; no Flower."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedgate.crypto import generate_key, public_bytes
from fedgate.server.audit.actors import OPERATOR
from fedgate.server.audit.store import Store
from fedgate.server.coordinator.candidates import Bundle
from fedgate.server.coordinator.service import Coordinator
from fedgate.server.db.blobs import BlobStore
from fedgate.server.gate.approvers import add_approver
from fedgate.server.gate.decisions import approve
from fedgate.server.gate.policy import Policy
from fedgate.server.region.artifact import Manifest, parse_artifact, write_artifact
from fedgate.server.trust.actors import add_actor, admit_launch, sign_launch
from fedgate.server.trust.enrollment import region_registry

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="window.__pwned=1">'


@dataclass
class Built:
    home: Path
    runs: dict[str, list[str]] = field(default_factory=dict)  # region -> run ids
    devices: dict[str, list[str]] = field(default_factory=dict)
    rounds: int = 0
    bundles: dict[str, Bundle] = field(default_factory=dict)  # region -> its approved artifact
    approvers: dict[str, str] = field(default_factory=dict)  # region -> approver public hex


def build_region(home: Path, region: str, *, runs: int = 1, rounds: int = 4, clients: int = 5,
                 hostile: bool = False, artifact: bool = False, built: Built,
                 db: str | None = None) -> None:  # fmt: skip
    """One region with ``clients`` devices (the last revoked), ``runs`` runs of ``rounds``
    rounds; ``hostile`` adds an update whose claimed device id and reason hold HTML/JS; ``db``:
    its database (default ``<home>/region-<region>.db``)."""
    registry = region_registry(home, region, db)
    store: Store = registry.store
    key = store.audit.signer
    assert key is not None
    operator = generate_key()
    add_actor(store, region, "ops", OPERATOR, operator)
    registry.actor_key = operator
    devices = []
    for i in range(clients):
        token = registry.issue_token()
        dev = registry.enroll(token, public_bytes(generate_key()), profile="phone" if i % 2
                              else "pi")  # fmt: skip
        devices.append(dev.device_id)
    registry.revoke(devices[-1], reason="lost phone")
    blobs = BlobStore(home / "blobs")
    built.devices[region] = devices
    built.rounds = rounds
    for k in range(runs):
        run = f"{region}-{k + 1}"
        config = {"rounds": rounds, "aggregator": "cc", "f": 1, "seed": k}
        launch = admit_launch(store, region, config, sign_launch(operator, region, config), "ops")
        store.record_run(run, region, launch.launched_by, launch.config, launch.request)
        for rnd in range(1, rounds + 1):
            fates = [
                {"node_id": 100 + i, "accepted": True, "device_id": d, "num_examples": 60 + i,
                 "digest": f"{i:02x}" * 32, "fate": "kept" if i else "clipped",
                 "score": 0.1 * (i + 1), "weight": 1.0 / (clients - 1)}
                for i, d in enumerate(devices[:-1])
            ]  # fmt: skip
            fates.append({"node_id": 199, "accepted": False, "reason": "revoked-device",
                          "claimed_device_id": devices[-1]})  # fmt: skip
            if hostile:
                fates.append({"node_id": 666, "accepted": False, "reason": "bad-signature",
                              "detail": HOSTILE, "claimed_device_id": HOSTILE})  # fmt: skip
            acc = 0.3 + 0.6 * rnd / rounds
            record = {"round": rnd, "sampled": len(fates), "aggregated": True, "clients": fates,
                      "note": "cc: clipped 1 of 4",
                      "metrics": {"val-acc": acc, "val-loss": 2.0 - acc}}  # fmt: skip
            store.record_round(run, record, model_sha256=blobs.put(f"{run}/{rnd}".encode()))
        store.finish_run(run)
        built.runs.setdefault(region, []).append(run)
    if artifact:
        _artifact(home, store, key, region, built.runs[region][-1], operator, blobs, built)
    store.engine.dispose()


def _artifact(home: Path, store: Store, key, region: str, run: str, operator, blobs,  # type: ignore[no-untyped-def]
              built: Built) -> None:  # fmt: skip
    rng = np.random.default_rng(sum(map(ord, region)))
    sha = blobs.put_tensors({"w": rng.standard_normal((3, 4)).astype(np.float32)})
    manifest = Manifest(
        region=region, run_id=run, base_global_version="", model="mlp-test-v1", rounds=4,
        aggregator="cc", f=1, devices_accepted=4, updates_accepted=16, updates_rejected=4,
        rejected_by_reason={"revoked-device": 4}, val_acc=0.9, val_loss=1.1, test_acc=0.88,
        base_val_acc=None, audit_seq=store.audit.head()[0], audit_head=store.audit.head()[1],
        config_sha256="b" * 64,
    )  # fmt: skip
    path = write_artifact(home, store, key, manifest, sha)
    approver = generate_key()
    add_approver(home, store, region, "carol", approver.public_key(), operator)
    decision = approve(home, store, parse_artifact(path, path.read_bytes()), Policy(), approver)
    assert decision.statement_path is not None
    approval = decision.statement_path.read_bytes()
    built.bundles[region] = Bundle(region, path.read_bytes(), (approval,), blobs.get(sha))
    built.approvers[region] = public_bytes(approver).hex()


def build_home(home: Path, regions: tuple[str, ...] = ("eu", "us"), **kwargs: object) -> Built:
    built = Built(home)
    for region in regions:
        build_region(home, region, built=built, **kwargs)  # type: ignore[arg-type]
    return built


def add_global_version(built: Built) -> int:
    """Hand every region's approved artifact to a coordinator in the same home and merge them
    into a signed global version (``Coordinator.merge_once``); returns its number."""
    lines = ["[federation]", 'architecture = "mlp-test-v1"']
    for region in built.bundles:
        key = (built.home / "keys" / f"region-{region}.pub").read_text().strip()
        lines += [f"[regions.{region}]", f'key = "{key}"',
                  f'approvers = ["{built.approvers[region]}"]', "export = true"]  # fmt: skip
    fed = built.home / "coordinator" / "federation.toml"
    fed.parent.mkdir(parents=True, exist_ok=True)
    fed.write_text("\n".join(lines) + "\n")
    inbox = built.home / "coordinator" / "inbox"
    for region, bundle in built.bundles.items():
        where = inbox / region
        (where / "approvals").mkdir(parents=True)
        (where / "manifest.dsse.json").write_bytes(bundle.manifest)
        (where / "weights.safetensors").write_bytes(bundle.weights)
        for i, approval in enumerate(bundle.approvals):
            (where / "approvals" / f"{i}.dsse.json").write_bytes(approval)
    coordinator = Coordinator(built.home)
    outcome = coordinator.merge_once(inbox)
    coordinator.store.engine.dispose()
    assert outcome.published is not None, outcome.refusals
    return outcome.published.info.version


def add_release(built: Built, version: int) -> list[int]:
    """Release global ``version`` to the edge as fedgate does: students written where
    distillation writes them (real ONNX models), the release repository initialised (its root
    key outside the home), ``publish_release`` to every region, then region us held; returns
    the two release events' seqs in the coordinator's chain."""
    from fedgate.server.coordinator.store import CoordinatorStore
    from fedgate.server.db.engine import coordinator_url
    from fedgate.server.release.lifecycle import init_release
    from fedgate.server.release.publish import lineage_digest, publish_release, set_channel
    from tests.release_kit import write_students

    home = built.home
    store = CoordinatorStore.open(coordinator_url(home), None)
    write_students(home, version, lineage_digest(home, store, version))
    store.engine.dispose()
    init_release(home, home.parent / "release-root")
    publish_release(home, version, sorted(built.bundles))
    set_channel(home, "us", "held")
    with sqlite3.connect(home / "coordinator.db") as db:
        rows = db.execute("SELECT seq FROM events WHERE kind IN ('release.published', "
                          "'release.channel') ORDER BY seq").fetchall()  # fmt: skip
    return [int(r[0]) for r in rows]
