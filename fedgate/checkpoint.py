"""C2SP ``tlog-checkpoint`` text in a C2SP ``signed-note``, signed with Ed25519.

A checkpoint's note text is three or more non-empty lines: the log's origin, its tree size
(decimal, no leading zeros) and the base64 RFC 9162 root hash, then optional extension lines.
The signed note appends a blank line and one line per signature,
``— <key name> base64(key ID || signature)``; for Ed25519 the key ID is the first four bytes of
``SHA-256(key name || 0x0A || 0x01 || public key)`` and the signature covers the note text
(final newline included). fedgate's logs name their key after the origin, as the checkpoint
spec recommends, so a verifier needs only the public key: a signature line is the key's when
its name is the checkpoint's origin and its ID matches. Parsing is strict (canonical base64,
UTF-8 without control characters, bounded size), so any change to a signed note's bytes
either fails to parse or fails its signature.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.crypto import SignatureError, load_public_key, public_bytes, sign, verify
from fedgate.errors import VerificationError

ED25519 = b"\x01"  # signed-note signature type of Ed25519
EM_DASH = "\u2014"
MAX_NOTE = 64 * 1024
MAX_SIGNATURES = 64
_SIZE_RE = re.compile(r"(0|[1-9][0-9]{0,18})\Z")
_NAME_RE = re.compile(r"[^\s+]+\Z")


class CheckpointError(VerificationError, ValueError):
    """A signed note or checkpoint is malformed, or its signature does not verify."""


def _b64(text: str, what: str) -> bytes:
    """Strict standard base64 (RFC 4648 section 4): canonical, padded, nothing else."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise CheckpointError(f"{what} is not base64") from None
    if base64.b64encode(raw).decode() != text:
        raise CheckpointError(f"{what} is not canonical base64")
    return raw


def _name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise CheckpointError(f"key name {name!r} must be non-empty, without spaces or '+'")
    return name


