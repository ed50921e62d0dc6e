"""What a signed edge release says about one student: the target name per (region, profile) and
the custom fields of its TUF target, written by the coordinator and checked by the edge node.

One target per (region, profile), ``<region>/<profile>.onnx``; its TUF ``custom`` holds
``{"fedgate": {...}}`` with the global version and its lineage digest (the SHA-256 of the
global version's signed statement), the model's input name and shape, a probe (inputs and the
classes the coordinator's onnxruntime gave them) and facts about the student. TUF metadata is
OLPC canonical JSON, which has no floats: probe inputs travel as base64 float32 bytes and
informational numbers as decimal strings.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedgate.errors import VerificationError
from fedgate.formats import is_hex64

NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}\Z")
"""A region or profile name as it appears in a target path."""
CHANNELS = ("live", "held", "pinned")
MAX_PROBE = 16
NUM_FEATURES = 64
NUM_CLASSES = 10


class MalformedRelease(VerificationError, ValueError):
    """A release target's signed custom fields are not what fedgate writes."""


def check_name(kind: str, name: str) -> str:
    """``name`` if it is a valid region or profile name (``kind`` says which), else ValueError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"{kind} name must be lowercase letters, digits, '-' or '_' (<= 32, starting with a "
            f"letter), got {name!r}"
        )
    return name


def target_path(region: str, profile: str) -> str:
    """The TUF target path of the student for ``profile`` devices in ``region``."""
    return f"{check_name('region', region)}/{check_name('profile', profile)}.onnx"


def plain(value: Any) -> Any:
    """``value`` with every float turned into its shortest decimal string (canonical JSON has
    no floats); mappings, lists, strings, ints, bools and None kept."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return str(value)


@dataclass(frozen=True)
class Probe:
    """Inputs (n, 64) float32 and the classes the published model gives them."""

    inputs: np.ndarray
    classes: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        raw = np.ascontiguousarray(self.inputs, dtype="<f4").tobytes()
        return {
            "inputs_f32le": base64.b64encode(raw).decode("ascii"),
            "rows": int(self.inputs.shape[0]),
            "classes": list(self.classes),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Probe:
        if not isinstance(data, Mapping):
            raise MalformedRelease("release probe is not an object")
        rows, classes = data.get("rows"), data.get("classes")
        if not isinstance(rows, int) or not 1 <= rows <= MAX_PROBE:
            raise MalformedRelease(f"release probe rows must be 1..{MAX_PROBE}, got {rows!r}")
        try:
            raw = base64.b64decode(str(data.get("inputs_f32le", "")), validate=True)
        except (binascii.Error, ValueError):
            raise MalformedRelease("release probe inputs are not base64") from None
        if len(raw) != rows * NUM_FEATURES * 4:
            raise MalformedRelease("release probe inputs do not hold rows x 64 float32")
        if (
            not isinstance(classes, list)
            or len(classes) != rows
            or not all(isinstance(c, int) and 0 <= c < NUM_CLASSES for c in classes)
        ):
            raise MalformedRelease("release probe classes must be one class 0..9 per row")
        inputs = np.frombuffer(raw, dtype="<f4").reshape(rows, NUM_FEATURES).astype(np.float32)
        return cls(inputs, tuple(classes))


@dataclass(frozen=True)
class ReleaseTarget:
    """The signed custom fields of one release target."""

    region: str
    profile: str
    global_version: int
    lineage_digest: str
    input_name: str
    input_shape: tuple[int, ...]
    probe: Probe
    channel: str = "live"
    published_at: str = ""
    student: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return target_path(self.region, self.profile)

    def to_custom(self) -> dict[str, Any]:
        return {
            "fedgate": {
                "region": self.region,
                "profile": self.profile,
                "global_version": self.global_version,
                "lineage_digest": self.lineage_digest,
                "input": {"name": self.input_name, "shape": list(self.input_shape)},
                "probe": self.probe.to_dict(),
                "channel": self.channel,
                "published_at": self.published_at,
                "student": plain(self.student),
            }
        }

    @classmethod
    def from_custom(cls, custom: Any) -> ReleaseTarget:
        """Parse a target's ``custom``; ``MalformedRelease`` names the first bad field."""
        data = custom.get("fedgate") if isinstance(custom, Mapping) else None
        if not isinstance(data, Mapping):
            raise MalformedRelease("release target has no fedgate custom fields")
        try:
            region = check_name("region", data.get("region"))
            profile = check_name("profile", data.get("profile"))
        except ValueError as exc:
            raise MalformedRelease(f"release target: {exc}") from None
        version = data.get("global_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise MalformedRelease(f"release global_version must be >= 1, got {version!r}")
        lineage = data.get("lineage_digest")
        if not is_hex64(lineage):
            raise MalformedRelease("release lineage_digest is not a SHA-256 hex digest")
        inp = data.get("input")
        shape = inp.get("shape") if isinstance(inp, Mapping) else None
        name = inp.get("name") if isinstance(inp, Mapping) else None
        if (
            not isinstance(name, str)
            or not name
            or not isinstance(shape, list)
            or not all(isinstance(d, int) and d > 0 for d in shape)
        ):
            raise MalformedRelease("release input must name a tensor and a positive shape")
        channel = data.get("channel", "live")
        if channel not in CHANNELS:
            raise MalformedRelease(f"release channel must be one of {CHANNELS}, got {channel!r}")
        student = data.get("student", {})
        return cls(
            region, profile, version, lineage, name, tuple(shape),
            Probe.from_dict(data.get("probe")), channel, str(data.get("published_at", "")),
            dict(student) if isinstance(student, Mapping) else {},
        )  # fmt: skip


@dataclass(frozen=True)
class PublishedTarget:
    """One student on a region's channel, as a publish or channel change recorded it (the
    coordinator's publish result and its audit event; the auditor's release pages)."""

    region: str
    profile: str
    global_version: int
    sha256: str
    length: int
    channel: str

    @property
    def path(self) -> str:
        return f"{self.region}/{self.profile}.onnx"
