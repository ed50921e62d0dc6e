"""The cycle's pieces without Flower: a run starting from a verified global version, the
bundle a region hands to the coordinator, and the federation file a cycle generates."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from coordinator_kit import bundle, make_fed
from typer.testing import CliRunner

from fedgate import cli
from fedgate.crypto import public_bytes
from fedgate.errors import EXIT_VERIFICATION, VerificationError
from fedgate.server.coordinator.candidates import Expectation, read_inbox, screen
from fedgate.server.coordinator.federation import parse_federation, render_federation
from fedgate.server.coordinator.service import (
    Coordinator,
    GlobalVersionError,
    default_inbox,
    load_global,
)
from fedgate.server.db import BlobStore
from fedgate.server.gate.decisions import GateRefused
from fedgate.server.gate.export import approvals_of, export_bundle
from fedgate.server.launch.config import RegionConfig
from fedgate.server.launch.run_records import init_point
from fedgate.server.region.artifact import parse_artifact
from fedgate.server.region.run_spec import ConfigError, RunSpec

EU = RegionConfig(name="eu")


def _published(root: Path) -> Coordinator:
    """A coordinator under ``root`` that merged one approved artifact of region eu."""
    fed = make_fed(root, "eu")
    fed.write(root)
    coordinator = Coordinator(root)
    inbox = default_inbox(root)
    region = fed.regions["eu"]
    found = parse_artifact(Path("m"), bundle(region).manifest)
    export_bundle(region.home, found, inbox)
    assert coordinator.merge_once(inbox).published is not None
    return coordinator


def test_a_run_starts_from_a_verified_global_version(tmp_path: Path) -> None:
    coordinator = _published(tmp_path)
    info = coordinator.store.version(1)
    assert info is not None
    start = init_point(tmp_path, EU, "global:1")
    assert start.init_model == info.weights_sha256
    assert start.base_global_version == "global:1"
    assert start.run_config()["base-global-version"] == "global:1"
    assert BlobStore(tmp_path / "blobs").has(info.weights_sha256)  # in the region's blobs
    with pytest.raises(GlobalVersionError, match=r"no such global version .* \(current: 1\)"):
        init_point(tmp_path, EU, "global:2")
    # weights that no longer hash to what the statement signs are refused
    blob = coordinator.blobs.path(info.weights_sha256)
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    with pytest.raises(VerificationError, match="global version 1"):
        load_global(tmp_path, 1)


def test_the_run_spec_checks_the_base_version() -> None:
    spec = RunSpec(home="/h", region="eu", base_global_version="global:3")
    assert RunSpec.from_run_config(spec.to_run_config()).base_global_version == "global:3"
    for bad in ("3", "global:", "global:0", "global:x"):
        with pytest.raises(ConfigError, match="base-global-version must be empty or global:N"):
            RunSpec.from_run_config({**spec.to_run_config(), "base-global-version": bad})


def test_export_writes_a_whole_bundle_the_coordinator_accepts(tmp_path: Path) -> None:
    fed = make_fed(tmp_path, "eu")
    region = fed.regions["eu"]
    b = bundle(region)
    found = parse_artifact(Path("m"), b.manifest)
    inbox = tmp_path / "inbox"
    (inbox / ".eu-half.123.tmp").mkdir(parents=True)  # an export still being assembled
    target = export_bundle(region.home, found, inbox)
    assert sorted(p.name for p in target.rglob("*") if p.is_file()) == sorted(
        ["manifest.dsse.json", "weights.safetensors"]
        + [p.name for p in approvals_of(region.home, found.sha256)]
    )
    bundles = read_inbox(inbox)
    assert [Path(x.source).name for x in bundles] == [target.name]  # hidden dirs are not bundles
    federation = parse_federation(tomllib.loads(fed.toml()))
    accepted, refused = screen(bundles, federation, Expectation(0), set())
    assert len(accepted) == 1 and not refused
    # an artifact nobody approved is not exported (nothing written) unless asked for
    fresh = bundle(region, approvers=[])
    unapproved = parse_artifact(Path("m"), fresh.manifest)
    with pytest.raises(GateRefused, match="has no approval; approve it first"):
        export_bundle(region.home, unapproved, tmp_path / "other")
    assert not (tmp_path / "other").exists()
    offered = export_bundle(region.home, unapproved, tmp_path / "other", unapproved=True)
    accepted, refused = screen(read_inbox(offered.parent), federation, Expectation(0), set())
    assert not accepted and [r.reason for r in refused] == ["unapproved"]


def test_cli_export_refuses_an_unapproved_artifact(tmp_path: Path) -> None:
    region = make_fed(tmp_path, "eu").regions["eu"]
    fresh = parse_artifact(Path("m"), bundle(region, approvers=[]).manifest)
    cli._register()
    args = ["region", "artifact", "export", fresh.sha256[:16], "--home", str(region.home),
            "--to", str(tmp_path / "inbox")]  # fmt: skip
    result = CliRunner().invoke(cli.app, args)
    assert result.exit_code == EXIT_VERIFICATION, result.output
    assert "has no approval" in result.output


def test_a_generated_federation_file_parses_to_what_it_was_given(tmp_path: Path) -> None:
    fed = make_fed(tmp_path, "eu", "us")
    keys = {n: (public_bytes(r.key).hex(), [public_bytes(r.approver).hex()])
            for n, r in fed.regions.items()}  # fmt: skip
    parsed = parse_federation(tomllib.loads(render_federation("cnn-v1", keys, device_cap=50)))
    assert parsed.architecture == "cnn-v1" and parsed.device_cap == 50
    assert set(parsed.regions) == {"eu", "us"}
    assert all(r.export for r in parsed.regions.values())
    with pytest.raises(ValueError, match="approvers must list approver keys"):
        render_federation("cnn-v1", {"eu": (keys["eu"][0], [])})


def test_a_cycle_report_shows_verdicts_and_what_to_type(tmp_path: Path, monkeypatch) -> None:
    from rich.console import Console

    from fedgate.server.cli import cycle as cycle_cli
    from fedgate.server.launch.cycle import CycleResult, RegionResult

    done = CycleResult(2, 1, [
        RegionResult("eu", "1", "a" * 64, 0.85, 0.77, "approved"),
        RegionResult("us", "2", "b" * 64, 0.40, 0.35, "rejected",
                     ("validation accuracy 0.4000 (limit >= 0.5000)",)),
        RegionResult("ap", "3", "c" * 64, 0.80, 0.70, "pending"),
    ], version=2, lineage=[{"region": "eu", "share": 1.0}], global_test_acc=0.81,
       refusals=["us-bbbb: refused (unapproved): 0 valid approval(s) of 1"])  # fmt: skip
    out = Console(record=True, width=300)
    monkeypatch.setattr(cycle_cli, "console", out)
    monkeypatch.setattr(cycle_cli, "err", out)
    cycle_cli.report_cycle(done, tmp_path)
    text = out.export_text()
    assert "cycle 2 (from global v1)" in text and "global v2" in text and "0.810" in text
    assert "rejected: validation accuracy 0.4000 (limit >= 0.5000)" in text
    assert "coordinator refused us-bbbb: refused (unapproved)" in text
    assert f"fedgate gate approve {'c' * 16} --key APPROVER.key --home {tmp_path}" in text
    assert f"fedgate gate approve {'a' * 16}" not in text  # only what waits for a decision
