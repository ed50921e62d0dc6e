"""The global coordinator: every refusal reason, merge rules, signed atomic global versions,
its own audit chain (``audit verify --coordinator``) and the serve loop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from coordinator_kit import ARCH, bundle, make_fed, make_region, tensors, write_bundle
from typer.testing import CliRunner

from fedgate import cli
from fedgate.crypto import generate_key
from fedgate.errors import EXIT_USAGE, EXIT_VERIFICATION
from fedgate.server.coordinator.candidates import REASONS, Bundle, Expectation, screen
from fedgate.server.coordinator.federation import FederationError, parse_federation
from fedgate.server.coordinator.merge import MergeError, capped_weights, merge_models
from fedgate.server.coordinator.service import Coordinator, default_inbox
from fedgate.server.db.migrate import open_readonly


def _fed(root: Path, *names: str, **settings):
    import tomllib

    fed = make_fed(root, *names)
    return fed, parse_federation(tomllib.loads(fed.toml(**settings)))


def _reason(b: Bundle, federation, base: int = 0) -> str:
    accepted, refused = screen([b], federation, Expectation(base))
    assert not accepted and len(refused) == 1
    return refused[0].reason


def test_a_good_bundle_is_accepted(tmp_path: Path) -> None:
    fed, federation = _fed(tmp_path, "eu", "us")
    accepted, refused = screen([bundle(fed.regions["eu"])], federation, Expectation(0))
    assert refused == [] and [c.region for c in accepted] == ["eu"]
    assert accepted[0].devices == 10 and len(accepted[0].approvals) == 1


def test_each_refusal_reason(tmp_path: Path) -> None:
    import tomllib

    fed, federation = _fed(tmp_path, "eu", "us")
    eu, us = fed.regions["eu"], fed.regions["us"]
    good = bundle(eu)
    stranger = make_region(tmp_path, "apac")
    cases = {
        "unknown-region": bundle(stranger),
        "forged-manifest": bundle(eu, signer=generate_key()),
        "tampered-weights": Bundle("t", good.manifest, good.approvals, good.weights[:-1] + b"x"),
        "architecture-mismatch": bundle(eu, model="resnet"),
        "stale-base": bundle(eu, base_global_version="global:3"),
        "unapproved": bundle(eu, approvers=[]),
        "mismatched-approval": bundle(eu, approvers=[us.approver]),
        "approval-other-digest": Bundle(
            "o", good.manifest, bundle(eu, rounds=4).approvals, good.weights
        ),
        "malformed": Bundle("m", b"not json", good.approvals, good.weights),
    }
    forged = bytearray(good.approvals[0])
    sig_at = forged.index(b'"sig":"') + 8
    forged[sig_at] = ord("A") if forged[sig_at] != ord("A") else ord("B")
    cases["forged-approval"] = Bundle("f", good.manifest, (bytes(forged),), good.weights)
    for reason, b in cases.items():
        assert _reason(b, federation) == reason, reason
    no_export = parse_federation(tomllib.loads(fed.toml(export={"eu": False})))
    cases["export-forbidden"] = good
    assert _reason(good, no_export) == "export-forbidden"
    assert _reason(bundle(eu, base_global_version="v1"), federation) == "malformed"
    # duplicates: the same artifact twice, two from one region, one already merged
    accepted, refused = screen([good, good, bundle(eu, rounds=9)], federation, Expectation(0))
    assert len(accepted) == 1 and [r.reason for r in refused] == ["duplicate", "duplicate"]
    _, refused = screen([good], federation, Expectation(0), merged={good.artifact_sha256})
    assert [r.reason for r in refused] == ["duplicate"]
    assert set(cases) | {"duplicate"} == set(REASONS)


def test_shapes_must_match_the_base_and_each_other(tmp_path: Path) -> None:
    fed, federation = _fed(tmp_path, "eu", "us")
    small = bundle(fed.regions["eu"], tensors(1, size=8))
    big = bundle(fed.regions["us"], tensors(2, size=16))
    accepted, refused = screen([small, big], federation, Expectation(0))
    assert [c.region for c in accepted] == ["eu"]
    assert [r.reason for r in refused] == ["architecture-mismatch"]
    shapes = {"layer.weight": (4, 4), "layer.bias": (4,)}
    _, refused = screen([small], federation, Expectation(0, shapes))
    assert [r.reason for r in refused] == ["architecture-mismatch"]


def test_federation_file_errors_name_the_problem() -> None:
    with pytest.raises(FederationError, match="architecture"):
        parse_federation({"regions": {}})
    with pytest.raises(FederationError, match="no \\[regions"):
        parse_federation({"federation": {"architecture": ARCH}})
    with pytest.raises(FederationError, match="eu\\] approver"):
        parse_federation(
            {"federation": {"architecture": ARCH}, "regions": {"eu": {"key": "zz",
                                                                       "approvers": ["00"]}}}
        )  # fmt: skip
    with pytest.raises(FederationError, match="robust"):
        parse_federation({"federation": {"architecture": ARCH, "robust": "krum"}})


def test_weighted_mean_caps_device_counts() -> None:
    a = {"w": np.zeros(4, np.float32)}
    b = {"w": np.ones(4, np.float32)}
    out = merge_models([a, b], [1000, 10], device_cap=10)
    assert out.rule == "weighted-mean(cap=10)" and out.weights == (0.5, 0.5)
    np.testing.assert_allclose(out.tensors["w"], 0.5)
    assert out.tensors["w"].dtype == np.float32
    out = merge_models([a, b], [30, 10], device_cap=100)
    np.testing.assert_allclose(out.tensors["w"], 0.25)
    np.testing.assert_allclose(capped_weights([0, 0], 5), [0.5, 0.5])
    with pytest.raises(MergeError, match="nothing to merge"):
        merge_models([], [], device_cap=1)
    with pytest.raises(MergeError, match="shapes"):
        merge_models([a, {"w": np.ones(3, np.float32)}], [1, 1], device_cap=1)


def test_robust_rules_from_three_regions_resist_one_outlier() -> None:
    models = [{"w": np.full(5, v, np.float32)} for v in (1.0, 1.2, 1000.0)]
    med = merge_models(models, [1, 1, 10**6], device_cap=10**9, robust="median")
    assert med.rule == "median"
    np.testing.assert_allclose(med.tensors["w"], 1.2)
    models.append({"w": np.full(5, -1000.0, np.float32)})
    tm = merge_models(models, [1] * 4, device_cap=10, robust="trimmed-mean", trim=1)
    assert tm.rule == "trimmed-mean(trim=1)"
    np.testing.assert_allclose(tm.tensors["w"], 1.1, rtol=1e-6)


def _coordinator(tmp_path: Path, *names: str, **settings):
    fed = make_fed(tmp_path, *names)
    fed.write(tmp_path, **settings)
    return fed, Coordinator(tmp_path)


def _cli(*args: object) -> tuple[int, str]:
    cli._register()
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    return result.exit_code, result.output


def test_merge_publishes_a_signed_version_with_lineage(tmp_path: Path) -> None:
    fed, coord = _coordinator(tmp_path, "eu", "us", "apac")
    inbox = default_inbox(tmp_path)
    for name, region in fed.regions.items():
        write_bundle(inbox, name, bundle(region))
    write_bundle(inbox, "zz-stale", bundle(fed.regions["eu"], base_global_version="global:7"))
    outcome = coord.merge_once(inbox)
    pub = outcome.published
    assert pub is not None and pub.info.version == 1 and pub.info.rule == "median"
    assert [r.reason for r in outcome.refusals] == ["stale-base"]
    assert {e["region"] for e in pub.lineage} == {"eu", "us", "apac"}
    assert coord.store.current_version() == 1
    from fedgate.server.coordinator.versions import check_version

    pred = check_version(pub.info, coord.blobs, coord.signer.public_key())
    assert [e["artifact"] for e in pred["lineage"]] == [e["artifact"] for e in pub.lineage]
    assert all(len(e["approvals"]) == 1 for e in pred["lineage"])
    decisions = coord.store.decisions()
    assert sorted(d["verdict"] for d in decisions) == ["accepted"] * 3 + ["refused"]
    kinds = [e.kind for e in coord.store.audit.events()]
    assert kinds.count("candidate.accepted") == 3 and kinds[-1] == "global.version"
    # the same inbox again: the merged artifacts are duplicates, the stale one stale
    again = coord.merge_once(inbox)
    assert again.published is None
    assert sorted(r.reason for r in again.refusals) == ["duplicate"] * 3 + ["stale-base"]
    code, out = _cli("audit", "verify", "--coordinator", "--home", tmp_path, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["ok"] and report["global_versions_checked"] == 1
    # a version trained on v1 is accepted next; one whose weights changed shape is not
    nxt = bundle(fed.regions["us"], base_global_version="global:1", rounds=5)
    write_bundle(inbox, "next", nxt)
    assert coord.merge_once(inbox).published.info.version == 2  # type: ignore[union-attr]


def test_cli_merge_prints_refusals_and_exits_when_nothing_is_accepted(tmp_path: Path) -> None:
    fed = make_fed(tmp_path, "eu")
    fed.write(tmp_path)
    inbox = tmp_path / "in"
    write_bundle(inbox, "a", bundle(fed.regions["eu"], base_global_version="global:4"))
    code, out = _cli("coordinator", "merge", "--home", tmp_path, "--inbox", inbox)
    assert code == EXIT_USAGE
    assert "stale-base" in out and "nothing to merge" in out
    write_bundle(inbox, "b", bundle(fed.regions["eu"]))
    code, out = _cli("coordinator", "merge", "--home", tmp_path, "--inbox", inbox)
    assert code == 0 and "global version 1" in out, out
    code, out = _cli("coordinator", "status", "--home", tmp_path)
    assert code == 0 and "current global version: 1" in out


def test_audit_verify_coordinator_catches_a_tampered_version(tmp_path: Path) -> None:
    fed, coord = _coordinator(tmp_path, "eu")
    inbox = default_inbox(tmp_path)
    write_bundle(inbox, "eu", bundle(fed.regions["eu"]))
    pub = coord.merge_once(inbox).published
    assert pub is not None
    weights = coord.blobs.path(pub.info.weights_sha256)
    weights.chmod(0o644)
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    code, out = _cli("audit", "verify", "--coordinator", "--home", tmp_path)
    assert code == EXIT_VERIFICATION and "global version 1" in out, out
    # the chain is the coordinator's own: the region verb does not find it
    engine = open_readonly(f"sqlite:///{tmp_path / 'coordinator.db'}")
    assert engine.dialect.name == "sqlite"


def test_serve_merges_when_every_region_has_an_artifact(tmp_path: Path) -> None:
    fed, coord = _coordinator(tmp_path, "eu", "us")
    inbox = default_inbox(tmp_path)
    write_bundle(inbox, "eu", bundle(fed.regions["eu"]))
    write_bundle(inbox, "bad", bundle(fed.regions["us"], model="other"))
    seen = []
    ticks = iter(range(100))

    def report(outcome) -> None:
        seen.append(outcome)
        if outcome.published is None:  # after the first refusal the missing region arrives
            write_bundle(inbox, "us", bundle(fed.regions["us"]))

    n = coord.serve(inbox, poll=0.0, deadline=50, max_versions=1, report=report,
                    clock=lambda: float(next(ticks)))  # fmt: skip
    assert n == 1
    assert [r.reason for r in seen[0].refusals] == ["architecture-mismatch"]
    pub = seen[-1].published
    assert pub is not None and {e["region"] for e in pub.lineage} == {"eu", "us"}


def test_serve_merges_what_is_there_when_the_deadline_passes(tmp_path: Path) -> None:
    fed, coord = _coordinator(tmp_path, "eu", "us", "apac")
    inbox = default_inbox(tmp_path)
    write_bundle(inbox, "eu", bundle(fed.regions["eu"]))
    ticks = iter(range(0, 1000, 10))
    n = coord.serve(inbox, poll=0.0, deadline=25, max_versions=1,
                    clock=lambda: float(next(ticks)))  # fmt: skip
    assert n == 1 and coord.store.current_version() == 1
    assert coord.store.version(1).regions == 1  # type: ignore[union-attr]


def test_coordinator_database_on_both_backends(tmp_path: Path, db_url: str) -> None:
    from fedgate.server.audit.keys import coordinator_pub_path, load_pubkeys
    from fedgate.server.audit.verify import verify_database
    from fedgate.server.coordinator.versions import check_versions

    fed = make_fed(tmp_path, "eu", "us")
    fed.write(tmp_path)
    coord = Coordinator(tmp_path, db=db_url)
    inbox = default_inbox(tmp_path)
    write_bundle(inbox, "eu", bundle(fed.regions["eu"]))
    write_bundle(inbox, "us", bundle(fed.regions["us"], approvers=[]))
    outcome = coord.merge_once(inbox)
    assert outcome.published is not None and outcome.published.info.rule.startswith("weighted")
    assert [r.reason for r in outcome.refusals] == ["unapproved"]
    keys = load_pubkeys([coordinator_pub_path(tmp_path)])
    readonly = open_readonly(db_url)
    report = verify_database(readonly, keys)
    assert report.ok and report.unsigned_tail == 0, report.problems
    problems, checked = check_versions(readonly, coord.blobs.root, keys)
    assert problems == [] and checked == 1
