"""Distil the students of one global version: per edge profile, a student trained with
knowledge distillation from the global teacher on the public transfer split, quantized to int8,
exported to ONNX, checked with onnxruntime against its torch self and measured.

The teacher is taken only from a recorded version whose blobs are intact and whose statement
the coordinator signed (``versions.check_version``). Layout under ``<home>/coordinator/``:

    students/v<N>/<profile>.onnx    one self-contained int8 ONNX file per profile
    students/v<N>/students.json     the release manifest (``MANIFEST_FORMAT``, docs/distill.md)

Every file goes through the atomic writer; the manifest is written last, so a reader that sees
it sees files with the digests it names. The run is recorded in the coordinator's audit chain
(``distill.students``) and the chain head is signed.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedgate.atomic_file import write_atomic
from fedgate.crypto import canonical_json, load_private_key, sha256_hex
from fedgate.errors import UsageError, VerificationError
from fedgate.models.distill import DistillConfig
from fedgate.models.students import DEFAULT_PROFILES, StudentSpec, student_spec
from fedgate.models.threads import one_torch_thread
from fedgate.server.audit.keys import coordinator_key_path
from fedgate.server.coordinator.service import coordinator_dir
from fedgate.server.coordinator.store import CoordinatorStore
from fedgate.server.coordinator.versions import check_version
from fedgate.server.db.blobs import BlobStore
from fedgate.server.db.engine import coordinator_url, parse_url, sqlite_path

MANIFEST_NAME = "students.json"
MANIFEST_FORMAT = "fedgate.students/v1"
LATENCY_RUNS = 1000
Progress = Callable[[str], None]


class DistillError(UsageError, ValueError):
    """The version, profile or home cannot be distilled (named in the message)."""


class StudentMismatchError(VerificationError):
    """The int8 ONNX student strays from its torch self beyond the stated tolerance."""


@dataclass(frozen=True)
class StudentReport:
    """One profile's student, as the manifest records it (docs/distill.md)."""

    profile: str
    architecture: str
    file: str
    sha256: str
    bytes: int
    parameters: int
    input_name: str
    input_shape: list[str | int]
    output_name: str
    teacher_accuracy: float
    student_accuracy: float  # the int8 ONNX file under onnxruntime, common test split
    student_float_accuracy: float  # the torch student before quantization
    baseline_accuracy: float  # same architecture, same transfer set, hard labels only
    latency_ms: float  # median onnxruntime call at batch 1, one thread
    onnx_top1_agreement: float
    onnx_max_prob_diff: float
    teacher_architecture: str
    teacher_parameters: int
    teacher_bytes: int
    size_ratio: float  # teacher bytes / student bytes
    global_version: int
    statement_sha256: str
    lineage_sha256: str
    # the settings cross-validation on the transfer split chose, and their CV accuracy
    kd_alpha: float
    kd_noise: float
    baseline_noise: float
    cv_student_accuracy: float
    cv_baseline_accuracy: float


def students_dir(home: Path, version: int) -> Path:
    return coordinator_dir(home) / "students" / f"v{version}"


def _open_store(home: Path, db: str | None) -> CoordinatorStore:
    key_path = coordinator_key_path(home)
    if not key_path.is_file():
        raise DistillError(f"no coordinator under {home} (missing {key_path}); run "
                           "`fedgate coordinator init` and merge a version first")  # fmt: skip
    url = db or coordinator_url(home)
    path = sqlite_path(parse_url(url))
    if path is not None and not path.is_file():
        raise DistillError(f"no coordinator database at {path}")
    return CoordinatorStore.open(url, load_private_key(key_path))


def _teacher(store: CoordinatorStore, blobs: BlobStore, version: int):
    """The verified teacher model, its statement predicate and its weights' size in bytes."""
    import torch

    from fedgate.models.nets import MODELS, build_model

    info = store.version(version)
    if info is None:
        raise DistillError(f"global version {version} is not recorded (current: "
                           f"{store.current_version()})")  # fmt: skip
    predicate = check_version(info, blobs, store.audit.signer.public_key())
    if info.architecture not in MODELS:
        raise DistillError(f"global version {version} is architecture {info.architecture!r}, "
                           f"which has no model here (known: {', '.join(MODELS)})")  # fmt: skip
    raw = blobs.get(info.weights_sha256)
    teacher = build_model(info.architecture)
    state = {
        k: torch.from_numpy(v.copy()) for k, v in blobs.get_tensors(info.weights_sha256).items()
    }
    try:
        teacher.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise DistillError(f"global version {version}'s weights do not fit "
                           f"{info.architecture}: {first}") from None  # fmt: skip
    return info, predicate, teacher.eval(), len(raw)


