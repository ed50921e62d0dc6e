"""The signed update envelope: built and signed by a device, verified by its region server.

An envelope names what an update is (protocol version, region, run, round, the round's server
nonce, digest of the model the client started from, device id, example count, metrics, digest
of the arrays) and is signed by the device key over its RFC 8785 canonical JSON. It travels
beside the update as a ``ConfigRecord`` holding ``envelope`` (the canonical JSON text) and
``signature`` (lowercase hex of the 64-byte Ed25519 signature).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from logging import WARNING
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.common.constant import SType
from flwr.supercore import log
from numpy.lib import format as npy_format

from fedgate.canonical_arrays import CanonicalArraysError, arrays_digest
from fedgate.crypto import (
    SignatureError,
    canonical_json,
    fingerprint,
    load_public_key,
    sha256_hex,
    sign,
    verify,
)
from fedgate.errors import VerificationError
from fedgate.formats import (
    HEX64_RE,
    MAX_ENVELOPE_CHARS,
    MAX_METRICS,
    MAX_ROUND,
    MAX_SAFE,
    MAX_TEXT,
    NONCE_RE,
    SIGNATURE_RE,
    is_hex64,
)
from fedgate.strategies.fates import ClientFate
from fedgate.strategies.round_devices import RoundDevices

PROTOCOL_VERSION = 1
ENVELOPE_TYPE = "fedgate.update"
RECORD_KEY = "envelope"  # key of the ConfigRecord in the reply's RecordDict
ENVELOPE_FIELD = "envelope"
SIGNATURE_FIELD = "signature"
CONFIG_RUN_ID = "run-id"  # keys the server adds to the train ConfigRecord
CONFIG_NONCE = "nonce"
NPY_MAX_HEADER = 10_000  # numpy.load's default header limit

_FIELDS = frozenset(
    {
        "type",
        "version",
        "region",
        "run_id",
        "round",
        "nonce",
        "base_digest",
        "device_id",
        "num_examples",
        "metrics",
        "arrays_digest",
    }
)


class Reason:
    """Rejection reason codes (``ClientFate.reason``)."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed-envelope"
    UNSUPPORTED_VERSION = "unsupported-version"
    UNKNOWN_DEVICE = "unknown-device"
    BAD_SIGNATURE = "bad-signature"
    WRONG_REGION = "wrong-region"
    REVOKED = "revoked-device"
    WRONG_RUN = "wrong-run"
    STALE_ROUND = "stale-round"
    WRONG_ROUND = "wrong-round"
    WRONG_NONCE = "wrong-nonce"
    WRONG_BASE = "wrong-base-model"
    DIGEST_MISMATCH = "digest-mismatch"
    OVERSIZE = "oversize-payload"
    METRICS_MISMATCH = "metrics-mismatch"
    REPLAY = "replay"
    DUPLICATE_DEVICE = "duplicate-device"
    VERIFICATION_ERROR = "verification-error"


