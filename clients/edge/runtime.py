"""Running a student with onnxruntime: load, answer the release's probe, predict; and reading
the inputs ``fedgate edge predict`` accepts (``.npz`` arrays, 8x8 PNG/PGM images).

Inputs are digits features: 64 float32 values in [0, 1] per sample, as ``load_digits().data /
16`` (ink bright, background 0). An image is read as 8-bit grayscale and scaled by 1/255.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedgate.errors import UsageError, VerificationError
from fedgate.release_targets import NUM_CLASSES, NUM_FEATURES, Probe

IMAGE_SUFFIXES = (".png", ".pgm", ".pnm", ".bmp")


class ModelLoadError(VerificationError):
    """A verified download that onnxruntime cannot load, or that answers its probe wrongly."""


class InputError(UsageError):
    """An input file ``predict`` cannot use."""


@dataclass(frozen=True)
class Prediction:
    cls: int
    probability: float
    probabilities: tuple[float, ...]


def _distribution(out: np.ndarray) -> np.ndarray:
    """``out`` if it already is a probability distribution, else its softmax."""
    out = out.astype(np.float64).reshape(-1)
    if out.size != NUM_CLASSES or not np.all(np.isfinite(out)):
        raise ModelLoadError(
            f"the model answered {out.size} values, not {NUM_CLASSES} finite scores"
        )
    if np.all(out >= 0) and abs(out.sum() - 1.0) < 1e-3:
        return out
    e = np.exp(out - out.max())
    return e / e.sum()


class Student:
    """A loaded student: one onnxruntime session on a model file."""

    def __init__(self, model: Path | bytes, input_name: str, input_shape: tuple[int, ...]) -> None:
        """Load ``model``: a file, or the bytes of one (a verified download, loaded before it is
        written to disk)."""
        import onnxruntime as ort  # heavy: only when a model is loaded

        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1  # batch 1, tiny model
        # basic (semantics-preserving) graph rewrites only: the extended fusions cost more to
        # plan at load than they save on a student; no memory arena or pattern planning for
        # allocations of a few kilobytes
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.enable_cpu_mem_arena = options.enable_mem_pattern = False
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            first = (str(exc).strip().splitlines() or ["?"])[0]
            what = "the downloaded model" if isinstance(model, bytes) else Path(model).name
            raise ModelLoadError(f"onnxruntime cannot load {what}: {first}") from None
        names = [i.name for i in self.session.get_inputs()]
        if names != [input_name]:
            raise ModelLoadError(f"the model's inputs are {names}, the release names {input_name}")
        self.input_name, self.input_shape = input_name, input_shape

    def predict_one(self, x: np.ndarray) -> Prediction:
        row = np.asarray(x, dtype=np.float32).reshape(self.input_shape)
        try:
            out = self.session.run(None, {self.input_name: row})[0]
        except Exception as exc:
            first = (str(exc).strip().splitlines() or ["?"])[0]
            raise ModelLoadError(f"onnxruntime failed to run the model: {first}") from None
        p = _distribution(np.asarray(out))
        k = int(np.argmax(p))
        return Prediction(k, float(p[k]), tuple(float(v) for v in p))

    def predict(self, x: np.ndarray) -> list[Prediction]:
        rows = np.asarray(x, dtype=np.float32).reshape(-1, NUM_FEATURES)
        return [self.predict_one(r) for r in rows]

    def answer_probe(self, probe: Probe) -> None:
        """Raise ``ModelLoadError`` unless the model gives the probe's classes."""
        got = tuple(p.cls for p in self.predict(probe.inputs))
        if got != probe.classes:
            raise ModelLoadError(
                f"the model answered the release probe with classes {list(got)}, the "
                f"coordinator's run gave {list(probe.classes)}"
            )


def _check_range(x: np.ndarray, where: str) -> np.ndarray:
    if x.size == 0 or x.size % NUM_FEATURES:
        raise InputError(f"{where}: {x.size} values is not a whole number of 64-feature samples")
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
        raise InputError(
            f"{where}: values must lie in [0, 1] (digits features / 16), found "
            f"[{np.nanmin(x):g}, {np.nanmax(x):g}]"
        )
    return x.reshape(-1, NUM_FEATURES).astype(np.float32)


def read_input(path: Path) -> np.ndarray:
    """Samples (n, 64) float32 in [0, 1] from ``path``: an ``.npz`` (array ``x``, else its only
    array; shapes (64,), (n, 64), (8, 8) or (n, 8, 8)) or an 8x8 grayscale image."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                names = list(npz.files)
                key = "x" if "x" in names else (names[0] if len(names) == 1 else None)
                if key is None:
                    raise InputError(f"{path}: holds {names}; name the samples array 'x'")
                x = np.asarray(npz[key], dtype=np.float64)
        except (ValueError, OSError) as exc:
            raise InputError(f"{path}: not a readable .npz ({exc})") from None
        return _check_range(x, str(path))
    if suffix in IMAGE_SUFFIXES:
        from PIL import Image, UnidentifiedImageError  # only for image inputs

        try:
            with Image.open(path) as img:
                if img.size != (8, 8):
                    raise InputError(f"{path}: the image is {img.size[0]}x{img.size[1]}, not 8x8")
                pixels = np.asarray(img.convert("L"), dtype=np.float64) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{path}: not a readable image ({exc})") from None
        return _check_range(pixels, str(path))
    raise InputError(f"{path}: use an .npz file or an 8x8 image ({', '.join(IMAGE_SUFFIXES)})")
