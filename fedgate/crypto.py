"""The one place for canonical encoding, digests and Ed25519 signatures.

Client, region server, approver, coordinator, edge node and auditor all import this module;
nothing here is written twice anywhere else in fedgate.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.atomic_file import SECRET, write_atomic
from fedgate.errors import EXIT_USAGE, VerificationError


class SignatureError(VerificationError, ValueError):
    """A signature or key did not verify or could not be parsed."""


class KeyFileError(SignatureError):
    """A key file the user pointed at cannot be read as a key: usage (exit 1), not a failed
    verification."""

    exit_code = EXIT_USAGE


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON bytes of ``obj``."""
    return rfc8785.dumps(obj)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_bytes(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of a public key (or of the public half of a private key)."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """Stable key id: hex SHA-256 of the raw public key."""
    return sha256_hex(public_bytes(key))


def load_public_key(raw: bytes) -> Ed25519PublicKey:
    if len(raw) != 32:
        raise SignatureError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)


def verify(key: Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    """Raise ``SignatureError`` unless ``signature`` is ``key``'s signature of ``message``."""
    if len(signature) != 64:
        raise SignatureError(f"an Ed25519 signature has 64 bytes, got {len(signature)}")
    try:
        key.verify(signature, message)
    except InvalidSignature:
        raise SignatureError("signature does not verify") from None


def save_private_key(key: Ed25519PrivateKey, path: Path, *, force: bool = False) -> None:
    """Write ``key`` as PEM with file mode 0600; refuse to overwrite unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists (use --force to replace it)")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(path, pem, mode=SECRET)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise
    except ValueError as exc:
        raise KeyFileError(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 key")
    return key


def save_public_key(key: Ed25519PublicKey | Ed25519PrivateKey, path: Path) -> None:
    write_atomic(path, public_bytes(key).hex() + "\n")


def read_public_key(path: Path) -> Ed25519PublicKey:
    """Read a public key written by ``save_public_key`` (hex of the raw 32 bytes)."""
    text = Path(path).read_text().strip()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"{path}: not a hex-encoded Ed25519 public key") from None
    return load_public_key(raw)