class RejectedUpdate(VerificationError):
    """An update failed verification; ``code`` is one of ``Reason``."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


class RegisteredDevice(Protocol):
    """What verification needs to know about an enrolled device."""

    @property
    def region(self) -> str: ...
    @property
    def public_key(self) -> bytes: ...  # raw 32-byte Ed25519 key
    @property
    def revoked(self) -> bool: ...


class DeviceLookup(Protocol):
    def get(self, device_id: str) -> RegisteredDevice | None: ...


class SeenUpdates(Protocol):
    """Replay memory: store a digest, return the one already stored for that key (or None)."""

    def remember(
        self, device_id: str, run_id: str, server_round: int, digest: str
    ) -> str | None: ...


@dataclass(frozen=True)
class Envelope:
    """The signed statement a device makes about one update."""

    region: str
    run_id: str
    round: int
    nonce: str
    base_digest: str
    device_id: str
    num_examples: int
    arrays_digest: str
    metrics: dict[str, int | float] = field(default_factory=dict)
    version: int = PROTOCOL_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": ENVELOPE_TYPE,
            "version": self.version,
            "region": self.region,
            "run_id": self.run_id,
            "round": self.round,
            "nonce": self.nonce,
            "base_digest": self.base_digest,
            "device_id": self.device_id,
            "num_examples": self.num_examples,
            "metrics": dict(self.metrics),
            "arrays_digest": self.arrays_digest,
        }

    def canonical(self) -> bytes:
        """The exact bytes the device signs."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, obj: Any) -> Envelope:
        """Validate ``obj`` strictly; raise ``ValueError`` naming the first problem."""
        if not isinstance(obj, dict):
            raise ValueError("envelope is not a JSON object")
        if obj.get("type") != ENVELOPE_TYPE:
            raise ValueError(f"type must be {ENVELOPE_TYPE!r}")
        if "version" not in obj:
            raise ValueError("fields missing ['version']")
        if type(obj["version"]) is not int:  # true, "1", null...: no version at all
            raise ValueError("version must be an integer")
        if obj["version"] != PROTOCOL_VERSION:
            raise UnsupportedVersion(f"version {obj['version']} (supported: 1)")
        if set(obj) != _FIELDS:
            missing, extra = sorted(_FIELDS - set(obj)), sorted(set(obj) - _FIELDS)
            raise ValueError(f"fields missing {missing}, unexpected {extra}")
        for name in ("region", "run_id"):
            _text(name, obj[name])
        for name in ("base_digest", "device_id", "arrays_digest"):
            _match(name, obj[name], HEX64_RE, "64 lowercase hex digits")
        _match("nonce", obj["nonce"], NONCE_RE, "32-128 lowercase hex digits")
        _integer("round", obj["round"], 0, MAX_ROUND)
        _integer("num_examples", obj["num_examples"], 1, MAX_SAFE)
        metrics = _metrics(obj["metrics"])
        if metrics.get("num-examples", obj["num_examples"]) != obj["num_examples"]:
            raise ValueError("metrics num-examples differs from num_examples")
        return cls(
            region=obj["region"],
            run_id=obj["run_id"],
            round=obj["round"],
            nonce=obj["nonce"],
            base_digest=obj["base_digest"],
            device_id=obj["device_id"],
            num_examples=obj["num_examples"],
            arrays_digest=obj["arrays_digest"],
            metrics=metrics,
        )


class UnsupportedVersion(VerificationError, ValueError):
    """The envelope names a protocol version this server does not speak."""


def _text(name: str, value: Any) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_TEXT:
        raise ValueError(f"{name} must be a string of 1-{MAX_TEXT} characters")


def _match(name: str, value: Any, pattern: re.Pattern[str], what: str) -> None:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValueError(f"{name} must be {what}")


def _integer(name: str, value: Any, lo: int, hi: int) -> None:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}]")


def _metrics(value: Any) -> dict[str, int | float]:
    if not isinstance(value, dict) or len(value) > MAX_METRICS:
        raise ValueError(f"metrics must be an object of at most {MAX_METRICS} entries")
    for key, v in value.items():
        _text("metric name", key)
        if type(v) not in (int, float) or not abs(v) <= MAX_SAFE:  # also rejects NaN
            raise ValueError(f"metric {key!r} must be a number of magnitude <= 2^53 - 1")
    return dict(value)


class OversizePayload(CanonicalArraysError):
    """An ``Array`` payload holds bytes beyond the one array it declares."""


_DIM = r"(?:0|[1-9][0-9]*)"
# The header numpy.save writes for a plain array, e.g.
# "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }" + spaces + "\n". A header
# this pattern matches means for numpy exactly what it means here; any other is parsed by
# numpy's own (slower) reader.
_NPY_HEADER = re.compile(
    r"\{'descr': '([<>|=][biuf][1248])', 'fortran_order': (False|True), "
    rf"'shape': \((|{_DIM},|{_DIM}(?:, {_DIM})+)\), \}} *\n"
)
_NPY_LENGTH = {(1, 0): 2, (2, 0): 4}  # bytes of the header length field per version


@functools.lru_cache(maxsize=256)
def _plain_header(text: str) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """``(shape, fortran_order, dtype)`` of a header ``_NPY_HEADER`` matches, else None
    (a model's updates repeat the same few headers: each is parsed once)."""
    match = _NPY_HEADER.fullmatch(text)
    if not match:
        return None
    descr, fortran, dims = match.groups()
    try:
        dtype = np.dtype(descr)
    except TypeError:  # e.g. '<b8'
        raise CanonicalArraysError(f"array payload has dtype {descr!r}") from None
    return tuple(int(n) for n in dims.split(",") if n.strip()), fortran == "True", dtype