def distill_version(
    home: Path | str,
    version: int,
    *,
    profiles: Sequence[str] = DEFAULT_PROFILES,
    progress: Progress | None = None,
    db: str | None = None,
    seed: int = 0,
    config: DistillConfig | None = None,
) -> list[StudentReport]:
    """Distil, quantize, export, check and measure a student per profile of global version
    ``version``; write the files and the manifest (it lists the profiles of this run); record
    the audit event. ``progress`` gets one line per step worth telling."""
    from fedgate.models import onnx_export as ox
    from fedgate.models.data import NUM_FEATURES, common_test_split, transfer_split
    from fedgate.models.distill import distill_pair
    from fedgate.models.students import build_student, parameter_count
    from fedgate.models.train import evaluate

    home, say = Path(home), progress or (lambda _msg: None)
    if not profiles:
        raise DistillError("no edge profile to distil")
    specs = [_spec(p) for p in dict.fromkeys(profiles)]
    config = config or DistillConfig(seed=seed)
    store = _open_store(home, db)
    blobs = BlobStore(coordinator_dir(home) / "blobs")
    info, predicate, teacher, teacher_bytes = _teacher(store, blobs, version)
    lineage_sha = sha256_hex(canonical_json(predicate.get("lineage", [])))
    transfer, test = transfer_split(seed), common_test_split(seed)
    reports: list[StudentReport] = []
    files: dict[str, bytes] = {}
    with one_torch_thread():
        teacher_acc = evaluate(teacher, test).accuracy
        teacher_params = parameter_count(teacher)
        say(f"teacher: global version {version} ({info.architecture}, {teacher_params} "
            f"parameters), test accuracy {teacher_acc:.3f}; transfer split {len(transfer)} "
            "examples")  # fmt: skip
        for spec in specs:
            pair = distill_pair(
                lambda spec=spec: build_student(spec.profile, config.seed), teacher, transfer,
                config, _steps(say, spec.profile, config),
            )  # fmt: skip
            student, baseline = pair.student, pair.baseline
            kd, base = pair.student_setting, pair.baseline_setting
            say(f"{spec.profile}: cross-validation chose alpha {kd.alpha}, noise {kd.noise} "
                f"({pair.cv_accuracy[kd]:.3f}); baseline noise {base.noise} "
                f"({pair.cv_accuracy[base]:.3f})")  # fmt: skip
            say(f"{spec.profile}: int8 quantization and ONNX export")
            data = ox.export_int8(student, transfer.x)
            agreement = ox.check_against(data, student, test)
            if not agreement.within():
                raise StudentMismatchError(
                    f"{spec.profile}: the int8 ONNX student agrees with the torch student on "
                    f"{agreement.top1_agreement:.3f} of the test split (largest probability "
                    f"difference {agreement.max_prob_diff:.3f}); tolerance {ox.TOLERANCE}"
                )
            latency = ox.latency_per_sample(data, test.x, LATENCY_RUNS)
            report = StudentReport(
                profile=spec.profile, architecture=spec.architecture,
                file=f"{spec.profile}.onnx", sha256=sha256_hex(data), bytes=len(data),
                parameters=parameter_count(student), input_name=ox.INPUT_NAME,
                input_shape=["batch", NUM_FEATURES], output_name=ox.OUTPUT_NAME,
                teacher_accuracy=teacher_acc, student_accuracy=ox.accuracy(data, test),
                student_float_accuracy=evaluate(student, test).accuracy,
                baseline_accuracy=evaluate(baseline, test).accuracy,
                latency_ms=latency * 1e3, onnx_top1_agreement=agreement.top1_agreement,
                onnx_max_prob_diff=agreement.max_prob_diff,
                teacher_architecture=info.architecture, teacher_parameters=teacher_params,
                teacher_bytes=teacher_bytes, size_ratio=teacher_bytes / len(data),
                global_version=version, statement_sha256=info.statement_sha256,
                lineage_sha256=lineage_sha, kd_alpha=pair.student_setting.alpha,
                kd_noise=pair.student_setting.noise, baseline_noise=pair.baseline_setting.noise,
                cv_student_accuracy=pair.cv_accuracy[pair.student_setting],
                cv_baseline_accuracy=pair.cv_accuracy[pair.baseline_setting],
            )  # fmt: skip
            say(f"{spec.profile}: student {report.student_accuracy:.3f}, baseline "
                f"{report.baseline_accuracy:.3f}, {report.bytes} bytes, "
                f"{report.latency_ms * 1e3:.1f} us per sample")  # fmt: skip
            reports.append(report)
            files[report.file] = data
    out = students_dir(home, version)
    for name, data in files.items():
        write_atomic(out / name, data)
    doc = manifest(reports, info.weights_sha256, config, seed, len(transfer), len(test))
    write_atomic(out / MANIFEST_NAME, json_text(doc))
    store.audit.append_many([("distill.students", audit_payload(reports, doc))], sign=True)
    say(f"wrote {len(reports)} student(s) and {MANIFEST_NAME} to {out}")
    return reports


