"""RFC 9162 Merkle tree hashing, inclusion and consistency proofs (section 2.1).

Hashing: a leaf is ``SHA-256(0x00 || data)``, an interior node ``SHA-256(0x01 || left ||
right)``, the empty tree ``SHA-256()``. A tree of ``n`` leaves splits at ``k``, the largest
power of two below ``n`` (RFC 9162 2.1.1).

Every subtree the RFC's recursions touch (``MTH(D[a:b])`` in ``PATH`` and ``SUBPROOF``) starts
at a multiple of a power of two at least as large as it, so its hash is the right fold of the
*perfect* subtrees that tile it, largest first. A perfect subtree is named ``(level, index)``:
the ``2**level`` leaves from ``index * 2**level``. Proof generation therefore needs only
``O(log n)`` perfect-subtree hashes, which a ``NodeSource`` looks up (``MerkleTree`` keeps them
in memory; the audit log keeps them in its database), never the leaves themselves.
Verification follows RFC 9162 2.1.3.2 and 2.1.4.2 step by step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container, Iterable, Mapping, Sequence
from typing import Protocol

from fedgate.errors import VerificationError

_sha256 = hashlib.sha256
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
MAX_SIZE = 2**63 - 1  # tree sizes and indexes are uint64 in RFC 9162; fedgate stores BIGINT
Node = tuple[int, int]  # (level, index) of a perfect subtree


class MerkleError(VerificationError, ValueError):
    """A Merkle proof does not verify, or a proof, size, index or hash is malformed."""


def leaf_hash(data: bytes) -> bytes:
    """``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def _size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MerkleError(f"{what} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_SIZE:
        raise MerkleError(f"{what} must be between 0 and 2**63-1, got {value}")
    return value


def _hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        got = (
            f"{len(value)} bytes" if isinstance(value, bytes | bytearray) else type(value).__name__
        )
        raise MerkleError(f"{what} must be a {HASH_SIZE}-byte SHA-256 hash, got {got}")
    return bytes(value)


def _path(values: object, what: str) -> list[bytes]:
    if not isinstance(values, Sequence) or isinstance(values, str | bytes | bytearray):
        raise MerkleError(f"{what} must be a list of hashes")
    if len(values) > 128:  # two 64-bit paths at most; longer is malformed, not slow
        raise MerkleError(f"{what} has {len(values)} hashes, more than any tree needs")
    return [_hash(v, f"{what}[{i}]") for i, v in enumerate(values)]


# -- perfect subtrees ----------------------------------------------------------------------


def subtrees(start: int, end: int) -> list[Node]:
    """The perfect subtrees tiling ``[start, end)``, left to right, each as large as its
    alignment allows (for the ranges of RFC 9162's recursions: largest first)."""
    out: list[Node] = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length() - 1
        while start + (1 << level) > end:
            level -= 1
        out.append((level, start >> level))
        start += 1 << level
    return out


class NodeSource(Protocol):
    """Hashes of perfect subtrees by ``(level, index)``; a missing one raises ``KeyError``."""

    def nodes(self, keys: Iterable[Node]) -> Mapping[Node, bytes]: ...


def _fold(keys: list[Node], found: Mapping[Node, bytes]) -> bytes:
    """The hash of the range the perfect subtrees ``keys`` tile (largest first)."""
    digest = found[keys[-1]]
    for key in reversed(keys[:-1]):
        digest = node_hash(found[key], digest)
    return digest


def range_hashes(ranges: Sequence[tuple[int, int]], source: NodeSource) -> list[bytes]:
    """``MTH(D[a:b])`` of each range, from one lookup of the perfect subtrees they need."""
    tiles = [subtrees(a, b) for a, b in ranges]
    found = source.nodes({key for keys in tiles for key in keys})
    return [_fold(keys, found) for keys in tiles]


def root(size: int, source: NodeSource) -> bytes:
    """``MTH(D[0:size])``."""
    size = _size(size, "tree size")
    return EMPTY_ROOT if size == 0 else range_hashes([(0, size)], source)[0]


# -- proof generation (RFC 9162 2.1.3.1 and 2.1.4.1, as ranges) -----------------------------


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The ranges whose hashes form ``PATH(index, D[0:size])``, leaf to root."""
    index, size = _size(index, "leaf index"), _size(size, "tree size")
    if index >= size:
        raise MerkleError(f"leaf index {index} is not in a tree of size {size}")
    out: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index < start + k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start += k
    return out[::-1]


def consistency_ranges(old: int, new: int) -> list[tuple[int, int]]:
    """The ranges whose hashes form ``PROOF(old, D[0:new])`` (empty for ``old`` 0 or equal)."""
    old, new = _size(old, "old tree size"), _size(new, "new tree size")
    if old > new:
        raise MerkleError(f"old tree size {old} is larger than the new tree size {new}")
    if old in (0, new):
        return []
    out: list[tuple[int, int]] = []
    start, end, whole = 0, new, True  # SUBPROOF(m, D[start:end], whole)
    m = old
    while m != end - start:
        k = _split(end - start)
        if m <= k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            m -= k
            start += k
            whole = False
    if not whole:
        out.append((start, end))
    return out[::-1]


def inclusion_proof(index: int, size: int, source: NodeSource) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``size`` leaves."""
    return range_hashes(inclusion_ranges(index, size), source)


def consistency_proof(old: int, new: int, source: NodeSource) -> list[bytes]:
    """The consistency proof from the tree of ``old`` leaves to the tree of ``new``."""
    return range_hashes(consistency_ranges(old, new), source)


# -- verification (RFC 9162 2.1.3.2 and 2.1.4.2) ---------------------------------------------


def verify_inclusion(
    leaf: bytes, index: int, size: int, path: Sequence[bytes], root_hash: bytes
) -> None:
    """Raise ``MerkleError`` unless ``path`` proves leaf hash ``leaf`` at ``index`` in the
    tree of ``size`` leaves whose root is ``root_hash`` (RFC 9162 2.1.3.2)."""
    leaf, root_hash = _hash(leaf, "leaf hash"), _hash(root_hash, "root hash")
    index, size = _size(index, "leaf index"), _size(size, "tree size")
    proof = _path(path, "inclusion path")
    if index >= size:  # step 1
        raise MerkleError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf  # steps 2, 3
    for p in proof:  # step 4
        if sn == 0:  # 4a
            raise MerkleError("inclusion path is longer than the tree is deep")
        if fn & 1 or fn == sn:  # 4b
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1  # 4c
    if sn != 0:  # step 5
        raise MerkleError("inclusion path is shorter than the tree is deep")
    if r != root_hash:
        raise MerkleError("inclusion path does not lead to the root hash")


def verify_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, path: Sequence[bytes]
) -> None:
    """Raise ``MerkleError`` unless ``path`` proves that the tree of ``new`` leaves with root
    ``new_root`` extends the tree of ``old`` leaves with root ``old_root`` (RFC 9162 2.1.4.2).

    The RFC defines proofs for ``0 < old < new``; the two edge cases are settled as its
    definitions imply: equal sizes need equal roots and an empty path, and the empty tree
    (root ``SHA-256()``) is extended by every tree, with an empty path."""
    old_root, new_root = _hash(old_root, "old root hash"), _hash(new_root, "new root hash")
    old, new = _size(old, "old tree size"), _size(new, "new tree size")
    proof = _path(path, "consistency path")
    if old > new:
        raise MerkleError(f"old tree size {old} is larger than the new tree size {new}")
    if old == new or old == 0:
        if proof:
            raise MerkleError(f"a consistency proof from size {old} to {new} must be empty")
        if old == 0 and old_root != EMPTY_ROOT:
            raise MerkleError("the old root is not the empty tree's root")
        if old == new and old_root != new_root:
            raise MerkleError(f"two different root hashes for the same tree size {old}")
        return
    if not proof:  # step 1
        raise MerkleError("consistency path is empty")
    if old & (old - 1) == 0:  # step 2
        proof = [old_root, *proof]
    fn, sn = old - 1, new - 1  # step 3
    while fn & 1:  # step 4
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]  # step 5
    for c in proof[1:]:  # step 6
        if sn == 0:  # 6a
            raise MerkleError("consistency path is longer than the tree is deep")
        if fn & 1 or fn == sn:  # 6b
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1  # 6c
    if sn != 0:  # step 7
        raise MerkleError("consistency path is shorter than the tree is deep")
    if fr != old_root:
        raise MerkleError(f"the proof does not lead to the old root (size {old})")
    if sr != new_root:
        raise MerkleError(f"the proof does not lead to the new root (size {new})")