def _npy_layout(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """``(shape, fortran_order, dtype, data offset)`` of a ``.npy`` v1.0/v2.0 payload."""
    view = memoryview(data)
    prefix = bytes(view[:12])
    size = _NPY_LENGTH.get((prefix[6], prefix[7]) if len(prefix) >= 8 else (0, 0))
    if prefix[:6] != npy_format.MAGIC_PREFIX or size is None:
        raise CanonicalArraysError("array payload is not a .npy v1.0/v2.0 array")
    length = int.from_bytes(prefix[8 : 8 + size], "little")
    start = 8 + size + length
    if length <= NPY_MAX_HEADER and len(view) >= start:
        plain = _plain_header(bytes(view[8 + size : start]).decode("latin1"))
        if plain is not None:
            return *plain, start
    fp = io.BytesIO(bytes(view[: NPY_MAX_HEADER + 16]))
    try:
        version = npy_format.read_magic(fp)
        reader = npy_format.read_array_header_1_0
        if version == (2, 0):
            reader = npy_format.read_array_header_2_0
        shape, fortran, dtype = reader(fp, NPY_MAX_HEADER)
    except Exception as exc:  # numpy's header parser also raises SyntaxError, TokenError...
        raise CanonicalArraysError(f"array payload is not a .npy array: {exc!r}"[:200]) from None
    return shape, fortran, dtype, fp.tell()


def array_view(array: Array) -> np.ndarray:
    """Read-only ndarray over a Flower ``Array``'s ``.npy`` payload, without copying the data.

    Reads exactly what ``Array.numpy()`` (``np.load``) reads, but also insists the payload is
    one ``.npy`` v1/v2 array, with no bytes after it, whose dtype and shape are the ``dtype``
    and ``shape`` the ``Array`` declares (Flower checks neither, and screens read the
    declared ones). Raises ``CanonicalArraysError`` (``OversizePayload`` for trailing bytes).
    """
    if array.stype != SType.NUMPY:
        raise CanonicalArraysError(f"unsupported array serialization {array.stype!r}")
    data = array.data
    shape, fortran, dtype, start = _npy_layout(data)
    if dtype.hasobject or dtype.itemsize == 0 or any(n < 0 for n in shape):
        raise CanonicalArraysError(f"array payload declares {dtype} {shape}")
    count = math.prod(shape)
    end = start + count * dtype.itemsize
    if len(data) < end:
        raise CanonicalArraysError(f"array payload truncated ({len(data)} < {end} bytes)")
    if len(data) > end:
        raise OversizePayload(f"{len(data) - end} bytes after the declared array")
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=start)
    arr = flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)
    declared = (array.dtype, tuple(array.shape))
    if (str(arr.dtype), arr.shape) != declared:
        raise CanonicalArraysError(
            f"array declares {declared[0]}{declared[1]} but holds {arr.dtype}{arr.shape}"
        )
    return arr


def arrayrecord_digest(record: ArrayRecord | Mapping[str, Any]) -> str:
    """Canonical digest of an ``ArrayRecord`` (or a name -> ndarray mapping), in its order.

    ``Array`` payloads are hashed in place (``array_view``): no copy of the weights is made.
    """
    return arrays_digest(
        [(k, array_view(v) if isinstance(v, Array) else v) for k, v in record.items()]
    )


def build_envelope(
    *,
    region: str,
    run_id: str,
    server_round: int,
    nonce: str,
    base_digest: str,
    device_id: str,
    num_examples: int,
    arrays: ArrayRecord | Mapping[str, Any],
    metrics: Mapping[str, int | float] | None = None,
) -> Envelope:
    """An envelope for ``arrays``; raises ``ValueError`` if any field is out of spec."""
    env = Envelope(
        region=region,
        run_id=run_id,
        round=server_round,
        nonce=nonce,
        base_digest=base_digest,
        device_id=device_id,
        num_examples=num_examples,
        arrays_digest=arrayrecord_digest(arrays),
        metrics=dict(metrics or {}),
    )
    decode_envelope(env.canonical().decode("utf-8"))  # exactly what the server will check
    return env


def sign_envelope(key: Ed25519PrivateKey, envelope: Envelope) -> tuple[dict[str, Any], bytes]:
    """``(envelope dict, signature)``; the key must be the envelope's device key."""
    if fingerprint(key) != envelope.device_id:
        raise ValueError("the signing key's fingerprint is not the envelope's device id")
    return envelope.to_dict(), sign(key, envelope.canonical())


