"""ONNX export, post-training int8 quantization and the onnxruntime checks of a student.

``export_int8`` turns a trained torch model into one self-contained ``.onnx`` file:
1. torch's exporter (``torch.onnx.export(..., dynamo=True)``, opset 20, ``external_data=False``)
   with a dynamic batch dimension, input ``input`` ``(batch, 64)`` float32, output ``logits``;
2. onnxruntime's static quantization: int8 weights (per tensor, symmetric), uint8 activations
   calibrated (min/max) on the transfer split, int32 biases, in the standard QDQ form
   (``QuantizeLinear``/``DequantizeLinear`` around ``Gemm``, opset operators only, so any ONNX
   runtime loads it); the logits stay float;
3. compaction: exporter metadata, doc strings, node names and shape annotations are dropped and
   internal tensors renamed to short ids (the file of a 600-parameter model is mostly names
   otherwise); the checker runs on the result.

The quantized model does not equal the float student bit for bit: ``check_against`` measures how
far apart they are (top-1 agreement and the largest softmax difference on a data set);
``TOLERANCE`` states what a release accepts, and ``tests/test_students.py`` checks it.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import NUM_FEATURES, Dataset

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 20


@dataclass(frozen=True)
class Tolerance:
    """How close the int8 ONNX student must stay to the float torch student."""

    min_top1_agreement: float = 0.97  # same predicted class on this share of examples
    max_prob_diff: float = 0.25  # largest |softmax difference| over every example and class
    float_atol: float = 1e-4  # the float export (before quantization) vs torch, on logits


TOLERANCE = Tolerance()


@dataclass(frozen=True)
class Agreement:
    top1_agreement: float
    max_prob_diff: float

    def within(self, tol: Tolerance = TOLERANCE) -> bool:
        return (
            self.top1_agreement >= tol.min_top1_agreement
            and self.max_prob_diff <= tol.max_prob_diff
        )


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and quantizer's advice (torchvision ops, pre-processing)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    exporter = logging.getLogger("torch.onnx")
    ex_level = exporter.level
    exporter.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
        exporter.setLevel(ex_level)


def export_float(model: nn.Module):  # -> onnx.ModelProto
    """The float ONNX model of ``model`` by torch's exporter (dynamic batch)."""
    model.eval()
    with _quiet():
        program = torch.onnx.export(
            model,
            (torch.zeros(1, NUM_FEATURES),),
            dynamo=True,
            external_data=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            opset_version=OPSET,
            optimize=True,
            verbose=False,
        )
    return program.model_proto


_DEFAULTS = {"Gemm": {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0}}


def compact(proto):  # (onnx.ModelProto) -> onnx.ModelProto
    """Drop metadata, doc strings, node names, value annotations and attributes equal to their
    defaults; rename every tensor but the graph's input and output to a short id. Checked by
    ``onnx.checker``."""
    import onnx

    graph = proto.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    del proto.metadata_props[:]
    proto.doc_string = ""
    proto.producer_name, proto.producer_version = "fedgate", ""
    graph.name, graph.doc_string = "student", ""
    del graph.metadata_props[:]
    del graph.value_info[:]
    for value in list(graph.input) + list(graph.output):
        del value.metadata_props[:]
        value.doc_string = ""
    for init in graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ValueError(f"initializer {init.name} is stored outside the file")
        del init.metadata_props[:]
        init.doc_string = ""
        init.name = short(init.name)
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string, node.name = "", ""
        defaults = _DEFAULTS.get(node.op_type, {})
        kept = [
            a for a in node.attribute if defaults.get(a.name) != onnx.helper.get_attribute_value(a)
        ]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    onnx.checker.check_model(proto, full_check=True)
    return proto


class _Calibration:
    """onnxruntime's ``CalibrationDataReader``: one example at a time."""

    def __init__(self, x: np.ndarray) -> None:
        self._rows = iter(x)

    def get_next(self) -> dict[str, np.ndarray] | None:
        row = next(self._rows, None)
        return None if row is None else {INPUT_NAME: row[None, :].astype(np.float32)}


def quantize_int8(proto, calibration: np.ndarray) -> bytes:  # (onnx.ModelProto, ...) -> bytes
    """Static int8 quantization (QDQ) calibrated on ``calibration``; the compacted file."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(_Calibration, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="fedgate-quant-") as tmp:
        src, dst = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        onnx.save_model(proto, src)
        with _quiet():
            quantize_static(
                src, dst, Reader(calibration),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, per_channel=False, use_external_data_format=False,
                extra_options={"OpTypesToExcludeOutputQuantization": ["Gemm"]},
            )  # fmt: skip
        quantized = onnx.load_model(dst, load_external_data=False)
    return compact(quantized).SerializeToString()


def export_int8(model: nn.Module, calibration: np.ndarray) -> bytes:
    """``model`` as one self-contained int8 ``.onnx`` file (see the module docstring)."""
    return quantize_int8(export_float(model), calibration)


def session(onnx_bytes: bytes):  # -> onnxruntime.InferenceSession
    """A single-threaded CPU onnxruntime session on the model's bytes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def run(onnx_bytes_or_session, x: np.ndarray) -> np.ndarray:
    sess = (
        session(onnx_bytes_or_session)
        if isinstance(onnx_bytes_or_session, bytes)
        else onnx_bytes_or_session
    )
    return sess.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@torch.no_grad()
def check_against(onnx_bytes: bytes, model: nn.Module, data: Dataset) -> Agreement:
    """How the ONNX model's outputs on ``data`` compare with the torch ``model``'s."""
    model.eval()
    ours = run(onnx_bytes, data.x)
    ref = model(torch.from_numpy(data.x)).numpy()
    return Agreement(
        top1_agreement=float((ours.argmax(1) == ref.argmax(1)).mean()),
        max_prob_diff=float(np.abs(_softmax(ours) - _softmax(ref)).max()),
    )


def accuracy(onnx_bytes: bytes, data: Dataset) -> float:
    return float((run(onnx_bytes, data.x).argmax(1) == data.y).mean())


def latency_per_sample(onnx_bytes: bytes, x: np.ndarray, runs: int = 1000) -> float:
    """Median seconds of one onnxruntime call at batch 1 over ``runs`` calls (after a warm-up),
    cycling through the rows of ``x``."""
    sess = session(onnx_bytes)
    rows = [np.ascontiguousarray(r[None, :], dtype=np.float32) for r in x[: min(len(x), runs)]]
    feed = {INPUT_NAME: rows[0]}
    for _ in range(20):
        sess.run([OUTPUT_NAME], feed)
    times = np.empty(runs)
    for i in range(runs):
        feed[INPUT_NAME] = rows[i % len(rows)]
        start = time.perf_counter()
        sess.run([OUTPUT_NAME], feed)
        times[i] = time.perf_counter() - start
    return float(np.median(times))
