"""``fedgate.checkpoint`` (C2SP tlog-checkpoint in a C2SP signed note, Ed25519) and
``fedgate.tlog_proofs`` (proof files): the formats as the specs write them, and hypothesis:
any change to a note or proof file is refused with the module's own error."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.checkpoint import (
    Checkpoint,
    CheckpointError,
    key_id,
    open_checkpoint,
    parse_note,
    parse_verifier_key,
    sign_checkpoint,
    sign_note,
    verifier_key,
    verify_note,
)
from fedgate.crypto import canonical_json, generate_key, public_bytes
from fedgate.errors import VerificationError
from fedgate.merkle import MerkleTree, leaf_hash
from fedgate.tlog_proofs import (
    ConsistencyProof,
    InclusionProof,
    ProofError,
    audit_origin,
    check,
    dumps,
)

KEY = generate_key()
OTHER = generate_key()
CHAIN = "c" * 32
ORIGIN = audit_origin(CHAIN)


def test_key_id_is_the_spec_hash() -> None:
    raw = public_bytes(KEY)
    assert (
        key_id("example.com/log", KEY)
        == hashlib.sha256(b"example.com/log\n\x01" + raw).digest()[:4]
    )
    name, pub = parse_verifier_key(verifier_key("example.com/log", KEY))
    assert name == "example.com/log" and public_bytes(pub) == raw
    with pytest.raises(CheckpointError, match="ID does not match"):
        parse_verifier_key(verifier_key("a", KEY).replace("a+", "b+", 1))


def test_checkpoint_note_layout() -> None:
    root = bytes(range(32))
    note = sign_checkpoint(Checkpoint(ORIGIN, 42, root), KEY)
    text, _, sig_line = note.partition("\n\n")
    assert text.split("\n") == [ORIGIN, "42", base64.b64encode(root).decode()]
    assert sig_line.startswith(f"\u2014 {ORIGIN} ") and sig_line.endswith("\n")
    blob = base64.b64decode(sig_line.split(" ")[2])
    assert blob[:4] == key_id(ORIGIN, KEY) and len(blob) == 68
    KEY.public_key().verify(blob[4:], (text + "\n").encode())  # over the text, final newline
    assert open_checkpoint(note, KEY.public_key(), ORIGIN) == Checkpoint(ORIGIN, 42, root)
    extended = Checkpoint(ORIGIN, 0, root, ("ext one",))
    assert open_checkpoint(sign_checkpoint(extended, KEY), KEY.public_key()) == extended


def test_notes_with_other_signatures() -> None:
    text = Checkpoint(ORIGIN, 7, bytes(32)).text()
    mine = sign_note(text, ORIGIN, KEY)
    witness = sign_note(text, "witness.example/w1", OTHER)
    both = parse_note(mine.encode() + witness.encode().split("\n\n")[1])
    assert len(both.signatures) == 2
    verify_note(both, ORIGIN, KEY.public_key())  # an unknown key's signature is ignored
    verify_note(both, "witness.example/w1", OTHER.public_key())
    with pytest.raises(CheckpointError, match="no signature by key"):
        open_checkpoint(witness.encode(), KEY.public_key())
    with pytest.raises(CheckpointError, match="no signature by key"):
        open_checkpoint(mine.encode(), OTHER.public_key())  # the right name, another key


@pytest.mark.parametrize(
    ("note", "words"),
    [
        (b"\xff\xfe", "UTF-8"),
        ("origin\n1\nAAAA\n", "blank line"),
        ("origin\n1\n\n\u2014 origin AAAAAAA=\n", "three non-empty lines"),
        ("a\x01\n1\nx\n\n\u2014 a AAAA\n", "control character"),
        ("a\n01\nx\n\n\u2014 a AAAAAAA=\n", "tree size"),
        ("a\n1\nAAAA\n\n\u2014 a AAAAAAA=\n", "root hash has 3 bytes"),
        ("a\n1\nAAAA\n\n- a AAAAAAA=\n", "not a signature line"),
        ("a\n1\nAAAA\n\n\u2014 a+b AAAAAAA=\n", "key name"),
        ("a\n1\nAAAA\n\n\u2014 a AAAAAAB=\n", "canonical base64"),
        ("a\n1\nAAAA\n\n\u2014 a AA\n", "not base64"),
        ("x" * 70000, "at most"),
    ],
)
def test_malformed_notes_are_named(note, words: str) -> None:
    with pytest.raises(CheckpointError, match=words):
        open_checkpoint(note, KEY.public_key())


def _mutations(data: bytes):
    return st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255))


NOTE = sign_checkpoint(Checkpoint(ORIGIN, 1234, hashlib.sha256(b"r").digest()), KEY).encode()


@settings(max_examples=200, deadline=None)
@given(_mutations(NOTE))
def test_any_change_to_a_signed_checkpoint_is_refused(change) -> None:
    pos, delta = change
    data = bytearray(NOTE)
    data[pos] = (data[pos] + delta) % 256
    with pytest.raises(CheckpointError):
        open_checkpoint(bytes(data), KEY.public_key())


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(NOTE)), st.binary(min_size=1, max_size=4), st.booleans())
def test_insertions_and_deletions_are_refused(pos: int, chunk: bytes, insert: bool) -> None:
    data = NOTE[:pos] + chunk + NOTE[pos:] if insert else NOTE[:pos] + NOTE[pos + len(chunk) :]
    if data == NOTE:
        return
    with pytest.raises(CheckpointError):
        open_checkpoint(data, KEY.public_key())


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_garbage_notes_raise_checkpoint_error_only(data) -> None:
    try:
        open_checkpoint(data, KEY.public_key())
    except CheckpointError as exc:
        assert isinstance(exc, VerificationError) and str(exc)


# -- proof files ----------------------------------------------------------------------------------


def _event(seq: int) -> str:
    event = {"chain": CHAIN, "kind": "x.y", "payload": {"i": seq}, "prev": "0" * 64,
             "seq": seq, "ts": "2026-01-01T00:00:00.000000Z"}  # fmt: skip
    return canonical_json(event).decode()


EVENTS = [_event(s) for s in range(1, 12)]
TREE = MerkleTree(leaf_hash(e.encode()) for e in EVENTS)


def _note(size: int) -> str:
    return sign_checkpoint(Checkpoint(ORIGIN, size, TREE.root(size)), KEY)


def _inclusion(seq: int, size: int) -> str:
    proof = InclusionProof(_note(size), seq - 1, EVENTS[seq - 1],
                           tuple(TREE.inclusion_proof(seq - 1, size)))  # fmt: skip
    return dumps(proof)


def _consistency(old: int, new: int) -> str:
    return dumps(ConsistencyProof(_note(old), _note(new), tuple(TREE.consistency_proof(old, new))))


def test_proof_files_round_trip() -> None:
    result = check(_inclusion(5, 11), KEY.public_key())
    assert result.seq == 5 and result.checkpoint.size == 11 and result.event["payload"] == {"i": 5}
    result = check(_consistency(3, 11), KEY.public_key(), ORIGIN)
    assert (result.old.size, result.new.size) == (3, 11)
    with pytest.raises(ProofError, match="no signature by key"):
        check(_inclusion(5, 11), OTHER.public_key())
    with pytest.raises(ProofError, match="expected"):
        check(_inclusion(5, 11), KEY.public_key(), audit_origin("d" * 32))


def test_a_rewritten_log_fails_consistency() -> None:
    rewritten = [*EVENTS[:3], _event(99), *EVENTS[4:]]
    tree = MerkleTree(leaf_hash(e.encode()) for e in rewritten)
    new = sign_checkpoint(Checkpoint(ORIGIN, 11, tree.root()), KEY)
    forged = dumps(ConsistencyProof(_note(6), new, tuple(tree.consistency_proof(6))))
    with pytest.raises(ProofError, match="does not extend the checkpoint at size 6"):
        check(forged, KEY.public_key())
    swapped = dumps(ConsistencyProof(_note(9), _note(4), ()))
    with pytest.raises(ProofError, match="rolled back"):
        check(swapped, KEY.public_key())


def test_an_inclusion_proof_binds_the_event_to_its_seq() -> None:
    data = json.loads(_inclusion(5, 11))
    data["leaf"] = EVENTS[5]  # event 6 claimed at leaf 4
    data["leaf_hash"] = leaf_hash(EVENTS[5].encode()).hex()
    with pytest.raises(ProofError, match="the event is seq 6, the proof is for leaf 4"):
        check(json.dumps(data), KEY.public_key())


@pytest.mark.parametrize("which", ["inclusion", "consistency"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_change_to_a_proof_file_is_refused(which: str, data: st.DataObject) -> None:
    original = _inclusion(4, 9) if which == "inclusion" else _consistency(3, 10)
    raw = bytearray(original.encode())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
    try:
        if json.loads(bytes(raw)) == json.loads(original):
            return  # the same JSON (whitespace changed): the same proof
    except (ValueError, UnicodeDecodeError):
        pass
    with pytest.raises(ProofError):
        check(bytes(raw), KEY.public_key())


@settings(max_examples=80, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    ),
    st.sampled_from(["fedgate.audit.inclusion-proof.v1", "fedgate.audit.consistency-proof.v1"]),
)
def test_malformed_proof_files_raise_proof_error_only(body, fmt: str) -> None:
    for value in (body, {"format": fmt, **body} if isinstance(body, dict) else body):
        try:
            check(json.dumps(value), KEY.public_key())
        except ProofError as exc:
            assert str(exc)
