"""Releases for the tests, made the way fedgate makes them: a coordinator home with real global
versions (signed statements recorded through the coordinator's store), and per
version a students directory in the layout distillation writes (``<home>/coordinator/students/
v<N>/<profile>.onnx`` + ``students.json``) holding small real ONNX models: softmax regressions
trained on the digits with a few hundred steps of gradient descent, built with ``onnx.helper``.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from threadpoolctl import threadpool_limits

from fedgate.crypto import fingerprint, sha256_hex
from fedgate.models.data import common_test_split, load_digits_dataset
from fedgate.server.audit.keys import coordinator_key_path, coordinator_pub_path, ensure_key
from fedgate.server.coordinator.store import CoordinatorStore, VersionInfo
from fedgate.server.coordinator.versions import GLOBAL_TYPE
from fedgate.server.db.blobs import BlobStore
from fedgate.server.db.engine import coordinator_url
from fedgate.statements import sign_statement, statement

ARCH = "mlp-64-32-10"

PROFILES = ("phone", "pi")


@functools.lru_cache(maxsize=16)
def train_softmax(seed: int, steps: int = 120, lr: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Weights (64, 10) and bias (10,) of a softmax regression trained on the digits."""
    data = load_digits_dataset()
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(data))[:1200]
    x, y = data.x[idx], data.y[idx]
    w, b = rng.normal(0, 0.01, (64, 10)).astype(np.float32), np.zeros(10, np.float32)
    onehot = np.eye(10, dtype=np.float32)[y]
    with threadpool_limits(1):  # tiny matrices: BLAS threads only contend on a busy machine
        _descend(x, onehot, w, b, steps, lr)
    return w, b


def _descend(x: np.ndarray, onehot: np.ndarray, w: np.ndarray, b: np.ndarray, steps: int,
             lr: float) -> None:  # fmt: skip
    for _ in range(steps):
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(x)
        w -= lr * x.T @ g
        b -= lr * g.sum(0)


def onnx_model(w: np.ndarray, b: np.ndarray, input_name: str = "input") -> bytes:
    """One self-contained ONNX file: Gemm + Softmax, input float32 [1, 64]."""
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", [input_name, "W", "B"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "student",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def mlp_model(hidden: int, seed: int = 0, steps: int = 20, lr: float = 0.5) -> bytes:
    """A 64-``hidden``-10 MLP (Gemm, Relu, Gemm, Softmax) trained for ``steps`` steps of
    gradient descent on the digits: a larger student, for benchmarks that sweep sizes."""
    data = load_digits_dataset()
    rng = np.random.default_rng(seed)
    x, onehot = data.x[:1200], np.eye(10, dtype=np.float32)[data.y[:1200]]
    w1 = (rng.standard_normal((64, hidden)) * np.sqrt(2 / 64)).astype(np.float32)
    w2 = (rng.standard_normal((hidden, 10)) * np.sqrt(1 / hidden)).astype(np.float32)
    b1, b2 = np.zeros(hidden, np.float32), np.zeros(10, np.float32)
    with threadpool_limits(1):
        for _ in range(steps):
            h = np.maximum(x @ w1 + b1, 0)
            z = h @ w2 + b2
            p = np.exp(z - z.max(1, keepdims=True))
            g = (p / p.sum(1, keepdims=True) - onehot) / len(x)
            gh = (g @ w2.T) * (h > 0)
            w2 -= lr * h.T @ g
            b2 -= lr * g.sum(0)
            w1 -= lr * x.T @ gh
            b1 -= lr * gh.sum(0)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["input", "W1", "B1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "W2", "B2"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "student-mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 10])],
        [
            numpy_helper.from_array(a, n)
            for a, n in ((w1, "W1"), (b1, "B1"), (w2, "W2"), (b2, "B2"))
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def accuracy(w: np.ndarray, b: np.ndarray) -> float:
    test = common_test_split()
    return float(np.mean(np.argmax(test.x @ w + b, axis=1) == test.y))


def write_students(
    home: Path, version: int, lineage: str | None, seed: int = 0, hidden: int = 0
) -> Path:
    """``<home>/coordinator/students/v<version>/``: a model per profile and students.json
    (softmax regressions; with ``hidden``, MLPs of that width)."""
    where = home / "coordinator" / "students" / f"v{version}"
    where.mkdir(parents=True, exist_ok=True)
    entries = {}
    for i, profile in enumerate(PROFILES):
        w, b = train_softmax(seed * 10 + version * 2 + i)
        data = mlp_model(hidden, seed * 10 + version * 2 + i) if hidden else onnx_model(w, b)
        (where / f"{profile}.onnx").write_bytes(data)
        entries[profile] = {  # the fields distillation's manifest gives each student
            "profile": profile, "file": f"{profile}.onnx", "sha256": sha256_hex(data),
            "bytes": len(data), "parameters": int(w.size + b.size), "input_name": "input",
            "input_shape": ["batch", 64],
            "student_accuracy": None if hidden else accuracy(w, b),
            "latency_ms": 0.05, "global_version": version, "statement_sha256": lineage,
        }  # fmt: skip
    doc = {"format": "fedgate.students/v1", "global_version": version,
           "statement_sha256": lineage, "students": entries}  # fmt: skip
    (where / "students.json").write_text(json.dumps(doc, indent=2))
    return where


@dataclass
class CoordinatorHome:
    """A coordinator home whose global versions are recorded through the coordinator's own
    writers: weights and a coordinator-signed statement in its blob store, the version, audit
    event and signed head in its database (``CoordinatorStore.commit_version``)."""

    home: Path
    hidden: int = 0  # students' hidden width (0: softmax regressions)

    def next_version(self) -> int:
        """Record the next global version and write its students; returns the version."""
        key = ensure_key(coordinator_key_path(self.home), coordinator_pub_path(self.home))
        store = CoordinatorStore.open(coordinator_url(self.home), key)
        blobs = BlobStore(self.home / "coordinator" / "blobs")
        base = store.current_version()
        version = base + 1
        rng = np.random.default_rng(version)
        weights = blobs.put_tensors({"fc.weight": rng.standard_normal((10, 64)).astype(np.float32)})
        predicate = {
            "version": version, "base_version": base, "architecture": ARCH, "rule": "mean",
            "lineage": [], "coordinator": fingerprint(key), "created_at": "2026-01-01T00:00:00",
        }  # fmt: skip
        envelope = sign_statement(
            key, statement(f"global-v{version}", weights, GLOBAL_TYPE, predicate)
        )
        info = VersionInfo(version, base, ARCH, weights, blobs.put(envelope), "mean", 0,
                           datetime.now(UTC))  # fmt: skip
        store.commit_version(info, [], [], {"version": version, "weights": weights})
        store.engine.dispose()
        write_students(self.home, version, info.statement_sha256, hidden=self.hidden)
        return version


def coordinator_home(root: Path, hidden: int = 0) -> CoordinatorHome:
    """A coordinator home at ``root/home`` with its key and database."""
    return CoordinatorHome(root / "home", hidden)
