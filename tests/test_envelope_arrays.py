"""Canonical serialization and digest of named arrays (fedgate.canonical_arrays)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedgate.canonical_arrays import CanonicalArraysError, arrays_digest, canonical_bytes
from fedgate.strategies.envelope import arrayrecord_digest


def test_byte_layout_of_a_small_example() -> None:
    got = canonical_bytes([("ab", np.array([[1, -2]], dtype=np.int16))])
    want = (
        b"fedgate-arrays/v1\x00"
        + b"\x01\x00\x00\x00"  # one array
        + b"\x02\x00\x00\x00ab"  # name
        + b"\x05int16"  # dtype
        + b"\x02\x00\x00\x00"  # ndim
        + b"\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00"  # shape (1, 2)
        + b"\x04\x00\x00\x00\x00\x00\x00\x00"  # data length
        + b"\x01\x00\xfe\xff"  # 1, -2 little-endian
    )
    assert got == want
    assert arrays_digest([("ab", np.array([[1, -2]], dtype=np.int16))]) == (
        hashlib.sha256(want).hexdigest()
    )


def test_empty_list_and_scalar_arrays() -> None:
    assert canonical_bytes([]) == b"fedgate-arrays/v1\x00\x00\x00\x00\x00"
    scalar = canonical_bytes([("s", np.float64(1.5))])
    assert scalar.endswith(b"\x00\x00\x00\x00" + b"\x08" + b"\x00" * 7 + np.float64(1.5).tobytes())


def test_byte_order_and_memory_layout_do_not_matter() -> None:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    big = a.astype(">f4")
    fortran = np.asfortranarray(a)
    view = np.arange(24, dtype=np.float32).reshape(3, 8)[:, ::2] // 2
    digests = {arrays_digest({"a": x}) for x in (a, big, fortran, view)}
    assert len(digests) == 1


@pytest.mark.parametrize(
    "other",
    [
        {"b": np.arange(6, dtype=np.float32).reshape(2, 3)},  # name
        {"a": np.arange(6, dtype=np.float32).reshape(3, 2)},  # shape
        {"a": np.arange(6, dtype=np.float32).reshape(6)},  # ndim
        {"a": np.arange(6, dtype=np.float32).view(np.int32).reshape(2, 3)},  # dtype
    ],
)
def test_names_shapes_and_dtypes_are_bound(other: dict) -> None:
    assert arrays_digest({"a": np.arange(6, dtype=np.float32).reshape(2, 3)}) != (
        arrays_digest(other)
    )


def test_order_is_bound() -> None:
    x, y = np.zeros(2, np.float32), np.ones(2, np.float32)
    assert arrays_digest([("x", x), ("y", y)]) != arrays_digest([("y", y), ("x", x)])


def test_framing_is_unambiguous() -> None:
    """Moving bytes between a name and the data, or between arrays, changes the digest."""
    one = [("a", np.zeros(4, np.uint8)), ("b", np.zeros(0, np.uint8))]
    two = [("a", np.zeros(0, np.uint8)), ("b", np.zeros(4, np.uint8))]
    assert arrays_digest(one) != arrays_digest(two)


@pytest.mark.parametrize(
    "bad",
    [
        [("a", np.array(["x"]))],
        [("a", np.array([object()], dtype=object))],
        [("a", np.zeros(2, dtype=[("f", "i4")]))],
        [("a", np.zeros(2)), ("a", np.zeros(2))],
        [("\ud800", np.zeros(2))],
        [("a" * 2000, np.zeros(2))],
        [("a", np.zeros(2), "extra")],
    ],
)
def test_unsupported_inputs_raise(bad: list) -> None:
    with pytest.raises(CanonicalArraysError):
        arrays_digest(bad)


def test_arrayrecord_digest_matches_numpy() -> None:
    arrays = {"w": np.ones((2, 2), np.float32), "n": np.array([3], np.int64)}
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    assert arrayrecord_digest(record) == arrays_digest(arrays) == arrayrecord_digest(arrays)


@settings(max_examples=100, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float64, np.int8, np.uint16, np.bool_]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    ),
    st.data(),
)
def test_any_bit_flip_changes_the_digest(arr: np.ndarray, data: st.DataObject) -> None:
    if arr.nbytes == 0:
        return
    raw = bytearray(canonical_bytes([("x", arr)]))
    before = arrays_digest([("x", arr)])
    flipped = np.frombuffer(arr.tobytes(), dtype=np.uint8).copy()
    bit = data.draw(st.integers(0, arr.nbytes * 8 - 1))
    flipped[bit // 8] ^= 1 << (bit % 8)
    other = flipped.view(arr.dtype).reshape(arr.shape)
    assert arrays_digest([("x", other)]) != before
    assert hashlib.sha256(bytes(raw)).hexdigest() == before