def pack_envelope(envelope: Envelope | Mapping[str, Any], signature: bytes) -> ConfigRecord:
    """The ``ConfigRecord`` that travels beside the update."""
    obj = envelope.to_dict() if isinstance(envelope, Envelope) else dict(envelope)
    return _packed(canonical_json(obj), signature)


def _packed(signed: bytes, signature: bytes) -> ConfigRecord:
    """The record of an envelope's canonical bytes and their signature."""
    return ConfigRecord({ENVELOPE_FIELD: signed.decode("utf-8"), SIGNATURE_FIELD: signature.hex()})


def sign_update(
    key: Ed25519PrivateKey,
    *,
    region: str,
    run_id: str,
    server_round: int,
    nonce: str,
    base: ArrayRecord,
    arrays: ArrayRecord,
    metrics: Mapping[str, int | float],
    base_digest: str | None = None,
) -> ConfigRecord:
    """Client side in one call: envelope for ``arrays`` trained from ``base``, signed, packed.

    ``metrics`` must be exactly what goes into the reply's ``MetricRecord`` and hold
    ``num-examples``. ``base_digest``: ``base``'s digest when the device already computed it
    (it did, to verify the round's instruction); else it is computed here. The envelope's
    canonical bytes are signed and packed as they are (``pack_envelope`` would remake them).
    """
    envelope = build_envelope(
        region=region,
        run_id=run_id,
        server_round=server_round,
        nonce=nonce,
        base_digest=arrayrecord_digest(base) if base_digest is None else base_digest,
        device_id=fingerprint(key),
        num_examples=metrics["num-examples"],  # type: ignore[arg-type]
        arrays=arrays,
        metrics=metrics,
    )
    signed = envelope.canonical()
    return _packed(signed, sign(key, signed))  # what pack_envelope(sign_envelope(...)) gives


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def decode_envelope(text: str) -> Envelope:
    """Parse envelope text that must be the RFC 8785 form of a valid envelope."""
    raw = text.encode("utf-8")  # UnicodeEncodeError is a ValueError
    obj = json.loads(text, parse_constant=_reject_constant)
    if canonical_json(obj) != raw:
        raise ValueError("envelope is not in RFC 8785 canonical form")
    return Envelope.from_dict(obj)


