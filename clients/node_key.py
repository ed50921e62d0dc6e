"""The SuperNode authentication key a device holds, as Flower reads it.

Flower's SuperNode authentication signs with an ECDSA key (OpenSSH format, NIST curve); the
region registers its public half (``fedgate.server.trust.node_auth``). The device side, that
loads the key and passes it to ``flower-supernode``, lives here so a device ships without the
server.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedgate.atomic_file import SECRET, write_atomic
from fedgate.crypto import sha256_hex
from fedgate.errors import UsageError

NODE_KEY_FILE = "node-auth.key"
NODE_PUB_FILE = "node-auth.pub"
_NIST_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


class NodeAuthError(UsageError, RuntimeError):
    """A node key is unusable or the SuperLink refused or could not be reached."""


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode authentication key pair on disk."""

    private_path: Path
    public_path: Path

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return load_node_public_key(self.public_path)

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 of the public key as Flower stores it (PEM SubjectPublicKeyInfo)."""
        return sha256_hex(public_key_bytes(self.public_key()))


def public_key_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    """The encoding Flower sends and stores: PEM SubjectPublicKeyInfo."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_node_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """Load a node key exactly as ``flower-supernode`` does (OpenSSH format, NIST curve)."""
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise NodeAuthError(f"node key {path} not found") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise NodeAuthError(f"{path}: not an OpenSSH private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, _NIST_CURVES):
        raise NodeAuthError(f"{path}: Flower needs an ECDSA key on a NIST curve (P-256/384/521)")
    return key


def load_node_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Load a node public key as ``flwr supernode register`` does (OpenSSH line, NIST EC)."""
    try:
        key = serialization.load_ssh_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise NodeAuthError(f"node public key {path} not found") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise NodeAuthError(f"{path}: not an OpenSSH public key line ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _NIST_CURVES):
        raise NodeAuthError(f"{path}: Flower needs an ECDSA key on a NIST curve (P-256/384/521)")
    return key


def supernode_flags(ca_cert: Path, node: NodeKey) -> list[str]:
    """``flower-supernode`` flags: verify the server against the region CA, sign as ``node``."""
    return [
        "--root-certificates", str(ca_cert),
        "--auth-supernode-private-key", str(node.private_path),
    ]  # fmt: skip


def parse_node_public_key(line: bytes | str) -> ec.EllipticCurvePublicKey:
    """A node public key from its OpenSSH line (what a device sends when it enrolls)."""
    data = line.encode() if isinstance(line, str) else line
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise NodeAuthError(f"not an OpenSSH public key line ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _NIST_CURVES):
        raise NodeAuthError("Flower needs an ECDSA node key on a NIST curve (P-256/384/521)")
    return key


def ensure_node_key(directory: Path, *, force: bool = False, comment: str = "") -> NodeKey:
    """The node key pair in ``directory``, made (ECDSA P-384) if missing or when ``force``.

    An existing pair is checked: the public file must belong to the private key.
    """
    directory = Path(directory)
    node = NodeKey(directory / NODE_KEY_FILE, directory / NODE_PUB_FILE)
    if node.private_path.exists() and not force:
        key = load_node_private_key(node.private_path)
        if not node.public_path.exists():
            write_atomic(node.public_path, _ssh_public_line(key, comment))
        elif load_node_public_key(node.public_path).public_numbers() != (
            key.public_key().public_numbers()
        ):
            raise NodeAuthError(
                f"{node.public_path} does not belong to {node.private_path} "
                "(delete the .pub file to re-derive it, or use --force for a new key)"
            )
        return node
    return write_node_key(directory, new_node_key(), comment)


def new_node_key() -> ec.EllipticCurvePrivateKey:
    """A fresh node key (ECDSA P-384), not yet written anywhere."""
    return ec.generate_private_key(ec.SECP384R1())


def node_public_line(key: ec.EllipticCurvePrivateKey, comment: str = "") -> str:
    """The OpenSSH public line of ``key`` (what a SuperLink registers)."""
    return _ssh_public_line(key, comment).decode().strip()


def write_node_key(directory: Path, key: ec.EllipticCurvePrivateKey, comment: str = "") -> NodeKey:
    """Write ``key`` as ``node-auth.key`` (0600, OpenSSH) and ``node-auth.pub``."""
    directory = Path(directory)
    node = NodeKey(directory / NODE_KEY_FILE, directory / NODE_PUB_FILE)
    directory.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    write_atomic(node.private_path, pem, mode=SECRET)
    write_atomic(node.public_path, _ssh_public_line(key, comment))
    return node


def _ssh_public_line(key: ec.EllipticCurvePrivateKey, comment: str) -> bytes:
    line = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    comment = "".join(ch for ch in comment if ch.isprintable() and not ch.isspace())
    return line + (f" {comment}".encode() if comment else b"") + b"\n"