def _spec(profile: str) -> StudentSpec:
    try:
        return student_spec(profile)
    except ValueError as exc:
        raise DistillError(str(exc)) from None


def _steps(say: Progress, profile: str, config: DistillConfig):
    names = {
        "cross-validation": ("cross-validation", config.cv_steps),
        "final": ("distil", config.steps),
    }

    def step(phase: str, i: int, loss: float) -> None:
        name, total = names[phase]
        say(f"{profile}: {name} step {i}/{total} loss {loss:.3f}")

    return step


def manifest(
    reports: Sequence[StudentReport],
    weights_sha256: str,
    config: DistillConfig,
    seed: int,
    transfer_examples: int,
    test_examples: int,
) -> dict[str, Any]:
    """The release manifest (``students.json``); see docs/distill.md for every field."""
    from fedgate.models.onnx_export import OPSET, TOLERANCE

    first = reports[0]
    return {
        "format": MANIFEST_FORMAT,
        "global_version": first.global_version,
        "statement_sha256": first.statement_sha256,
        "lineage_sha256": first.lineage_sha256,
        "teacher": {
            "architecture": first.teacher_architecture,
            "weights_sha256": weights_sha256,
            "parameters": first.teacher_parameters,
            "bytes": first.teacher_bytes,
            "test_accuracy": first.teacher_accuracy,
        },
        "data": {
            "dataset": "digits",
            "seed": seed,
            "transfer_examples": transfer_examples,
            "test_examples": test_examples,
        },
        "distillation": asdict(config),
        "onnx": {"opset": OPSET, "quantization": "int8 static QDQ", "tolerance": asdict(TOLERANCE)},
        "latency": {
            "runs": LATENCY_RUNS,
            "batch": 1,
            "threads": 1,
            "machine": platform.machine(),
        },
        "created_at": datetime.now(UTC).isoformat(),
        "students": {r.profile: asdict(r) for r in reports},
    }


def json_text(doc: dict[str, Any]) -> str:
    import json

    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def audit_payload(reports: Sequence[StudentReport], doc: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": doc["global_version"],
        "statement": doc["statement_sha256"],
        "lineage": doc["lineage_sha256"],
        "manifest": sha256_hex(json_text(doc).encode()),
        "students": [
            {
                "profile": r.profile,
                "file": r.file,
                "sha256": r.sha256,
                "bytes": r.bytes,
                "accuracy": round(r.student_accuracy, 4),
                "baseline": round(r.baseline_accuracy, 4),
            }
            for r in reports
        ],
    }


def read_manifest(home: Path, version: int) -> dict[str, Any]:
    """The manifest of version ``version``'s students (DistillError when there is none)."""
    import json

    path = students_dir(home, version) / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DistillError(
            f"no students for global version {version} ({path} is missing); "
            f"run `fedgate distill --global-version {version}`"
        ) from None


def render_table(reports: Sequence[StudentReport]):  # -> rich.table.Table
    """The students' table for a terminal or the demo summary."""
    from rich.table import Table

    version = str(reports[0].global_version) if reports else "?"
    table = Table(title=f"edge students of global version {version} (accuracy: common test split)")
    columns = ("profile", "params", "bytes", "smaller", "teacher", "student", "no KD", "us/sample")
    for col in columns:
        table.add_column(col, justify="left" if col == "profile" else "right")
    for r in reports:
        table.add_row(
            r.profile, f"{r.parameters:,}", f"{r.bytes:,}", f"{r.size_ratio:.1f}x",
            f"{r.teacher_accuracy:.3f}", f"{r.student_accuracy:.3f}",
            f"{r.baseline_accuracy:.3f}", f"{r.latency_ms * 1e3:.1f}",
        )  # fmt: skip
    return table
