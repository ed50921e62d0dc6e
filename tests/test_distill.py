"""``fedgate distill``: students of a global version made through the coordinator's own API
(a region's approved artifact holding a teacher trained here on real digits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from coordinator_kit import bundle, make_fed, write_bundle
from typer.testing import CliRunner

from fedgate import cli
from fedgate.crypto import canonical_json, sha256_hex
from fedgate.errors import EXIT_USAGE, EXIT_VERIFICATION
from fedgate.models.data import common_test_split, region_pool
from fedgate.models.nets import build_model
from fedgate.models.train import train_local
from fedgate.server.coordinator.distill import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    distill_version,
    render_table,
    students_dir,
)
from fedgate.server.coordinator.service import Coordinator, default_inbox
from fedgate.server.coordinator.versions import check_version

TEACHER = "mlp-64-32-10"


def _cli(*args: object) -> tuple[int, str]:
    cli._register()
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A coordinator home with global version 1: one region's teacher, trained on its pool."""
    root = tmp_path_factory.mktemp("distill")
    torch.set_num_threads(1)
    teacher = build_model(TEACHER, seed=0)
    train_local(teacher, region_pool("eu", ("eu",)), epochs=10, lr=0.05)
    weights = {k: v.numpy() for k, v in teacher.state_dict().items()}
    fed = make_fed(root, "eu")
    fed.write(root, architecture=TEACHER)
    write_bundle(default_inbox(root), "eu", bundle(fed.regions["eu"], weights, model=TEACHER))
    assert Coordinator(root).merge_once(default_inbox(root)).published is not None
    return root


@pytest.fixture(scope="module")
def reports(home: Path):
    lines: list[str] = []
    return distill_version(home, 1, progress=lines.append), lines


def test_distill_writes_students_and_the_release_manifest(home: Path, reports) -> None:
    found, lines = reports
    assert [r.profile for r in found] == ["pi", "phone"]
    assert any("phone: distil step 800/800" in line for line in lines)
    out = students_dir(home, 1)
    doc = json.loads((out / MANIFEST_NAME).read_text())
    assert doc["format"] == MANIFEST_FORMAT and doc["global_version"] == 1
    coord = Coordinator(home)
    info = coord.store.version(1)
    predicate = check_version(info, coord.blobs, coord.signer.public_key())
    assert doc["statement_sha256"] == info.statement_sha256
    assert doc["lineage_sha256"] == sha256_hex(canonical_json(predicate["lineage"]))
    assert doc["teacher"]["weights_sha256"] == info.weights_sha256
    for r in found:
        entry = doc["students"][r.profile]
        data = (out / entry["file"]).read_bytes()
        assert entry["sha256"] == sha256_hex(data) and entry["bytes"] == len(data)
        assert entry["input_name"] == "input" and entry["input_shape"] == ["batch", 64]
        assert entry["global_version"] == 1 and entry["lineage_sha256"] == doc["lineage_sha256"]
        assert entry["latency_ms"] > 0 and entry["onnx_top1_agreement"] >= 0.97
    events = [e for e in coord.store.audit.events() if e.kind == "distill.students"]
    assert len(events) == 1
    payload = json.loads(events[0].payload)
    assert payload["version"] == 1 and payload["statement"] == info.statement_sha256
    assert {s["sha256"] for s in payload["students"]} == {r.sha256 for r in found}
    code, output = _cli("audit", "verify", "--coordinator", "--home", home)
    assert code == 0, output


def test_the_shipped_file_scores_what_the_manifest_says(home: Path, reports) -> None:
    from fedgate.models.onnx_export import accuracy

    found, _ = reports
    test = common_test_split(0)
    for r in found:
        data = (students_dir(home, 1) / r.file).read_bytes()
        assert accuracy(data, test) == pytest.approx(r.student_accuracy)
        assert r.teacher_accuracy > 0.9
        assert r.student_accuracy > 0.85 and r.baseline_accuracy > 0.8
    pi, phone = found
    assert phone.parameters < pi.parameters < phone.teacher_parameters
    assert phone.bytes < pi.bytes and phone.size_ratio >= 5.0
    assert phone.teacher_bytes == len(Coordinator(home).blobs.get(
        Coordinator(home).store.version(1).weights_sha256))  # fmt: skip


def test_table_renders_every_profile(reports) -> None:
    from rich.console import Console

    console = Console(record=True, width=140)
    console.print(render_table(reports[0]))
    text = console.export_text()
    assert "phone" in text and "pi" in text and "no KD" in text


def test_cli_distills_one_profile_as_json(home: Path, tmp_path: Path) -> None:
    code, output = _cli("distill", "--global-version", 1, "--home", home, "--profile", "phone",
                        "--json")  # fmt: skip
    assert code == 0, output
    doc = json.loads(output[output.index("{") :])
    assert set(doc["students"]) == {"phone"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--global-version", 7), "global version 7 is not recorded (current: 1)"),
        (("--global-version", 1, "--profile", "watch"), "unknown edge profile 'watch'"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(home: Path, args, message: str) -> None:
    code, output = _cli("distill", "--home", home, *args)
    assert code == EXIT_USAGE and message in output, output


def test_cli_refuses_a_home_without_a_coordinator(tmp_path: Path) -> None:
    code, output = _cli("distill", "--global-version", 1, "--home", tmp_path)
    assert code == EXIT_USAGE and "no coordinator under" in output, output
    assert not (tmp_path / "coordinator.db").exists()


def test_tampered_teacher_weights_are_refused_before_training(home: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "home"
    shutil.copytree(home, copy, ignore=shutil.ignore_patterns("students"))
    coord = Coordinator(copy)
    blob = coord.blobs.path(coord.store.version(1).weights_sha256)
    blob.chmod(0o644)
    raw = bytearray(blob.read_bytes())
    raw[-1] ^= 1
    blob.write_bytes(bytes(raw))
    code, output = _cli("distill", "--global-version", 1, "--home", copy)
    assert code == EXIT_VERIFICATION and "corrupt" in output, output
    assert not students_dir(copy, 1).exists()
