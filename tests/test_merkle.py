"""``fedgate.merkle`` against RFC 9162 2.1: hand-computed trees of 1..8 leaves, the RFC's own
recursive definitions, and hypothesis: proofs round-trip, every mutation is refused, malformed
input raises ``MerkleError`` only."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.errors import VerificationError
from fedgate.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleError,
    MerkleTree,
    leaf_hash,
    node_hash,
    subtrees,
    verify_consistency,
    verify_inclusion,
)

DATA = [f"d{i}".encode() for i in range(8)]
L = [hashlib.sha256(b"\x00" + d).digest() for d in DATA]  # leaf hashes, by hand


def N(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


# The RFC 6962 / 9162 example tree of seven leaves (a..f leaves, g..l interior nodes).
a, b, c, d, e, f, j = L[0], L[1], L[2], L[3], L[4], L[5], L[6]
g, h, i = N(a, b), N(c, d), N(e, f)
k, l = N(g, h), N(i, j)  # noqa: E741 - the RFC's name

ROOTS = {  # MTH(D[0:n]) for n = 1..8, written out
    1: a,
    2: N(a, b),
    3: N(N(a, b), c),
    4: N(N(a, b), N(c, d)),
    5: N(N(N(a, b), N(c, d)), e),
    6: N(N(N(a, b), N(c, d)), N(e, f)),
    7: N(N(N(a, b), N(c, d)), N(N(e, f), j)),
    8: N(N(N(a, b), N(c, d)), N(N(e, f), N(j, L[7]))),
}


# -- RFC 9162 2.1.1, 2.1.3.1, 2.1.4.1, literally, over lists of data ---------------------------


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(ds: list[bytes]) -> bytes:
    if not ds:
        return hashlib.sha256(b"").digest()
    if len(ds) == 1:
        return hashlib.sha256(b"\x00" + ds[0]).digest()
    k = _k(len(ds))
    return N(mth(ds[:k]), mth(ds[k:]))


def path(m: int, ds: list[bytes]) -> list[bytes]:
    if len(ds) == 1:
        return []
    k = _k(len(ds))
    if m < k:
        return [*path(m, ds[:k]), mth(ds[k:])]
    return [*path(m - k, ds[k:]), mth(ds[:k])]


def subproof(m: int, ds: list[bytes], whole: bool) -> list[bytes]:
    n = len(ds)
    if m == n:
        return [] if whole else [mth(ds)]
    k = _k(n)
    if m <= k:
        return [*subproof(m, ds[:k], whole), mth(ds[k:])]
    return [*subproof(m - k, ds[k:], False), mth(ds[:k])]


def _data(n: int) -> list[bytes]:
    return [f"leaf {x}".encode() for x in range(n)]


# -- hand-computed cases -----------------------------------------------------------------------


def test_hashing_is_rfc_9162() -> None:
    assert leaf_hash(b"d0") == a
    assert node_hash(a, b) == g
    assert (
        bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        == EMPTY_ROOT
    )
    assert MerkleTree().root() == EMPTY_ROOT


@pytest.mark.parametrize("n", range(1, 9))
def test_roots_of_one_to_eight_leaves(n: int) -> None:
    tree = MerkleTree(L[:n])
    assert tree.root() == ROOTS[n] == mth(DATA[:n])
    big = MerkleTree(L)
    assert big.root(n) == ROOTS[n]  # an older size of a larger tree


def test_rfc_example_audit_paths() -> None:
    tree = MerkleTree(L[:7])
    assert tree.inclusion_proof(0) == [b, h, l]
    assert tree.inclusion_proof(3) == [c, g, l]
    assert tree.inclusion_proof(4) == [f, j, k]
    assert tree.inclusion_proof(6) == [i, k]
    assert MerkleTree(L[:1]).inclusion_proof(0) == []
    assert MerkleTree(L[:8]).inclusion_proof(7) == [L[6], i, k]
    assert MerkleTree(L[:5]).inclusion_proof(4) == [k]
    assert MerkleTree(L[:3]).inclusion_proof(2) == [g]
    for leaf, index, proof in ((a, 0, [b, h, l]), (d, 3, [c, g, l]), (e, 4, [f, j, k]),
                               (j, 6, [i, k])):  # fmt: skip
        verify_inclusion(leaf, index, 7, proof, ROOTS[7])


def test_rfc_example_consistency_proofs() -> None:
    tree = MerkleTree(L[:7])
    assert tree.consistency_proof(3) == [c, d, g, l]
    assert tree.consistency_proof(4) == [l]
    assert tree.consistency_proof(6) == [i, j, k]
    assert tree.consistency_proof(1) == [b, h, l]
    assert tree.consistency_proof(2) == [h, l]
    assert MerkleTree(L[:8]).consistency_proof(5, 8) == [e, f, N(j, L[7]), k]
    assert tree.consistency_proof(7) == [] and tree.consistency_proof(0) == []
    verify_consistency(3, 7, ROOTS[3], ROOTS[7], [c, d, g, l])
    verify_consistency(4, 7, ROOTS[4], ROOTS[7], [l])
    verify_consistency(6, 7, ROOTS[6], ROOTS[7], [i, j, k])
    verify_consistency(7, 7, ROOTS[7], ROOTS[7], [])
    verify_consistency(0, 7, EMPTY_ROOT, ROOTS[7], [])


@pytest.mark.parametrize("n", range(1, 17))
def test_every_proof_matches_the_rfc_definitions(n: int) -> None:
    ds = _data(n)
    tree = MerkleTree(leaf_hash(x) for x in ds)
    assert tree.root() == mth(ds)
    for m in range(n):
        assert tree.inclusion_proof(m) == path(m, ds)
        verify_inclusion(leaf_hash(ds[m]), m, n, path(m, ds), mth(ds))
    for m in range(1, n):
        assert tree.consistency_proof(m) == subproof(m, ds, True)
        verify_consistency(m, n, mth(ds[:m]), mth(ds), subproof(m, ds, True))


def test_subtrees_tile_ranges() -> None:
    assert subtrees(0, 7) == [(2, 0), (1, 2), (0, 6)]
    assert subtrees(4, 7) == [(1, 2), (0, 6)]
    assert subtrees(8, 13) == [(2, 2), (0, 12)]
    assert subtrees(0, 0) == []


def test_compact_range_resumes_from_its_frontier() -> None:
    tree = MerkleTree(L[:5])
    resumed = CompactRange(5, [tree.nodes([key])[key] for key in subtrees(0, 5)])
    completed: dict = {}
    for leaf in L[5:]:
        resumed.append(leaf, completed)
    assert resumed.root() == ROOTS[8]
    assert completed == {(0, 5): f, (1, 2): i, (0, 6): j, (0, 7): L[7], (1, 3): N(j, L[7]),
                         (2, 1): N(i, N(j, L[7])), (3, 0): ROOTS[8]}  # fmt: skip
    with pytest.raises(MerkleError, match="frontier"):
        CompactRange(5, [a])
    streamed = CompactRange(2, [N(a, b)])
    assert streamed.extend(L[2:], {3, 6, 8, 9}) == {3: ROOTS[3], 6: ROOTS[6], 8: ROOTS[8]}
    assert streamed.size == 8 and streamed.root() == ROOTS[8]


# -- properties ----------------------------------------------------------------------------------

sizes = st.integers(min_value=1, max_value=300)


def _tree(n: int) -> MerkleTree:
    return MerkleTree(leaf_hash(n.to_bytes(4, "big") + x.to_bytes(4, "big")) for x in range(n))


@settings(max_examples=80, deadline=None)
@given(st.integers(min_value=0, max_value=70), st.data())
def test_extend_in_any_batches_gives_every_stop_root(n: int, data: st.DataObject) -> None:
    tree = _tree(n)
    leaves = tree.nodes((0, k) for k in range(n))
    cuts = sorted(data.draw(st.sets(st.integers(0, n), max_size=6)) | {0, n})
    stops = data.draw(st.sets(st.integers(1, n + 2), max_size=10)) if n else set()
    streamed, roots = CompactRange(), {}
    for start, end in itertools.pairwise(cuts):
        roots.update(streamed.extend([leaves[(0, k)] for k in range(start, end)], stops))
        assert streamed.size == end
    assert roots == {k: tree.root(k) for k in stops if k <= n}
    assert streamed.root() == tree.root()


@settings(max_examples=60, deadline=None)
@given(sizes, st.data())
def test_inclusion_round_trip(n: int, data: st.DataObject) -> None:
    tree = _tree(n)
    m = data.draw(st.integers(0, n - 1))
    size = data.draw(st.integers(m + 1, n))
    leaf = tree.nodes([(0, m)])[(0, m)]
    verify_inclusion(leaf, m, size, tree.inclusion_proof(m, size), tree.root(size))


@settings(max_examples=60, deadline=None)
@given(sizes, st.data())
def test_consistency_round_trip(n: int, data: st.DataObject) -> None:
    tree = _tree(n)
    new = data.draw(st.integers(0, n))
    old = data.draw(st.integers(0, new))
    verify_consistency(old, new, tree.root(old), tree.root(new), tree.consistency_proof(old, new))


def _flip(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[bit // 8 % len(out)] ^= 1 << (bit % 8)
    return bytes(out)


def _root_for(tree: MerkleTree, size: int, bit: int) -> bytes:
    """The root a checkpoint of ``size`` would carry (a made-up one beyond the tree)."""
    return tree.root(size) if size <= tree.size else _flip(tree.root(), bit)


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 300), st.data())
def test_every_inclusion_mutation_is_refused(n: int, data: st.DataObject) -> None:
    tree = _tree(n)
    m = data.draw(st.integers(0, n - 1))
    leaf, proof, top = tree.nodes([(0, m)])[(0, m)], tree.inclusion_proof(m), tree.root()
    bit = data.draw(st.integers(0, 255))
    what = data.draw(st.sampled_from(["leaf", "root", "element", "index", "size", "drop", "add"]))
    args = [leaf, m, n, list(proof), top]
    if what == "leaf":
        args[0] = _flip(leaf, bit)
    elif what == "root":
        args[4] = _flip(top, bit)
    elif what == "element" and proof:
        pos = data.draw(st.integers(0, len(proof) - 1))
        args[3][pos] = _flip(proof[pos], bit)
    elif what == "index":
        args[1] = data.draw(st.integers(0, 2 * n).filter(lambda x: x != m))
    elif what == "size":  # a checkpoint of another size: its size and root together
        args[2] = data.draw(st.integers(0, 2 * n).filter(lambda x: x != n))
        args[4] = _root_for(tree, args[2], bit)
    elif what == "drop" and proof:
        args[3].pop(data.draw(st.integers(0, len(proof) - 1)))
    else:
        args[3].insert(data.draw(st.integers(0, len(proof))), _flip(top, bit))
    with pytest.raises(MerkleError):
        verify_inclusion(*args)


def test_the_path_alone_does_not_bind_the_size() -> None:
    """RFC 9162: the size is bound by the signed tree head, not by the path; a checkpoint
    carries both, so a proof is checked against the root *of its size* (checkpoint tests)."""
    tree = MerkleTree(L)
    verify_inclusion(a, 0, 8, tree.inclusion_proof(0, 7), ROOTS[7])  # size 8 with size 7's root
    with pytest.raises(MerkleError):
        verify_inclusion(a, 0, 8, tree.inclusion_proof(0, 7), ROOTS[8])


@settings(max_examples=80, deadline=None)
@given(st.integers(2, 300), st.data())
def test_every_consistency_mutation_is_refused(n: int, data: st.DataObject) -> None:
    tree = _tree(n)
    old = data.draw(st.integers(1, n - 1))
    proof = tree.consistency_proof(old)
    args = [old, n, tree.root(old), tree.root(), list(proof)]
    bit = data.draw(st.integers(0, 255))
    what = data.draw(st.sampled_from(["old", "new", "old_root", "new_root", "element", "drop"]))
    if what == "old":  # another old checkpoint: its size and root together
        args[0] = data.draw(st.integers(1, 2 * n).filter(lambda x: x != old))
        args[2] = _root_for(tree, args[0], bit)
    elif what == "new":
        args[1] = data.draw(st.integers(1, 2 * n).filter(lambda x: x != n))
        args[3] = _root_for(tree, args[1], bit)
    elif what == "old_root":
        args[2] = _flip(args[2], bit)
    elif what == "new_root":
        args[3] = _flip(args[3], bit)
    elif what == "element":
        pos = data.draw(st.integers(0, len(proof) - 1))
        args[4][pos] = _flip(proof[pos], bit)
    else:
        args[4].pop(data.draw(st.integers(0, len(proof) - 1)))
    with pytest.raises(MerkleError):
        verify_consistency(*args)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.data())
def test_other_trees_are_refused(n: int, data: st.DataObject) -> None:
    """A leaf rewritten anywhere below the old size breaks consistency with the old root."""
    tree = _tree(n + 1)
    old = data.draw(st.integers(1, n))
    leaves = [tree.nodes([(0, x)])[(0, x)] for x in range(n + 1)]
    victim = data.draw(st.integers(0, old - 1))
    leaves[victim] = leaf_hash(b"rewritten")
    rewritten = MerkleTree(leaves)
    with pytest.raises(MerkleError, match="does not lead to the"):
        verify_consistency(old, n + 1, tree.root(old), rewritten.root(),
                           rewritten.consistency_proof(old))  # fmt: skip


junk = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=5),
    st.binary(max_size=40), st.lists(st.binary(max_size=40), max_size=3),
    st.lists(st.integers(), max_size=3),
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(junk, junk, junk, junk, junk)
def test_malformed_input_raises_merkle_error_only(v, w, x, y, z) -> None:
    for call in (
        lambda: verify_inclusion(v, w, x, y, z),
        lambda: verify_consistency(v, w, x, y, z),
        lambda: verify_inclusion(L[0], w, x, y, ROOTS[8]),
        lambda: verify_consistency(w, x, ROOTS[3], ROOTS[7], y),
    ):
        try:
            call()
        except MerkleError as exc:
            assert isinstance(exc, VerificationError) and str(exc)


def test_malformed_input_messages() -> None:
    with pytest.raises(MerkleError, match="leaf index 7 is not in a tree of size 7"):
        verify_inclusion(a, 7, 7, [], ROOTS[7])
    with pytest.raises(MerkleError, match=r"inclusion path\[1\] must be a 32-byte"):
        verify_inclusion(a, 0, 7, [b, b"short", l], ROOTS[7])
    with pytest.raises(MerkleError, match="tree size must be an integer"):
        verify_inclusion(a, 0, "7", [b, h, l], ROOTS[7])
    with pytest.raises(MerkleError, match="larger than the new tree size"):
        verify_consistency(7, 3, ROOTS[7], ROOTS[3], [l])
    with pytest.raises(MerkleError, match="consistency path is empty"):
        verify_consistency(3, 7, ROOTS[3], ROOTS[7], [])
    with pytest.raises(MerkleError, match="same tree size"):
        verify_consistency(7, 7, ROOTS[6], ROOTS[7], [])
    with pytest.raises(MerkleError, match="beyond this tree"):
        MerkleTree(L).root(9)