def key_id(name: str, public_key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The signed-note key ID of an Ed25519 key named ``name``."""
    material = _name(name).encode() + b"\n" + ED25519 + public_bytes(public_key)
    return hashlib.sha256(material).digest()[:4]


def verifier_key(name: str, public_key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The note verifier key string ``<name>+<hex key ID>+<base64(0x01 || public key)>``."""
    raw = base64.b64encode(ED25519 + public_bytes(public_key)).decode()
    return f"{_name(name)}+{key_id(name, public_key).hex()}+{raw}"


def parse_verifier_key(text: str) -> tuple[str, Ed25519PublicKey]:
    """The name and key of a verifier key string; its ID must match."""
    parts = text.strip().split("+", 2)  # the name and the hex ID hold no "+"; base64 may
    if len(parts) != 3:
        raise CheckpointError("a verifier key is <name>+<hex key ID>+<base64 key>")
    name, kid, raw = parts
    key_bytes = _b64(raw, "the verifier key")
    if key_bytes[:1] != ED25519 or len(key_bytes) != 33:
        raise CheckpointError("the verifier key is not an Ed25519 note key")
    try:
        pub = load_public_key(key_bytes[1:])
    except (SignatureError, ValueError):
        raise CheckpointError("the verifier key is not a valid Ed25519 public key") from None
    if kid != key_id(name, pub).hex():
        raise CheckpointError("the verifier key's ID does not match its name and key")
    return name, pub


# -- signed notes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes  # 4 bytes
    signature: bytes


@dataclass(frozen=True)
class SignedNote:
    """A note text (ending in a newline) and its signature lines."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def encode(self) -> str:
        lines = "".join(
            f"{EM_DASH} {s.name} {base64.b64encode(s.key_id + s.signature).decode()}\n"
            for s in self.signatures
        )
        return f"{self.text}\n{lines}"


_CONTROL = re.compile("[\x00-\x09\x0b-\x1f]")  # below " ", except the newline


def _check_text(text: str, what: str) -> None:
    if _CONTROL.search(text):
        raise CheckpointError(f"{what} contains a control character")


def sign_note(text: str, name: str, key: Ed25519PrivateKey) -> SignedNote:
    """Sign note ``text`` with ``key`` under key name ``name``."""
    if not text.endswith("\n"):
        raise CheckpointError("a note text ends with a newline")
    _check_text(text, "the note text")
    signature = sign(key, text.encode("utf-8"))
    return SignedNote(text, (NoteSignature(name, key_id(name, key), signature),))


def parse_note(data: str | bytes) -> SignedNote:
    """Parse a signed note strictly (not verifying it)."""
    if isinstance(data, bytes):
        if len(data) > MAX_NOTE:
            raise CheckpointError(f"a signed note is at most {MAX_NOTE} bytes")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise CheckpointError("a signed note is UTF-8 text") from None
    if not isinstance(data, str):
        raise CheckpointError(f"a signed note is text, got {type(data).__name__}")
    if len(data.encode("utf-8", "surrogatepass")) > MAX_NOTE:
        raise CheckpointError(f"a signed note is at most {MAX_NOTE} bytes")
    try:
        data.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError("a signed note is UTF-8 text") from None
    _check_text(data, "the signed note")
    split = data.rfind("\n\n")
    if split < 0 or not data.endswith("\n"):
        raise CheckpointError("a signed note is its text, a blank line, then signature lines")
    text, block = data[: split + 1], data[split + 2 :]
    signatures = []
    for line in block[:-1].split("\n"):
        if not line.startswith(f"{EM_DASH} "):
            raise CheckpointError(f"not a signature line: {line[:40]!r}")
        fields = line[2:].split(" ")
        if len(fields) != 2:
            raise CheckpointError(f"a signature line is '{EM_DASH} <key name> <base64>'")
        name, blob = _name(fields[0]), _b64(fields[1], f"the signature of {fields[0]!r}")
        if len(blob) < 5:
            raise CheckpointError(f"the signature of {name!r} is too short")
        signatures.append(NoteSignature(name, blob[:4], blob[4:]))
    if len(signatures) > MAX_SIGNATURES:
        raise CheckpointError(f"more than {MAX_SIGNATURES} signatures on one note")
    return SignedNote(text, tuple(signatures))


def verify_note(note: SignedNote, name: str, public_key: Ed25519PublicKey) -> None:
    """Raise ``CheckpointError`` unless ``note`` has a valid signature by the key named
    ``name``; other keys' signatures are ignored, as the spec requires."""
    kid = key_id(name, public_key)
    known = [s for s in note.signatures if s.name == name and s.key_id == kid]
    if not known:
        raise CheckpointError(f"the note has no signature by key {name!r} ({kid.hex()})")
    for s in known:  # a known key's failing signature rejects the whole note
        try:
            verify(public_key, s.signature, note.text.encode("utf-8"))
        except SignatureError:
            raise CheckpointError(f"the signature by key {name!r} does not verify") from None


# -- checkpoints -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: origin, size and RFC 9162 root hash (32 bytes)."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(),
                 *self.extensions]  # fmt: skip
        return "".join(f"{line}\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        if not text.endswith("\n"):
            raise CheckpointError("a checkpoint's text ends with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3 or not all(lines):
            raise CheckpointError(
                "a checkpoint is at least three non-empty lines: origin, tree size, root hash"
            )
        origin, size, root = lines[0], lines[1], lines[2]
        if not _SIZE_RE.match(size) or int(size) > 2**63 - 1:
            raise CheckpointError(f"tree size {size[:24]!r} is not a decimal number")
        digest = _b64(root, "the root hash")
        if len(digest) != 32:
            raise CheckpointError(f"the root hash has {len(digest)} bytes, not 32")
        return cls(origin, int(size), digest, tuple(lines[3:]))


def sign_checkpoint(checkpoint: Checkpoint, key: Ed25519PrivateKey) -> str:
    """The signed note of ``checkpoint``, signed under a key named after its origin."""
    text = checkpoint.text()
    if Checkpoint.parse(text) != checkpoint:
        raise CheckpointError("this checkpoint cannot be written as a checkpoint text")
    return sign_note(text, _name(checkpoint.origin), key).encode()


def open_checkpoint(
    note: str | bytes, public_key: Ed25519PublicKey, origin: str | None = None
) -> Checkpoint:
    """The checkpoint in signed note ``note`` once its origin's key signature by
    ``public_key`` verifies (and, given ``origin``, its origin is that)."""
    parsed = parse_note(note)
    checkpoint = Checkpoint.parse(parsed.text)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointError(f"checkpoint of log {checkpoint.origin!r}, expected {origin!r}")
    verify_note(parsed, _name(checkpoint.origin), public_key)
    return checkpoint
