"""Property tests the issue asks for beyond tests/test_envelope_properties.py.

* any single-byte change to an update's arrays as they travel (the ``.npy`` payload, header
  included, the declared dtype/shape, the names) is rejected, or leaves the arrays the server
  aggregates bit-identical to the signed ones;
* the canonical serialization is injective over names, dtypes, shapes, order and data;
* a device of one region is refused by every other region, whatever the names;
* over any sequence of submissions across rounds, an envelope counts at most once, and only
  in its own round (replay, duplicate, stale).

The registry here is a plain dict (``DeviceLookup``), independent of the region database.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from conftest import train_reply
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.lib import format as npy_format

from fedgate.canonical_arrays import ALLOWED_DTYPES, CanonicalArraysError, arrays_digest
from fedgate.crypto import fingerprint, generate_key, public_bytes
from fedgate.server.region.nonces import ReplayGuard, RoundNonces
from fedgate.strategies.envelope import (
    NPY_MAX_HEADER,
    Reason,
    RejectedUpdate,
    _npy_layout,
    arrayrecord_digest,
    build_envelope,
    open_envelope,
    pack_envelope,
    sign_envelope,
    sign_update,
    signature_screen,
)
from fedgate.strategies.robust_strategy import structural_screen

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
RUN, REGION = "run-tamper", "eu"
METRICS = {"train-loss": 0.75, "num-examples": 9}


@dataclass(frozen=True)
class Row:
    region: str
    public_key: bytes
    revoked: bool = False


KEYS = [generate_key() for _ in range(3)]
REGISTRY = {fingerprint(k): Row(REGION, public_bytes(k)) for k in KEYS}
NONCES = RoundNonces()


def record(**arrays: np.ndarray) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


BASE = record(
    w=np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    b=np.zeros(4, np.float32),
    count=np.array([1, 2], np.int64),
)
UPDATE = record(
    w=np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4),
    b=np.array([0.5, -0.5, 0.25, 1.0], np.float32),
    count=np.array([4, 2], np.int64),
)


def signed(key: Any = KEYS[0], server_round: int = 2, arrays: ArrayRecord = UPDATE, **kw: Any):
    return sign_update(
        key,
        region=kw.get("region", REGION),
        run_id=RUN,
        server_round=server_round,
        nonce=kw.get("nonce", NONCES(server_round)),
        base=BASE,
        arrays=arrays,
        metrics=METRICS,
    )


def verify(envelope: Any, arrays: Any, server_round: int = 2, **over: Any) -> str:
    kw: dict[str, Any] = {
        "expected_region": REGION,
        "run_id": RUN,
        "server_round": server_round,
        "nonce": NONCES(server_round),
        "global_digest": arrayrecord_digest(BASE),
        "registry": REGISTRY,
        "metrics": METRICS,
    }
    kw.update(over)
    return open_envelope(envelope, arrays, **kw).device_id


ENVELOPE = signed()


def test_the_untouched_update_verifies() -> None:
    assert verify(ENVELOPE, UPDATE) == fingerprint(KEYS[0])


def _with(name: str, **fields: Any) -> ArrayRecord:
    out = {}
    for key, arr in UPDATE.items():
        parts = {"dtype": arr.dtype, "shape": arr.shape, "stype": arr.stype, "data": arr.data}
        if key == name:
            parts.update(fields)
        out[key] = Array(**parts)
    return ArrayRecord(out)


def _header_len(data: bytes) -> int:
    return 10 + int.from_bytes(data[8:10], "little")


@SETTINGS
@given(st.data())
def test_any_byte_change_in_a_payload_is_rejected_or_changes_nothing(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(list(UPDATE.keys())))
    raw = UPDATE[name].data
    where = data.draw(st.sampled_from(["header", "anywhere"]))
    top = _header_len(raw) - 1 if where == "header" else len(raw) - 1
    pos = data.draw(st.integers(0, top))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
    arrays = _with(name, data=raw[:pos] + bytes([new]) + raw[pos + 1 :])
    try:
        verify(ENVELOPE, arrays)
    except RejectedUpdate as exc:
        assert exc.code in {Reason.DIGEST_MISMATCH, Reason.OVERSIZE}
        return
    # Accepted: the change was in the .npy header's spelling only (say, a padding byte);
    # what numpy hands the aggregator is exactly the signed array.
    assert pos < _header_len(raw)
    got, want = arrays[name].numpy(), UPDATE[name].numpy()
    assert (got.dtype, got.shape, got.tobytes()) == (want.dtype, want.shape, want.tobytes())


@SETTINGS
@given(st.data())
def test_declared_dtype_or_shape_that_the_payload_does_not_hold_is_rejected(
    data: st.DataObject,
) -> None:
    name = data.draw(st.sampled_from(list(UPDATE.keys())))
    arr = UPDATE[name]
    if data.draw(st.booleans()):
        dtype = data.draw(st.sampled_from(sorted(ALLOWED_DTYPES - {arr.dtype})))
        arrays = _with(name, dtype=dtype)
    else:
        size = int(np.prod(arr.shape))
        shape = data.draw(
            st.lists(st.integers(0, size + 1), min_size=0, max_size=3)
            .map(tuple)
            .filter(lambda s: s != tuple(arr.shape))
        )
        arrays = _with(name, shape=shape)
    assert _code(ENVELOPE, arrays) == Reason.DIGEST_MISMATCH


@SETTINGS
@given(st.data())
def test_a_renamed_array_is_rejected(data: st.DataObject) -> None:
    pos = data.draw(st.integers(0, 2))
    names = list(UPDATE.keys())
    old = names[pos].encode()
    i = data.draw(st.integers(0, len(old) - 1))
    new = data.draw(st.integers(32, 126).filter(lambda b: b != old[i]))
    renamed = (old[:i] + bytes([new]) + old[i + 1 :]).decode()
    assume(renamed not in names)
    arrays = ArrayRecord({renamed if k == names[pos] else k: v for k, v in UPDATE.items()})
    assert _code(ENVELOPE, arrays) == Reason.DIGEST_MISMATCH


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from(["float32", "int64", "weird"]))
def test_arbitrary_payload_bytes_are_rejected_cleanly(payload: bytes, dtype: str) -> None:
    arrays = _with("b", data=payload, dtype=dtype)
    assert _code(ENVELOPE, arrays) in {Reason.DIGEST_MISMATCH, Reason.OVERSIZE}


def _code(envelope: Any, arrays: Any, **over: Any) -> str:
    try:
        verify(envelope, arrays, **over)
    except RejectedUpdate as exc:
        return exc.code
    raise AssertionError("the update was accepted")


# ---------------------------------------------------------------- canonical serialization

DTYPES = st.sampled_from(sorted(ALLOWED_DTYPES))
NAMED = st.lists(
    st.tuples(
        st.text(min_size=0, max_size=6),
        DTYPES.flatmap(
            lambda d: hnp.arrays(np.dtype(d), hnp.array_shapes(min_dims=0, max_dims=3, max_side=3))
        ),
    ),
    min_size=1,
    max_size=4,
    unique_by=lambda item: item[0],
)


def _mutations(named: list, data: st.DataObject) -> list:
    """One change to name, dtype, shape, data or order; the result differs as named arrays."""
    i = data.draw(st.integers(0, len(named) - 1))
    name, arr = named[i]
    options = ["name", "shape"]
    if arr.nbytes:
        options += ["data", "dtype"]
    if len(named) > 1:
        options.append("order")
    what = data.draw(st.sampled_from(options))
    if what == "name":
        new_name = data.draw(st.text(max_size=6).filter(lambda n: n not in dict(named)))
        return [*named[:i], (new_name, arr), *named[i + 1 :]]
    if what == "shape":
        shapes = [(arr.size,), (1, *arr.shape), (*arr.shape, 1)]
        shape = data.draw(st.sampled_from([s for s in shapes if s != arr.shape]))
        return [*named[:i], (name, arr.reshape(shape)), *named[i + 1 :]]
    if what == "data":
        raw = bytearray(arr.tobytes())
        bit = data.draw(st.integers(0, len(raw) * 8 - 1))
        raw[bit // 8] ^= 1 << (bit % 8)
        changed = np.frombuffer(bytes(raw), arr.dtype).reshape(arr.shape)
        return [*named[:i], (name, changed), *named[i + 1 :]]
    if what == "dtype":
        same_size = [d for d in ALLOWED_DTYPES if np.dtype(d).itemsize == arr.dtype.itemsize]
        others = [d for d in same_size if d != arr.dtype.name]
        if not others:  # bool and (u)int8 share a size; float16 has int16/uint16
            return [*named[:i], (name + "x", arr), *named[i + 1 :]]
        view = arr.view(data.draw(st.sampled_from(sorted(others))))
        return [*named[:i], (name, view), *named[i + 1 :]]
    j = data.draw(st.integers(0, len(named) - 1).filter(lambda j: j != i))
    out = list(named)
    out[i], out[j] = out[j], out[i]
    return out


@SETTINGS
@given(NAMED, st.data())
def test_canonical_serialization_binds_names_dtypes_shapes_order_and_data(
    named: list, data: st.DataObject
) -> None:
    assert arrays_digest(_mutations(named, data)) != arrays_digest(named)


# ---------------------------------------------------------------- cross-region

REGION_NAMES = st.text(min_size=1, max_size=12)


@SETTINGS
@given(REGION_NAMES, REGION_NAMES, st.sampled_from(["own", "claims-other", "shared-db"]))
def test_a_device_is_refused_by_every_other_region(home: str, other: str, how: str) -> None:
    """``home``'s device, sent to ``other``'s server, never gets in."""
    assume(home != other)
    key = KEYS[1]
    home_row = Row(home, public_bytes(key))
    registry = {fingerprint(key): home_row} if how == "shared-db" else {}
    claimed = other if how == "claims-other" else home
    envelope = signed(key, region=claimed)
    code = _code(envelope, UPDATE, expected_region=other, registry=registry)
    want = Reason.UNKNOWN_DEVICE if how == "claims-other" else Reason.WRONG_REGION
    assert code == want


# ---------------------------------------------------------------- replay across rounds

SUBMISSION = st.tuples(
    st.integers(0, 2),  # device
    st.integers(-2, 0),  # round the envelope was signed for, relative to the server's
    st.integers(0, 1),  # which of two different updates
)


@SETTINGS
@given(st.lists(st.lists(SUBMISSION, max_size=6), min_size=1, max_size=5))
def test_every_envelope_counts_once_and_only_in_its_round(rounds: list) -> None:
    guard = ReplayGuard()
    other = ArrayRecord({k: Array(v.numpy() + 1) for k, v in UPDATE.items()})
    accepted: dict[tuple[int, int], bytes] = {}
    for offset, submissions in enumerate(rounds):
        server_round = 3 + offset
        for device, relative, variant in submissions:
            env_round = server_round + relative
            arrays = other if variant else UPDATE
            envelope = signed(KEYS[device], env_round, arrays)
            try:
                verify(envelope, arrays, server_round, seen=guard)
                code = None
            except RejectedUpdate as exc:
                code = exc.code
            slot = (device, server_round)
            if env_round < server_round:
                want = Reason.STALE_ROUND
            elif slot not in accepted:
                want = None
                accepted[slot] = envelope["envelope"].encode()
            elif accepted[slot] == envelope["envelope"].encode():
                want = Reason.REPLAY
            else:
                want = Reason.DUPLICATE_DEVICE
            assert code == want, (server_round, device, relative, variant)


# ---------------------------------------------------------------- the screen, end to end


def _reply(node: int, arrays: ArrayRecord, envelope: Any) -> Message:
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(METRICS), "envelope": envelope})
    return train_reply(node, content)


def test_a_payload_that_lies_about_its_shape_is_rejected_before_aggregation() -> None:
    """Flower keeps an Array's declared shape apart from its payload: a payload that holds
    something else than it declares is refused before aggregation, even when signed."""
    screen = signature_screen(REGISTRY, REGION, RUN, NONCES, structural_screen)
    bigger = np.arange(20, dtype=np.float32)  # declared (3, 4) float32, holds 20 floats
    lying = ArrayRecord(
        {
            k: Array(v.dtype, v.shape, v.stype, Array(bigger).data) if k == "w" else v
            for k, v in UPDATE.items()
        }
    )
    # An enrolled device signs its own lie: the digest of what the payloads hold.
    held = [(k, np.load(io.BytesIO(v.data))) for k, v in lying.items()]
    claim = build_envelope(
        region=REGION,
        run_id=RUN,
        server_round=2,
        nonce=NONCES(2),
        base_digest=arrayrecord_digest(BASE),
        device_id=fingerprint(KEYS[2]),
        num_examples=METRICS["num-examples"],
        arrays=dict(held),
        metrics=METRICS,
    )
    envelope = pack_envelope(*sign_envelope(KEYS[2], claim))
    fate = screen(_reply(7, lying, envelope), 2, BASE)
    assert (fate.accepted, fate.reason) == (False, "wrong-shape")
    assert "declares float32(3, 4) but holds float32(20,)" in fate.detail
    honest = screen(_reply(8, UPDATE, signed(KEYS[2])), 2, BASE)
    assert honest.accepted, honest


# ---------------------------------------------------------------- the fast .npy header reader

ANY_ORDER_DTYPES = st.sampled_from(sorted(ALLOWED_DTYPES)).flatmap(
    lambda d: st.sampled_from([np.dtype(d), np.dtype(d).newbyteorder(">")])
)


def _numpy_reads(data: bytes) -> tuple | None:
    """What numpy's own reader makes of a .npy header (None: it refuses)."""
    fp = io.BytesIO(data)
    try:
        version = npy_format.read_magic(fp)
        reader = {
            (1, 0): npy_format.read_array_header_1_0,
            (2, 0): npy_format.read_array_header_2_0,
        }[version]
        shape, fortran, dtype = reader(fp, NPY_MAX_HEADER)
    except Exception:
        return None
    return shape, fortran, dtype, fp.tell()


@SETTINGS
@given(
    ANY_ORDER_DTYPES.flatmap(
        lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3))
    ),
    st.booleans(),
    st.data(),
)
def test_the_fast_header_reader_agrees_with_numpy(
    arr: np.ndarray, fortran: bool, data: st.DataObject
) -> None:
    buf = io.BytesIO()
    np.save(buf, np.asfortranarray(arr) if fortran else arr)
    raw = bytearray(buf.getvalue())
    if data.draw(st.booleans()):
        pos = data.draw(st.integers(0, _header_len(bytes(raw)) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    raw = bytes(raw)
    want = _numpy_reads(raw)
    try:
        got = _npy_layout(raw)
    except CanonicalArraysError:
        got = None
    assert got == want


def test_a_scalar_and_a_one_element_vector_differ() -> None:
    for dtype in sorted(ALLOWED_DTYPES):
        scalar, vector = np.zeros((), dtype), np.zeros((1,), dtype)
        assert arrays_digest({"x": scalar}) != arrays_digest({"x": vector})
        assert arrayrecord_digest(record(x=scalar)) == arrays_digest({"x": scalar})
