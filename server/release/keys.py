"""Where the release keys live: the root key offline, the online keys in the coordinator's home.

* root: ``<root-dir>/root.key`` (0600). ``fedgate release init`` creates it in a directory the
  operator names, which must lie outside the home; it signs root metadata only
  (``init``, ``rotate-root``) and belongs on offline media between those steps.
* online: ``<home>/release/keys/{targets,snapshot,timestamp}.key`` (0600), used by
  ``publish``, ``hold``/``pin`` and the timestamp refresh of ``serve``.

Each key is a fedgate Ed25519 key (``fedgate.crypto``) signed through securesystemslib's
``CryptoSigner`` (``fedgate.statements.signer``), key id = fedgate fingerprint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, SSlibKey

from fedgate.crypto import generate_key, load_private_key, save_private_key
from fedgate.errors import UsageError
from fedgate.statements import signer, trusted_key

ONLINE_ROLES = ("targets", "snapshot", "timestamp")
ROOT_KEY = "root.key"


class ReleaseKeyError(UsageError):
    """A release key is missing, misplaced or unreadable."""


def release_dir(home: Path) -> Path:
    return Path(home) / "release"


def online_key_path(home: Path, role: str) -> Path:
    return release_dir(home) / "keys" / f"{role}.key"


def root_key_path(root_dir: Path) -> Path:
    return Path(root_dir) / ROOT_KEY


def check_apart(home: Path, root_dir: Path) -> Path:
    """``root_dir`` resolved, refused when it lies inside ``home`` (the root key is offline)."""
    home_r, root_r = Path(home).resolve(), Path(root_dir).resolve()
    if root_r == home_r or home_r in root_r.parents:
        raise ReleaseKeyError(
            f"the root key directory {root_r} is inside the home {home_r}: keep the root key "
            "apart from the online keys (e.g. on removable media), pass another --root-dir"
        )
    return root_r


@dataclass(frozen=True)
class RoleKey:
    """A role's private key with its securesystemslib public key and signer."""

    private: Ed25519PrivateKey

    @property
    def public(self) -> SSlibKey:
        return trusted_key(self.private)

    @property
    def signer(self) -> CryptoSigner:
        return signer(self.private)


def create_key(path: Path) -> RoleKey:
    """A new key saved at ``path`` (0600); refuses to overwrite an existing one."""
    key = generate_key()
    save_private_key(key, path)
    return RoleKey(key)


def load_key(path: Path, what: str) -> RoleKey:
    if not path.is_file():
        raise ReleaseKeyError(f"no {what} key at {path} (run `fedgate release init` first)")
    return RoleKey(load_private_key(path))


def load_online_keys(home: Path) -> dict[str, RoleKey]:
    return {role: load_key(online_key_path(home, role), f"{role} role") for role in ONLINE_ROLES}


def load_root_key(root_dir: Path) -> RoleKey:
    return load_key(root_key_path(root_dir), "offline root")
