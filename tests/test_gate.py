"""The regional artifact (server/region/artifact.py) and the approval gate (server/gate/):
every policy check on hand-made manifests, the decisions, and tamper properties."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgate.crypto import fingerprint, generate_key, sha256_hex
from fedgate.server.audit.actors import OPERATOR, ActorError, config_digest, sign_request
from fedgate.server.audit.coverage import CHECKPOINT_KINDS
from fedgate.server.audit.keys import ensure_region_key
from fedgate.server.audit.store import Store
from fedgate.server.db.blobs import BlobStore
from fedgate.server.gate.approvers import add_approver, list_approvers, remove_approver
from fedgate.server.gate.decisions import (
    APPROVED,
    REJECTED,
    GateRefused,
    approve,
    reject,
    verify_approval,
)
from fedgate.server.gate.policy import Policy, PolicyError, evaluate, load_policy, policy_path
from fedgate.server.region.artifact import (
    Manifest,
    build_manifest,
    load_artifact,
    verify_artifact,
    verify_bytes,
    write_artifact,
)
from fedgate.server.region.run_spec import RunSpec
from fedgate.server.trust.actors import ActorUsageError, add_actor
from fedgate.statements import MalformedStatement, StatementError

REGION = "eu"
GOOD = Manifest(
    region=REGION, run_id="r1", base_global_version="", model="cnn", rounds=3,
    aggregator="trimmed-mean", f=1, devices_accepted=5, updates_accepted=12, updates_rejected=3,
    rejected_by_reason={"bad-signature": 3}, val_acc=0.9, val_loss=0.3, test_acc=0.88,
    base_val_acc=None, audit_seq=10, audit_head="a" * 64, config_sha256="b" * 64,
)  # fmt: skip
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _by_name(checks):
    return {c.name: c for c in checks}


# -- every policy check on hand-made manifests -------------------------------------------------
def test_a_good_manifest_passes_every_check_and_drop_is_not_applicable_without_base() -> None:
    checks = _by_name(evaluate(GOOD, Policy(), None))
    assert all(c.passed for c in checks.values())
    drop = checks["accuracy drop vs base"]
    assert not drop.applicable and drop.measured.startswith("n/a")
    assert checks["distinct devices"].measured == "5" and checks["distinct devices"].limit == ">= 3"


@pytest.mark.parametrize(
    ("change", "policy", "failing", "measured"),
    [
        ({"devices_accepted": 2}, Policy(), "distinct devices", "2"),
        ({"val_acc": 0.4}, Policy(), "validation accuracy", "0.4000"),
        ({"val_acc": None}, Policy(), "validation accuracy", "missing"),
        ({"updates_rejected": 13}, Policy(), "rejected fraction", "0.5200"),
        ({}, Policy(allowed_aggregators=("krum", "median")), "aggregator", "trimmed-mean"),
        ({}, Policy(min_f=2), "f", "1"),
        ({}, Policy(may_leave_region=False), "residency", "must stay in region"),
    ],
)
def test_each_check_fails_alone(change, policy, failing, measured) -> None:
    checks = evaluate(replace(GOOD, **change), policy, None)
    failed = [c for c in checks if not c.passed]
    assert [c.name for c in failed] == [failing]
    assert failed[0].measured == measured


def test_accuracy_drop_against_the_base_global_model() -> None:
    policy = Policy(max_accuracy_drop=0.05)
    ok = _by_name(evaluate(GOOD, policy, 0.93))["accuracy drop vs base"]
    assert ok.passed and ok.applicable and ok.measured == "0.0300"
    bad = _by_name(evaluate(GOOD, policy, 0.96))["accuracy drop vs base"]
    assert not bad.passed and bad.measured == "0.0600"


def test_rejected_fraction_of_a_run_without_updates_is_zero() -> None:
    empty = replace(GOOD, updates_accepted=0, updates_rejected=0)
    assert _by_name(evaluate(empty, Policy(), None))["rejected fraction"].passed


def test_policy_file_keys_defaults_and_errors(tmp_path: Path) -> None:
    assert load_policy(tmp_path, REGION) == Policy()
    path = policy_path(tmp_path, REGION)
    path.parent.mkdir(parents=True)
    path.write_text('min-devices = 7\naggregators = ["krum"]\nmay-leave-region = false\n'
                    .replace("aggregators", "allowed-aggregators"))  # fmt: skip
    policy = load_policy(tmp_path, REGION)
    assert (policy.min_devices, policy.allowed_aggregators) == (7, ("krum",))
    assert policy.may_leave_region is False and policy.min_val_accuracy == Policy().min_val_accuracy
    assert policy.digest != Policy().digest
    bad = [("bogus = 1", "unknown key"), ("min-devices = 'x'", "bad value"),
           ("max-accuracy-drop = 2.0", r"in \[0, 1\]"), ("=", "not TOML")]  # fmt: skip
    for text, match in bad:
        path.write_text(text)
        with pytest.raises(PolicyError, match=match):
            load_policy(tmp_path, REGION)


def test_manifest_from_json_refuses_missing_and_mistyped_fields() -> None:
    assert Manifest.from_json(GOOD.to_json()) == GOOD
    with pytest.raises(MalformedStatement, match="missing"):
        Manifest.from_json({k: v for k, v in GOOD.to_json().items() if k != "f"})
    with pytest.raises(MalformedStatement, match="devices_accepted"):
        Manifest.from_json({**GOOD.to_json(), "devices_accepted": "5"})


def test_build_manifest_counts_distinct_accepted_devices_and_reasons() -> None:
    fate = SimpleNamespace
    rounds = [
        SimpleNamespace(clients=[fate(accepted=True, device_id="d1", reason=""),
                                 fate(accepted=True, device_id="d2", reason=""),
                                 fate(accepted=False, device_id="", reason="bad-signature")]),
        SimpleNamespace(clients=[fate(accepted=True, device_id="d1", reason=""),
                                 fate(accepted=False, device_id="", reason="replay")]),
    ]  # fmt: skip
    spec = RunSpec(home="/h", region=REGION, regions=(REGION,), rounds=2)
    final = {"val-acc": 0.8, "val-loss": float("nan"), "test-acc": 0.7}
    manifest = build_manifest(spec, "r9", rounds, final, (4, "c" * 64))
    assert manifest.devices_accepted == 2
    assert (manifest.updates_accepted, manifest.updates_rejected) == (3, 2)
    assert manifest.rejected_by_reason == {"bad-signature": 1, "replay": 1}
    assert manifest.val_loss is None and manifest.base_val_acc is None
    assert (manifest.audit_seq, manifest.audit_head) == (4, "c" * 64)
    assert len(manifest.config_sha256) == 64


# -- an artifact and decisions on a store made through the Store API --------------------------
@pytest.fixture
def region(tmp_path: Path):
    key = ensure_region_key(tmp_path, REGION)
    store = Store.open(f"sqlite:///{tmp_path / 'eu.db'}", signer=key)
    operator = generate_key()
    ops = add_actor(store, REGION, "ops", OPERATOR, operator)
    approver = generate_key()
    add_approver(tmp_path, store, REGION, "alice", approver.public_key(), operator)
    config = {"rounds": 3}
    launch = sign_request(operator, "run.launch", REGION, config_digest(config)).to_json()
    store.record_run("r1", REGION, ops.label, config, launch)
    sha = BlobStore(tmp_path / "blobs").put_tensors({"w": np.arange(6, dtype=np.float32)})
    manifest = replace(GOOD, audit_seq=store.audit.head()[0], audit_head=store.audit.head()[1])
    path = write_artifact(tmp_path, store, key, manifest, sha)
    store.finish_run("r1")
    yield SimpleNamespace(home=tmp_path, store=store, key=key, operator=operator,
                          approver=approver, sha=sha, path=path)  # fmt: skip
    store.engine.dispose()


def test_artifact_is_written_recorded_and_verifies(region) -> None:
    artifact = verify_artifact(region.home, region.sha[:12])
    assert artifact.manifest == Manifest.from_json(artifact.statement.predicate)
    assert artifact.manifest.run_id == "r1" and artifact.sha256 == region.sha
    assert verify_artifact(region.home, str(region.path)).envelope == region.path.read_bytes()
    row = region.store.artifact(region.sha)
    assert row["kind"] == "regional-model" and row["path"] == str(region.path)
    assert row["manifest"]["envelope_sha256"] == sha256_hex(region.path.read_bytes())
    kinds = [e.kind for e in region.store.audit.events()]
    assert "artifact.produced" in kinds


def test_approve_signs_records_and_audits(region) -> None:
    artifact = verify_artifact(region.home, region.sha)
    decision = approve(region.home, region.store, artifact, Policy(), region.approver)
    assert decision.approved and decision.approver == fingerprint(region.approver)
    envelope = decision.statement_path.read_bytes()
    verified = verify_approval(envelope, [region.approver.public_key()], artifact)
    predicate = verified.statement.predicate
    assert predicate["policy_sha256"] == Policy().digest
    assert predicate["manifest_sha256"] == artifact.envelope_sha256
    assert len(predicate["checks"]) == 7 and predicate["approver_name"] == "alice"
    event = [e for e in region.store.audit.events(kind=APPROVED)]
    assert len(event) == 1
    payload = json.loads(event[0].payload)
    assert payload["statement_sha256"] == sha256_hex(envelope)
    assert [c["passed"] for c in payload["checks"]["checks"]] == [True] * 7
    assert APPROVED in CHECKPOINT_KINDS and REJECTED in CHECKPOINT_KINDS
    assert event[0].seq in {h.seq for h in region.store.audit.heads()}  # under a signed head


def test_approve_refuses_when_a_check_fails_and_records_nothing(region) -> None:
    artifact = verify_artifact(region.home, region.sha)
    with pytest.raises(GateRefused, match="distinct devices 5"):
        approve(region.home, region.store, artifact, Policy(min_devices=6), region.approver)
    assert not list(region.store.audit.events(kind=APPROVED))


def test_only_a_registered_approver_may_decide(region) -> None:
    artifact = verify_artifact(region.home, region.sha)
    for key in (generate_key(), region.operator):
        with pytest.raises(ActorError, match="only a registered approver"):
            approve(region.home, region.store, artifact, Policy(), key)
    with pytest.raises(ActorUsageError, match="server key"):
        approve(region.home, region.store, artifact, Policy(), region.key)
    with pytest.raises(ActorUsageError, match="server key"):
        add_approver(region.home, region.store, REGION, "srv", region.key.public_key(),
                     region.operator)  # fmt: skip


def test_approvers_add_list_remove(region) -> None:
    assert [a.name for a in list_approvers(region.store, REGION)] == ["alice"]
    removed = remove_approver(region.store, REGION, "alice", region.operator)
    assert removed.fingerprint == fingerprint(region.approver)
    assert list_approvers(region.store, REGION) == []
    with pytest.raises(ActorUsageError):
        remove_approver(region.store, REGION, "alice", region.operator)
    artifact = verify_artifact(region.home, region.sha)
    with pytest.raises(ActorError):  # removed: its key decides nothing any more
        approve(region.home, region.store, artifact, Policy(), region.approver)


def test_reject_records_reason_and_checks(region) -> None:
    artifact = verify_artifact(region.home, region.sha)
    decision = reject(region.home, region.store, artifact, Policy(min_f=3), "f too low",
                      region.approver)  # fmt: skip
    assert not decision.approved
    events = list(region.store.audit.events(kind=REJECTED))
    payload = json.loads(events[0].payload)
    assert payload["reason"] == "f too low" and payload["approver"] == fingerprint(region.approver)
    assert [c["name"] for c in payload["checks"]["checks"] if not c["passed"]] == ["f"]
    with pytest.raises(GateRefused, match="reason"):
        reject(region.home, region.store, artifact, Policy(), "  ")


# -- tamper properties: weights, manifest and approval bytes -----------------------------------
def _flip(data: bytes, i: int, value: int) -> bytes:
    i %= len(data)
    value = value if value != data[i] else (value + 1) % 256
    return data[:i] + bytes([value]) + data[i + 1 :]


@SETTINGS
@given(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from(["weights", "manifest"]))
def test_any_change_to_weights_or_manifest_is_refused(region, i, value, part) -> None:
    envelope = region.path.read_bytes()
    weights = BlobStore(region.home / "blobs").path(region.sha).read_bytes()
    pub = region.key.public_key()
    assert verify_bytes(envelope, weights, pub).sha256 == region.sha
    if part == "weights":
        weights = _flip(weights, i, value)
    else:
        envelope = _flip(envelope, i, value)
    with pytest.raises(StatementError):
        verify_bytes(envelope, weights, pub)


@SETTINGS
@given(st.integers(0, 10**6), st.integers(0, 255))
def test_any_change_to_approval_bytes_is_refused(region, i, value) -> None:
    artifact = load_artifact(region.home, region.sha)
    path = next(region.home.glob("artifacts/*.approval-*.dsse.json"), None)
    if path is None:
        path = approve(region.home, region.store, verify_artifact(region.home, region.sha),
                       Policy(), region.approver).statement_path  # fmt: skip
    approval = path.read_bytes()
    keys = [region.approver.public_key()]
    verify_approval(approval, keys, artifact)
    with pytest.raises(StatementError):
        verify_approval(_flip(approval, i, value), keys, artifact)


# -- the verbs ----------------------------------------------------------------------------------
def _cli(home: Path, *args: str):
    from typer.testing import CliRunner

    from fedgate.cli import _register, app

    _register()
    env = {"FEDGATE_DB": f"sqlite:///{home / 'eu.db'}", "COLUMNS": "200"}
    return CliRunner().invoke(app, [*args, "--home", str(home)], env=env)


def test_cli_artifact_show_verify_and_gate_check_approve_reject(region, tmp_path: Path) -> None:
    home, ref = region.home, region.sha[:12]
    shown = _cli(home, "region", "artifact", "show", ref, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["manifest"]["run_id"] == "r1"
    verified = _cli(home, "region", "artifact", "verify", ref)
    assert verified.exit_code == 0 and "verified" in verified.output
    strict = tmp_path / "strict.toml"
    strict.write_text("min-devices = 9\n")
    failed = _cli(home, "gate", "check", ref, "--policy", str(strict))
    assert failed.exit_code == 2, failed.output
    assert "distinct devices" in failed.output and ">= 9" in failed.output
    assert "FAIL" in failed.output
    passed = _cli(home, "gate", "check", ref)
    assert passed.exit_code == 0, passed.output
    key_file = tmp_path / "alice.key"
    from fedgate.crypto import save_private_key

    save_private_key(region.approver, key_file)
    refused = _cli(home, "gate", "approve", ref, "--key", str(key_file), "--policy", str(strict))
    assert refused.exit_code == 2 and "not approved" in refused.output
    approved = _cli(home, "gate", "approve", ref, "--key", str(key_file))
    assert approved.exit_code == 0, approved.output
    assert "approval statement" in approved.output
    rejected = _cli(home, "gate", "reject", ref, "--reason", "second thoughts")
    assert rejected.exit_code == 0, rejected.output
    listed = _cli(home, "gate", "approvers", "list", "--region", REGION, "--json")
    assert [a["name"] for a in json.loads(listed.output)] == ["alice"]
    kinds = [e.kind for e in region.store.audit.events()]
    assert kinds.count(APPROVED) == 1 and kinds.count(REJECTED) == 1
    region.path.write_bytes(region.path.read_bytes().replace(b'"payload":"', b'"payload":"A'))
    tampered = _cli(home, "region", "artifact", "verify", ref)
    assert tampered.exit_code == 2, tampered.output


def test_audit_verify_passes_with_artifact_and_gate_decisions(region) -> None:
    from fedgate.server.audit import verify_database

    artifact = verify_artifact(region.home, region.sha)
    approve(region.home, region.store, artifact, Policy(), region.approver)
    reject(region.home, region.store, artifact, Policy(), "withdrawn", region.approver)
    report = verify_database(
        region.store.engine, {fingerprint(region.key): region.key.public_key()}
    )
    assert report.ok, [p.message for p in report.problems]
    assert report.status == "ok" and report.coverage_checked


def test_a_run_reproducing_earlier_weights_keeps_the_earlier_artifact(region) -> None:
    """Seen in the load test: identical runs (same seed, data, config) make byte-identical
    weights; the second run must finish, keeping the artifact any approval names."""
    from fedgate.server.audit import verify_database

    config = {"rounds": 3}
    ops = sign_request(region.operator, "run.launch", REGION, config_digest(config)).to_json()
    region.store.record_run("r2", REGION, region.store.run("r1").launched_by, config, ops)
    before = region.path.read_bytes()
    again = replace(GOOD, run_id="r2", audit_seq=region.store.audit.head()[0],
                    audit_head=region.store.audit.head()[1])  # fmt: skip
    path = write_artifact(region.home, region.store, region.key, again, region.sha)
    region.store.finish_run("r2")
    assert path == region.path and path.read_bytes() == before
    assert region.store.artifact(region.sha)["run_id"] == "r1"
    [event] = [e for e in region.store.audit.events() if e.kind == "artifact.reproduced"]
    assert event.data == {"sha256": region.sha, "run": "r2", "first_run": "r1"}
    report = verify_database(
        region.store.engine, {fingerprint(region.key): region.key.public_key()}
    )
    assert report.ok, [p.message for p in report.problems]