def parse_record(record: Any) -> tuple[Envelope, bytes, bytes]:
    """``(envelope, signed bytes, signature)`` from a packed record, validated but unverified."""
    if record is None:
        raise RejectedUpdate(Reason.UNSIGNED, "no envelope record")
    if not isinstance(record, Mapping):
        raise RejectedUpdate(Reason.MALFORMED, "envelope record is not a mapping")
    text, sig = record.get(ENVELOPE_FIELD), record.get(SIGNATURE_FIELD)
    if text is None or sig is None:
        missing = [k for k, v in ((ENVELOPE_FIELD, text), (SIGNATURE_FIELD, sig)) if v is None]
        raise RejectedUpdate(Reason.UNSIGNED, f"missing {', '.join(missing)}")
    if not isinstance(text, str) or not isinstance(sig, str):
        raise RejectedUpdate(Reason.MALFORMED, "envelope and signature must be strings")
    if len(text) > MAX_ENVELOPE_CHARS:
        raise RejectedUpdate(Reason.MALFORMED, f"envelope over {MAX_ENVELOPE_CHARS} characters")
    if not SIGNATURE_RE.fullmatch(sig):
        raise RejectedUpdate(Reason.MALFORMED, "signature must be 128 lowercase hex digits")
    try:
        envelope = decode_envelope(text)
    except UnsupportedVersion as exc:
        raise RejectedUpdate(Reason.UNSUPPORTED_VERSION, str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise RejectedUpdate(Reason.MALFORMED, str(exc)[:200]) from None
    return envelope, text.encode("utf-8"), bytes.fromhex(sig)


def claimed_device(record: Any) -> str:
    """The device id a packed envelope names, verifying nothing: ``""`` unless the record's
    envelope text is a JSON object (of at most ``MAX_ENVELOPE_CHARS``) whose ``device_id``
    is 64 lowercase hex digits. For the record of a refused update, never for trust."""
    text = record.get(ENVELOPE_FIELD) if isinstance(record, Mapping) else None
    if not isinstance(text, str) or len(text) > MAX_ENVELOPE_CHARS:
        return ""
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return ""
    device = obj.get("device_id") if isinstance(obj, dict) else None
    return device if is_hex64(device) else ""


def _authenticate(
    envelope: Envelope, signed: bytes, signature: bytes, expected_region: str, registry: Any
) -> None:
    device = registry.get(envelope.device_id)
    if device is None:
        if envelope.region != expected_region:
            raise RejectedUpdate(Reason.WRONG_REGION, f"envelope names region {envelope.region!r}")
        raise RejectedUpdate(
            Reason.UNKNOWN_DEVICE, f"device {envelope.device_id[:16]} not enrolled"
        )
    try:
        public = load_public_key(bytes(device.public_key))
    except (ValueError, TypeError):
        raise RejectedUpdate(Reason.UNKNOWN_DEVICE, "registered key is unusable") from None
    if fingerprint(public) != envelope.device_id:
        raise RejectedUpdate(Reason.UNKNOWN_DEVICE, "registered key does not match the device id")
    try:
        verify(public, signature, signed)
    except SignatureError as exc:
        raise RejectedUpdate(Reason.BAD_SIGNATURE, str(exc)) from None
    for where, region in (("envelope", envelope.region), ("registry", device.region)):
        if region != expected_region:
            raise RejectedUpdate(
                Reason.WRONG_REGION, f"{where} region {region!r} != {expected_region!r}"
            )
    if device.revoked:
        raise RejectedUpdate(Reason.REVOKED, f"device {envelope.device_id[:16]} is revoked")


def _check_metrics(envelope: Envelope, metrics: Mapping[str, Any]) -> None:
    got = dict(metrics)
    if set(got) != set(envelope.metrics) or any(
        type(got[k]) not in (int, float) or got[k] != v for k, v in envelope.metrics.items()
    ):
        raise RejectedUpdate(Reason.METRICS_MISMATCH, "reported metrics differ from signed ones")


def check_envelope(
    record: Any,
    arrays: ArrayRecord | Mapping[str, Any],
    *,
    expected_region: str,
    run_id: str,
    server_round: int,
    nonce: str,
    global_digest: str,
    registry: DeviceLookup,
    metrics: Mapping[str, Any] | None = None,
) -> tuple[Envelope, bytes]:
    """Every check of ``open_envelope`` but the replay memory: ``(envelope, signed bytes)``.

    Keeps no state, so replies may be checked concurrently (hashing and Ed25519 release the
    GIL); ``remember_envelope`` then applies the replay memory, in reply order.
    """
    envelope, signed, signature = parse_record(record)
    _authenticate(envelope, signed, signature, expected_region, registry)
    if envelope.run_id != run_id:
        raise RejectedUpdate(Reason.WRONG_RUN, f"run {envelope.run_id!r} != {run_id!r}")
    if envelope.round < server_round:
        raise RejectedUpdate(Reason.STALE_ROUND, f"round {envelope.round} < {server_round}")
    if envelope.round > server_round:
        raise RejectedUpdate(Reason.WRONG_ROUND, f"round {envelope.round} > {server_round}")
    if envelope.nonce != nonce:
        raise RejectedUpdate(Reason.WRONG_NONCE, "not this round's server nonce")
    if envelope.base_digest != global_digest:
        raise RejectedUpdate(Reason.WRONG_BASE, "trained from a model other than the global one")
    try:
        digest = arrayrecord_digest(arrays)
    except OversizePayload as exc:
        raise RejectedUpdate(Reason.OVERSIZE, str(exc)) from None
    except (CanonicalArraysError, TypeError, ValueError) as exc:
        raise RejectedUpdate(Reason.DIGEST_MISMATCH, f"arrays unreadable: {exc}"[:200]) from None
    if digest != envelope.arrays_digest:
        raise RejectedUpdate(Reason.DIGEST_MISMATCH, "arrays differ from the signed digest")
    if metrics is not None:
        _check_metrics(envelope, metrics)
    return envelope, signed


def remember_envelope(
    seen: SeenUpdates, envelope: Envelope, signed: bytes, run_id: str, server_round: int
) -> None:
    """Record a checked envelope's device for this run and round; a second envelope of the
    device raises ``replay`` (identical) or ``duplicate-device`` (different)."""
    digest = sha256_hex(signed)
    previous = seen.remember(envelope.device_id, run_id, server_round, digest)
    if previous is not None:
        code = Reason.REPLAY if previous == digest else Reason.DUPLICATE_DEVICE
        raise RejectedUpdate(code, f"device {envelope.device_id[:16]} already sent round")


def open_envelope(
    record: Any,
    arrays: ArrayRecord | Mapping[str, Any],
    *,
    expected_region: str,
    run_id: str,
    server_round: int,
    nonce: str,
    global_digest: str,
    registry: DeviceLookup,
    metrics: Mapping[str, Any] | None = None,
    seen: SeenUpdates | None = None,
) -> Envelope:
    """Verify a packed envelope against ``arrays`` and this round; return it or raise.

    Every failed check raises ``RejectedUpdate`` (an exception of the registry itself
    propagates; ``signature_screen`` turns it into ``verification-error``). ``metrics`` (the
    reply's MetricRecord) must then equal the signed metrics; ``seen`` records the device for
    this run and round, rejecting a second envelope (``replay`` when identical,
    ``duplicate-device`` otherwise). ``check_envelope`` then ``remember_envelope``.
    """
    envelope, signed = check_envelope(
        record,
        arrays,
        expected_region=expected_region,
        run_id=run_id,
        server_round=server_round,
        nonce=nonce,
        global_digest=global_digest,
        registry=registry,
        metrics=metrics,
    )
    if seen is not None:
        remember_envelope(seen, envelope, signed, run_id, server_round)
    return envelope


def verify_envelope(
    record: Any,
    arrays: ArrayRecord | Mapping[str, Any],
    *,
    expected_region: str,
    run_id: str,
    server_round: int,
    nonce: str,
    global_digest: str,
    registry: DeviceLookup,
    metrics: Mapping[str, Any] | None = None,
    seen: SeenUpdates | None = None,
) -> str:
    """``open_envelope`` returning only the verified device id."""
    return open_envelope(
        record,
        arrays,
        expected_region=expected_region,
        run_id=run_id,
        server_round=server_round,
        nonce=nonce,
        global_digest=global_digest,
        registry=registry,
        metrics=metrics,
        seen=seen,
    ).device_id


class SignatureScreen:
    """A ``RobustStrategy`` screen: ``base_screen`` first, then envelope verification.

    An accepted fate gets the verified device id and the signed example count; every fate
    gets the device id the envelope claims (``claimed_device``), so a refused update still
    names the device it claims to be. Any unexpected exception (in ``base_screen``, the
    registry, ...) rejects the update with ``verification-error`` instead of crashing the
    round.

    Staged (``fedgate.strategies.arrival.StagedScreen``): ``check`` holds every check but the
    replay memory and keeps no state, so the strategy runs it on each reply as it arrives,
    in a thread pool; ``commit`` applies the replay memory in reply order. Calling the
    screen does both. Devices are looked up in one registry read per round, and
    ``confirm`` re-reads the registry once before aggregation (``RoundDevices``).
    """

    def __init__(
        self,
        registry: DeviceLookup,
        region: str,
        run_id: str,
        nonce_for_round: Callable[[int], str],
        base_screen: Callable[[Message, int, ArrayRecord], ClientFate],
        *,
        seen: SeenUpdates | None = None,
        record_key: str = RECORD_KEY,
    ) -> None:
        self.registry = registry  # read through ``self.devices``: once a round, not per update
        self.region = region
        self.run_id = run_id
        self.nonce_for_round = nonce_for_round
        self.base_screen = base_screen
        self.seen = seen
        self.record_key = record_key
        self._digest: tuple[int, ArrayRecord | None, str] = (0, None, "")  # round, model
        self._lock = threading.Lock()

    @property
    def registry(self) -> DeviceLookup:
        return self.devices.registry

    @registry.setter
    def registry(self, registry: DeviceLookup) -> None:
        self.devices = RoundDevices(registry)

    def _global_digest(self, server_round: int, current: ArrayRecord) -> str:
        with self._lock:  # computed once per round's model, whichever thread asks first
            done_round, model, digest = self._digest
            if done_round != server_round or model is not current:
                digest = arrayrecord_digest(current)
                self._digest = (server_round, current, digest)
            return digest

    def _checked(
        self, reply: Message, server_round: int, current: ArrayRecord
    ) -> tuple[ClientFate, Envelope | None, bytes]:
        content = reply.content
        record = content.config_records.get(self.record_key)
        fate = replace(
            self.base_screen(reply, server_round, current),
            claimed_device_id=claimed_device(record),
        )
        if not fate.accepted:
            return fate, None, b""
        try:
            envelope, signed = check_envelope(
                record,
                next(iter(content.array_records.values())),
                expected_region=self.region,
                run_id=self.run_id,
                server_round=server_round,
                nonce=self.nonce_for_round(server_round),
                global_digest=self._global_digest(server_round, current),
                registry=self.devices.lookup(server_round),
                metrics=next(iter(content.metric_records.values())),
            )
        except RejectedUpdate as exc:
            return replace(fate, accepted=False, reason=exc.code, detail=exc.detail), None, b""
        fate = replace(
            fate,
            device_id=envelope.device_id,
            digest=envelope.arrays_digest,
            num_examples=envelope.num_examples,
        )
        return fate, envelope, signed

    def check(
        self, reply: Message, server_round: int, current: ArrayRecord
    ) -> Callable[[], ClientFate]:
        """Every stateless check of ``reply``; returns the step that finishes its fate
        (the replay memory), to be called in reply order."""
        try:
            fate, envelope, signed = self._checked(reply, server_round, current)
        except Exception as exc:  # fail closed: a fault never crashes the round
            failed = _failed_screen(reply, exc, self.record_key)
            return lambda: failed
        if envelope is None or self.seen is None:
            return lambda: fate
        seen = self.seen

        def commit() -> ClientFate:
            try:
                remember_envelope(seen, envelope, signed, self.run_id, server_round)
            except RejectedUpdate as exc:
                return replace(fate, accepted=False, reason=exc.code, detail=exc.detail)
            except Exception as exc:
                return _failed_screen(reply, exc, self.record_key)
            return fate

        return commit

    def __call__(self, reply: Message, server_round: int, current: ArrayRecord) -> ClientFate:
        return self.check(reply, server_round, current)()

    def confirm(self, fates: list[ClientFate]) -> None:
        """Before the round aggregates: refuse (in place) every accepted update whose device
        was revoked, removed or re-keyed since it was checked (one registry read); if that
        read fails, refuse them all (``verification-error``): screening fails closed."""
        accepted = [fate for fate in fates if fate.accepted]
        if not self.devices.batched or not accepted:
            return  # without batched reads every update was looked up as it was checked
        try:
            checked, now = self.devices.reread()
        except Exception as exc:
            for fate in accepted:
                _refuse(fate, Reason.VERIFICATION_ERROR, f"registry re-read failed: {exc!r}")
            return
        for fate in accepted:
            device, short = now.get(fate.device_id), fate.device_id[:16]
            before = checked.get(fate.device_id, device)
            if device is None:
                _refuse(fate, Reason.UNKNOWN_DEVICE, f"device {short} no longer enrolled")
            elif bytes(device.public_key) != bytes(before.public_key):
                _refuse(fate, Reason.UNKNOWN_DEVICE, "registered key changed during the round")
            elif device.revoked:
                _refuse(fate, Reason.REVOKED, f"device {short} revoked during the round")


def _refuse(fate: ClientFate, reason: str, detail: str) -> None:
    fate.accepted, fate.reason, fate.detail = False, reason, detail[:200]


def _failed_screen(reply: Any, exc: Exception, record_key: str) -> ClientFate:
    """The ``verification-error`` fate of a reply whose screening raised ``exc``."""
    log(WARNING, "update screening failed unexpectedly: %r", exc)
    node = getattr(getattr(reply, "metadata", None), "src_node_id", 0)
    fate = ClientFate(node, False, Reason.VERIFICATION_ERROR, repr(exc)[:200])
    with contextlib.suppress(Exception):  # the reply itself may be what is broken
        fate.claimed_device_id = claimed_device(reply.content.config_records[record_key])
    return fate


def signature_screen(
    registry: DeviceLookup,
    region: str,
    run_id: str,
    nonce_for_round: Callable[[int], str],
    base_screen: Callable[[Message, int, ArrayRecord], ClientFate],
    *,
    seen: SeenUpdates | None = None,
    record_key: str = RECORD_KEY,
) -> SignatureScreen:
    """The region's screen (``SignatureScreen``): structural checks, then the envelope."""
    return SignatureScreen(
        registry, region, run_id, nonce_for_round, base_screen, seen=seen, record_key=record_key
    )
