"""A device's identity on disk: its Ed25519 key, public key, enrollment and trust anchors.

Layout of a device directory::

    device.key          private key, PEM, mode 0600
    device.pub          public key, hex of the raw 32 bytes
    enrollment.json     region, device id and profile, written once enrolled (over the
                        network also the fleet address and the enrollment service URL)
    anchors/<region>.pub  the region server's public key (trust anchor)
    anchors/<region>-ca.pem  the region CA (TLS to the fleet and the enrollment service)
    anchors/<region>-release-root.json  release root metadata, when the region has one
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.atomic_file import write_atomic
from fedgate.clients.profiles import PROFILES
from fedgate.crypto import (
    SignatureError,
    fingerprint,
    generate_key,
    load_private_key,
    public_bytes,
    read_public_key,
    save_private_key,
    save_public_key,
)
from fedgate.errors import UsageError

KEY_FILE = "device.key"
PUB_FILE = "device.pub"
ENROLLMENT_FILE = "enrollment.json"
ANCHORS_DIR = "anchors"


class IdentityError(UsageError, ValueError):
    """A device directory is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class DeviceIdentity:
    """A loaded device key and where it lives."""

    key: Ed25519PrivateKey
    home: Path

    @property
    def device_id(self) -> str:
        return fingerprint(self.key)

    @property
    def public_key(self) -> bytes:
        return public_bytes(self.key)


@dataclass(frozen=True)
class Enrollment:
    """The region a device enrolled with."""

    region: str
    device_id: str
    profile: str = ""
    fleet: str = ""  # the fleet (proxy) address, when enrolled over the network
    service: str = ""  # the region's enrollment service URL, when enrolled over the network


@dataclass(frozen=True)
class EnrolledIdentity:
    """The outcome of ``enroll_identity``."""

    identity: DeviceIdentity
    enrollment: Enrollment
    new_key: bool  # a key was made (and written) for this enrollment
    anchor_path: Path
    replaced: Enrollment | None = None  # the enrollment ``force`` replaced, if any


def store_identity(identity: DeviceIdentity, *, force: bool = False) -> None:
    """Write ``device.key`` (0600) and ``device.pub``; refuse to replace a key unless ``force``."""
    save_private_key(identity.key, identity.home / KEY_FILE, force=force)
    save_public_key(identity.key, identity.home / PUB_FILE)


def create_identity(device_dir: Path, *, force: bool = False) -> DeviceIdentity:
    """Make and store a new device key; refuse to replace an existing one unless ``force``."""
    identity = DeviceIdentity(generate_key(), Path(device_dir))
    store_identity(identity, force=force)
    return identity


def load_identity(device_dir: Path) -> DeviceIdentity:
    """Load the device key, checking its file mode and that ``device.pub`` matches it."""
    home = Path(device_dir)
    path = home / KEY_FILE
    if not path.is_file():
        raise IdentityError(f"no device key at {path} (run `fedgate client enroll` first)")
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        raise IdentityError(f"{path} is readable by other users; run `chmod 600 {path}`")
    try:
        key = load_private_key(path)
    except SignatureError as exc:
        raise IdentityError(str(exc)) from None
    pub = home / PUB_FILE
    if pub.exists():
        try:
            matches = public_bytes(read_public_key(pub)) == public_bytes(key)
        except (SignatureError, ValueError):
            matches = False
        if not matches:
            raise IdentityError(f"{pub} does not belong to {path}")
    else:
        save_public_key(key, pub)
    return DeviceIdentity(key, home)


def load_or_create_identity(device_dir: Path) -> tuple[DeviceIdentity, bool]:
    """``(identity, created)``: the existing key, or a new one if there is none."""
    if (Path(device_dir) / KEY_FILE).exists():
        return load_identity(device_dir), False
    return create_identity(device_dir), True


def save_enrollment(device_dir: Path, enrollment: Enrollment) -> None:
    write_atomic(Path(device_dir) / ENROLLMENT_FILE, json.dumps(enrollment.__dict__, indent=2))


def read_enrollment(device_dir: Path) -> Enrollment | None:
    """The device's enrollment, or None when it has not enrolled yet."""
    path = Path(device_dir) / ENROLLMENT_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return Enrollment(
            str(data["region"]),
            str(data["device_id"]),
            str(data.get("profile", "")),
            str(data.get("fleet", "")),
            str(data.get("service", "")),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise IdentityError(f"{path} is corrupt ({exc})") from None


def save_trust_anchor(device_dir: Path, region: str, key: Ed25519PublicKey) -> Path:
    """Store the region server's public key as this device's trust anchor for ``region``."""
    path = Path(device_dir) / ANCHORS_DIR / f"{region}.pub"
    save_public_key(key, path)
    return path


def read_trust_anchor(device_dir: Path, region: str) -> Ed25519PublicKey:
    path = Path(device_dir) / ANCHORS_DIR / f"{region}.pub"
    if not path.is_file():
        raise IdentityError(f"no trust anchor for region {region!r} at {path}")
    try:
        return read_public_key(path)
    except SignatureError as exc:
        raise IdentityError(str(exc)) from None


def check_profile(profile: str) -> str:
    """``profile`` if it names a device profile (phone, pi), else ``IdentityError``."""
    if profile not in PROFILES:
        raise IdentityError(f"unknown profile {profile!r}; known: {', '.join(sorted(PROFILES))}")
    return profile


def enroll_identity(
    device_dir: Path,
    region: str,
    profile: str,
    anchor: Ed25519PublicKey,
    register: Callable[[bytes], str],
    *,
    force: bool = False,
) -> EnrolledIdentity:
    """Enroll this device directory with ``region``: the device side of enrollment.

    Refuses a directory already enrolled (in any region) unless ``force``, which also makes
    a new key. Otherwise an existing key is kept and a missing one is made. ``register``
    hands the raw public key to the region and returns the device id it recorded; only
    then is a new key written (mode 0600), with the enrollment and the region server's
    key ``anchor`` as this device's trust anchor.
    """
    device_dir = Path(device_dir)
    check_profile(profile)
    previous = read_enrollment(device_dir)
    if previous is not None and not force:
        where = "this region" if previous.region == region else f"region {previous.region}"
        raise IdentityError(
            f"{device_dir} is already enrolled in {where} as {previous.device_id[:16]}; "
            "a device belongs to one region (use --force for a new key)"
        )
    new_key = force or not (device_dir / KEY_FILE).exists()
    identity = DeviceIdentity(generate_key(), device_dir) if new_key else load_identity(device_dir)
    device_id = register(identity.public_key)
    if device_id != identity.device_id:
        raise IdentityError(
            f"region {region} recorded device {device_id[:16]}, not this key "
            f"({identity.device_id[:16]})"
        )
    if new_key:
        store_identity(identity, force=force)
    enrollment = Enrollment(region, device_id, profile)
    save_enrollment(device_dir, enrollment)
    anchor_path = save_trust_anchor(device_dir, region, anchor)
    return EnrolledIdentity(identity, enrollment, new_key, anchor_path, previous)
