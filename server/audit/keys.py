"""Where audit signing keys live, by convention.

A region server's key pair is ``<home>/keys/region-<name>.key`` (PEM, mode 0600) and
``<home>/keys/region-<name>.pub`` (hex of the raw Ed25519 key); the coordinator's is
``<home>/keys/coordinator.key`` / ``.pub``. Auditors need only the ``.pub`` files.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.crypto import (
    fingerprint,
    generate_key,
    load_private_key,
    read_public_key,
    save_private_key,
    save_public_key,
)


def keys_dir(home: str | Path) -> Path:
    return Path(home) / "keys"


def region_key_path(home: str | Path, region: str) -> Path:
    return keys_dir(home) / f"region-{region}.key"


def region_pub_path(home: str | Path, region: str) -> Path:
    return keys_dir(home) / f"region-{region}.pub"


def coordinator_key_path(home: str | Path) -> Path:
    return keys_dir(home) / "coordinator.key"


def coordinator_pub_path(home: str | Path) -> Path:
    return keys_dir(home) / "coordinator.pub"


def ensure_key(key_path: Path, pub_path: Path) -> Ed25519PrivateKey:
    """Load the private key at ``key_path``, creating the pair on first use."""
    if key_path.exists():
        key = load_private_key(key_path)
    else:
        key = generate_key()
        save_private_key(key, key_path)
    if not pub_path.exists():
        save_public_key(key, pub_path)
    return key


def ensure_region_key(home: str | Path, region: str) -> Ed25519PrivateKey:
    return ensure_key(region_key_path(home, region), region_pub_path(home, region))


def load_pubkeys(paths: Iterable[str | Path]) -> dict[str, Ed25519PublicKey]:
    """Public keys by fingerprint from ``.pub`` files and directories of them."""
    keys: dict[str, Ed25519PublicKey] = {}
    for item in paths:
        path = Path(item)
        files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
        for file in files:
            pub = read_public_key(file)
            keys[fingerprint(pub)] = pub
    return keys
