"""The students a release ships: ``<home>/coordinator/students/v<N>/`` as distillation writes it.

``students.json`` (format ``fedgate.students/v1``, docs/distill.md) lists, per profile, the ONNX
file (default ``<profile>.onnx``), its SHA-256, bytes, parameter count, input name and shape,
accuracy and latency figures, and the global version with its statement digest
(``statement_sha256``). Profiles may be given as a mapping keyed by profile (under ``students``
or ``profiles``) or as a list of entries with a ``profile`` field.
Every student is loaded in onnxruntime here: its input must be float32 with 64 features, and a
probe (the first rows of the common test split) records the classes it gives, which each edge
node checks after its own load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedgate.crypto import sha256_hex
from fedgate.errors import UsageError, VerificationError
from fedgate.formats import is_hex64
from fedgate.release_targets import NUM_FEATURES, Probe, check_name

PROBE_ROWS = 4
_FILE_KEYS = ("file", "filename", "onnx", "path")
# the global version's statement digest (distillation writes ``statement_sha256``; its
# ``lineage_sha256``, a digest of the lineage list alone, is carried as a fact)
_LINEAGE_KEYS = ("statement_sha256", "lineage_digest", "statement_digest")
MANIFEST_FORMAT = "fedgate.students/v1"
_INTERNAL = {*_FILE_KEYS, "sha256", "profile", "input", "input_name", "input_shape"}
MAX_FACT_CHARS = 2048


class StudentsError(UsageError):
    """The students directory or its students.json cannot be used."""


class StudentDigestError(VerificationError):
    """A student file does not hash to the digest students.json states."""


@dataclass(frozen=True)
class Student:
    profile: str
    path: Path
    data: bytes
    sha256: str
    input_name: str
    input_shape: tuple[int, ...]
    probe: Probe
    facts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudentSet:
    version: int
    lineage_digest: str | None
    students: dict[str, Student]
    manifest: bytes = b""  # students.json as read


def students_dir(home: Path, version: int) -> Path:
    return Path(home) / "coordinator" / "students" / f"v{version}"


def _entries(doc: Any, where: Path) -> dict[str, Mapping[str, Any]]:
    if not isinstance(doc, Mapping):
        raise StudentsError(f"{where}: not a JSON object")
    body = doc.get("profiles", doc.get("students"))
    if isinstance(body, list):
        out = {}
        for entry in body:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("profile"), str):
                raise StudentsError(f"{where}: every student entry needs a 'profile' name")
            out[entry["profile"]] = entry
        body = out
    if not isinstance(body, Mapping) or not body:
        raise StudentsError(f"{where}: no students (a 'profiles' or 'students' object or list)")
    for name, entry in body.items():
        if not isinstance(entry, Mapping):
            raise StudentsError(f"{where}: student {name!r} is not an object")
        try:
            check_name("profile", name)
        except ValueError as exc:
            raise StudentsError(f"{where}: {exc}") from None
    return dict(body)


def _first(entry: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    return next((entry[k] for k in keys if entry.get(k) is not None), None)


def _declared_input(entry: Mapping[str, Any]) -> tuple[str | None, list[int] | None]:
    inp = entry.get("input")
    if isinstance(inp, Mapping):
        return inp.get("name"), inp.get("shape")
    return entry.get("input_name"), entry.get("input_shape")


def _batch_one(shape: Any) -> tuple[int, ...]:
    """A model input shape with every symbolic dimension (a dynamic batch) set to 1."""
    dims = list(shape) if isinstance(shape, list | tuple) else []
    return tuple(d if isinstance(d, int) and d > 0 else 1 for d in dims)


def probe_inputs(rows: int = PROBE_ROWS) -> np.ndarray:
    """The probe rows: the first ``rows`` of the common test split (public digits)."""
    from fedgate.models.data import common_test_split  # sklearn: only when publishing

    return common_test_split().x[:rows].astype(np.float32)


def load_student(profile: str, path: Path, entry: Mapping[str, Any]) -> Student:
    """Read, hash, load in onnxruntime and probe one student; checks what ``entry`` declares."""
    import onnxruntime as ort  # heavy: only when publishing

    data = path.read_bytes()
    digest = sha256_hex(data)
    declared = entry.get("sha256")
    if declared is not None and declared != digest:
        raise StudentDigestError(
            f"{path}: SHA-256 {digest[:16]} differs from students.json's {str(declared)[:16]}"
        )
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise StudentsError(
            f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0]})"
        ) from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        raise StudentsError(f"{path}: the student must take one float32 input")
    shape = _batch_one(inputs[0].shape)
    if int(np.prod(shape)) != NUM_FEATURES:
        raise StudentsError(f"{path}: input shape {list(inputs[0].shape)} is not 64 features")
    name, dshape = _declared_input(entry)
    if (name is not None and name != inputs[0].name) or (
        dshape is not None and _batch_one(dshape) != shape
    ):
        raise StudentsError(
            f"{path}: students.json declares input {name} {dshape}, the model has "
            f"{inputs[0].name} {list(shape)}"
        )
    x = probe_inputs()
    classes = tuple(
        int(np.argmax(session.run(None, {inputs[0].name: row.reshape(shape)})[0])) for row in x
    )
    facts = {k: v for k, v in entry.items() if k not in _INTERNAL}
    facts.setdefault("bytes", len(data))
    if len(json.dumps(facts, default=str)) > MAX_FACT_CHARS:
        facts = {k: facts[k] for k in ("bytes", "parameters", "params") if k in facts}
    return Student(profile, path, data, digest, inputs[0].name, shape, Probe(x, classes), facts)


def read_students(home: Path, version: int, root: Path | None = None) -> StudentSet:
    """The students of global version ``version`` (``root``: another students directory)."""
    where = Path(root) if root is not None else students_dir(home, version)
    manifest = where / "students.json"
    if not manifest.is_file():
        raise StudentsError(f"no students.json in {where} (distill global version {version} first)")
    raw = manifest.read_bytes()
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StudentsError(f"{manifest}: not JSON ({exc})") from None
    if isinstance(doc, Mapping) and doc.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
        raise StudentsError(f"{manifest}: format {doc.get('format')!r}, not {MANIFEST_FORMAT}")
    entries = _entries(doc, manifest)
    lineage = _first(doc, _LINEAGE_KEYS)
    students = {}
    for profile, entry in entries.items():
        stated = entry.get("global_version", doc.get("global_version"))
        if stated is not None and stated != version:
            raise StudentsError(
                f"{manifest}: {profile} is of global version {stated}, not {version}"
            )
        lineage = lineage or _first(entry, _LINEAGE_KEYS)
        name = _first(entry, _FILE_KEYS) or f"{profile}.onnx"
        path = where / Path(str(name)).name
        if not path.is_file():
            raise StudentsError(f"{manifest}: {profile}'s model {path.name} is missing")
        students[profile] = load_student(profile, path, entry)
    if lineage is not None and not is_hex64(lineage):
        raise StudentsError(f"{manifest}: the lineage digest is not a SHA-256 hex digest")
    return StudentSet(version, lineage, students, raw)
