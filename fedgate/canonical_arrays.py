"""Canonical byte serialization and SHA-256 digest of an ordered list of named arrays.

Client, region server and tests all hash model weights through this module, so an update's
arrays digest means the same thing everywhere. Byte layout (all integers little-endian)::

    b"fedgate-arrays/v1\\x00"                       domain tag, 18 bytes
    u32  number of arrays
    per array, in the given order:
      u32  len(name) ; name as UTF-8
      u8   len(dtype); dtype name as ASCII ("float32", "int64", "bool", ...)
      u32  ndim      ; ndim x u64 dimensions
      u64  len(data) ; data: the elements in C order, each little-endian

Only the dtypes in ``ALLOWED_DTYPES`` are accepted: bool, (u)int8-64, float16/32/64. Their
bytes are fully defined on every platform (no padding, no platform-sized types), which is what
lets a phone SDK reproduce a digest. The full specification is ``docs/signing.md``.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
from numpy.typing import ArrayLike

from fedgate.errors import VerificationError

DOMAIN_TAG = b"fedgate-arrays/v1\x00"
ALLOWED_KINDS = frozenset("biuf")  # bool, signed int, unsigned int, float
ALLOWED_DTYPES = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    }
)
MAX_NAME_BYTES = 1024

NamedArrays = Mapping[str, ArrayLike] | Iterable[tuple[str, ArrayLike]]


class CanonicalArraysError(VerificationError, ValueError):
    """The arrays cannot be serialized canonically (bad name, dtype or duplicate)."""


def _items(named: NamedArrays) -> list[tuple[str, ArrayLike]]:
    items = list(named.items()) if isinstance(named, Mapping) else list(named)
    seen: set[str] = set()
    for item in items:
        if not isinstance(item, tuple) or len(item) != 2 or not isinstance(item[0], str):
            raise CanonicalArraysError("expected (name, array) pairs with str names")
        if item[0] in seen:
            raise CanonicalArraysError(f"duplicate array name {item[0]!r}")
        seen.add(item[0])
    return items


def _little_endian(name: str, value: ArrayLike) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in ALLOWED_KINDS or arr.dtype.name not in ALLOWED_DTYPES:
        raise CanonicalArraysError(
            f"{name!r}: dtype {arr.dtype} is not one of {', '.join(sorted(ALLOWED_DTYPES))}"
        )
    # astype, not ascontiguousarray: the latter turns a 0-d array into shape (1,).
    return arr.astype(arr.dtype.newbyteorder("<"), order="C", copy=False)


def _name_bytes(name: str) -> bytes:
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise CanonicalArraysError(f"array name {name!r} is not valid UTF-8") from None
    if len(raw) > MAX_NAME_BYTES:
        raise CanonicalArraysError(f"array name longer than {MAX_NAME_BYTES} bytes")
    return raw


def iter_canonical(named: NamedArrays) -> Iterator[bytes | memoryview]:
    """Yield the canonical serialization in pieces (array data without copying)."""
    items = _items(named)
    yield DOMAIN_TAG + struct.pack("<I", len(items))
    for name, value in items:
        raw_name = _name_bytes(name)
        arr = _little_endian(name, value)
        dtype = arr.dtype.name.encode("ascii")
        data = memoryview(arr.reshape(-1).view(np.uint8))
        yield (
            struct.pack("<I", len(raw_name))
            + raw_name
            + struct.pack("<B", len(dtype))
            + dtype
            + struct.pack(f"<I{arr.ndim}Q", arr.ndim, *arr.shape)
            + struct.pack("<Q", data.nbytes)
        )
        yield data


def canonical_bytes(named: NamedArrays) -> bytes:
    """The whole canonical serialization (for test vectors; hashing streams instead)."""
    return b"".join(bytes(piece) for piece in iter_canonical(named))


def arrays_digest(named: NamedArrays) -> str:
    """Hex SHA-256 of the canonical serialization of ``named`` (order matters)."""
    h = hashlib.sha256()
    for piece in iter_canonical(named):
        h.update(piece)
    return h.hexdigest()