# -- building trees ----------------------------------------------------------------------------


class CompactRange:
    """The perfect subtrees covering ``[0, size)`` (at most 64 hashes): appends leaves, yields
    every perfect subtree they complete, and gives the root; memory stays ``O(log n)``."""

    def __init__(self, size: int = 0, frontier: Sequence[bytes] = ()) -> None:
        """Resume at ``size`` from the hashes of ``subtrees(0, size)``, in order."""
        size = _size(size, "tree size")
        keys = subtrees(0, size)
        if len(frontier) != len(keys):
            raise MerkleError(f"a tree of size {size} has {len(keys)} frontier hashes")
        self.size = size
        # one hash per set bit of ``size``, largest subtree first
        self._stack = [_hash(h, "frontier hash") for h in frontier]

    def append(self, leaf: bytes, completed: dict[Node, bytes] | None = None) -> None:
        """Add one leaf hash; each perfect subtree it completes goes into ``completed``."""
        stack, old = self._stack, self.size
        self.size = new = old + 1
        if completed is not None:
            completed[(0, old)] = leaf
        level, digest = 0, leaf
        while old & 1:  # the old size's trailing ones are the subtrees this leaf completes
            digest = _sha256(b"\x01" + stack.pop() + digest).digest()
            level += 1
            old >>= 1
            if completed is not None:
                completed[(level, (new >> level) - 1)] = digest
        stack.append(digest)

    def extend(self, leaves: Iterable[bytes], stops: Container[int] = ()) -> dict[int, bytes]:
        """Add leaf hashes (the verifier's hot loop); the root at each size in ``stops``."""
        stack, size, sha, roots = self._stack, self.size, _sha256, {}
        for leaf in leaves:
            n, digest = size, leaf
            while n & 1:
                digest = sha(b"\x01" + stack.pop() + digest).digest()
                n >>= 1
            stack.append(digest)
            size += 1
            if size in stops:
                self.size = size
                roots[size] = self.root()
        self.size = size
        return roots

    def root(self) -> bytes:
        if not self._stack:
            return EMPTY_ROOT
        digest = self._stack[-1]
        for left in reversed(self._stack[:-1]):
            digest = node_hash(left, digest)
        return digest


class MerkleTree:
    """An in-memory tree of leaf hashes keeping every perfect subtree (a ``NodeSource``)."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._nodes: dict[Node, bytes] = {}
        self._range = CompactRange()
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return self._range.size

    def append(self, leaf: bytes) -> None:
        self._range.append(_hash(leaf, "leaf hash"), self._nodes)

    def nodes(self, keys: Iterable[Node]) -> Mapping[Node, bytes]:
        return {key: self._nodes[key] for key in keys}

    def root(self, size: int | None = None) -> bytes:
        return self._range.root() if size is None else root(self._within(size), self)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, self._within(size), self)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        return consistency_proof(old, self._within(new), self)

    def _within(self, size: int | None) -> int:
        if size is None:
            return self.size
        if _size(size, "tree size") > self.size:
            raise MerkleError(f"tree size {size} is beyond this tree's {self.size} leaves")
        return size
