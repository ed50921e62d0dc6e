"""A region's device registry: one-time enrollment tokens, enrolled keys, revocation.

Tokens are random, shown once, stored only as SHA-256, expire, and work once. The JSON file
registry below is the embedded default; anything that satisfies ``DeviceRegistry`` (e.g. a
database-backed one) can replace it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from fedgate.crypto import SignatureError, fingerprint, load_public_key, sha256_hex

REGISTRY_FILE = "devices.json"
FORMAT = "fedgate.devices/1"
DEFAULT_TOKEN_TTL = 24 * 3600.0
TOKEN_PREFIX = "fgt_"


class EnrollmentError(ValueError):
    """An enrollment, revocation or registry operation was refused."""


@dataclass(frozen=True)
class Device:
    """One enrolled device of a region."""

    device_id: str
    region: str
    public_key: bytes  # raw 32-byte Ed25519 public key
    enrolled_at: float
    profile: str = ""
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "region": self.region,
            "public_key": self.public_key.hex(),
            "enrolled_at": self.enrolled_at,
            "profile": self.profile,
            "revoked_at": self.revoked_at,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Device:
        return cls(
            device_id=str(obj["device_id"]),
            region=str(obj["region"]),
            public_key=bytes.fromhex(obj["public_key"]),
            enrolled_at=float(obj["enrolled_at"]),
            profile=str(obj.get("profile", "")),
            revoked_at=None if obj.get("revoked_at") is None else float(obj["revoked_at"]),
        )


class DeviceRegistry(Protocol):
    """The storage-independent face of a region's registry."""

    region: str

    def issue_token(self, ttl_seconds: float = DEFAULT_TOKEN_TTL) -> str: ...
    def enroll(self, token: str, public_key: bytes, *, profile: str = "") -> Device: ...
    def revoke(self, device_id: str) -> Device: ...
    def get(self, device_id: str) -> Device | None: ...
    def devices(self) -> list[Device]: ...


def token_hash(token: str) -> str:
    return sha256_hex(token.encode("utf-8"))


def check_region_name(region: str) -> str:
    if not region.isidentifier():
        raise EnrollmentError(f"region name must be a simple identifier like 'eu', got {region!r}")
    return region


class JsonDeviceRegistry:
    """``DeviceRegistry`` kept in ``<directory>/devices.json`` (atomic writes, file lock).

    Reads are cached and reloaded when the file changes, so a revocation by the CLI takes
    effect in a running server at its next lookup.
    """

    def __init__(
        self, directory: Path, region: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.region = check_region_name(region)
        self.directory = Path(directory)
        self.path = self.directory / REGISTRY_FILE
        self._clock = clock
        self._cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None

    # -- storage ---------------------------------------------------------------------------

    def _empty(self) -> dict[str, Any]:
        return {"format": FORMAT, "region": self.region, "devices": {}, "tokens": {}}

    def _load(self) -> dict[str, Any]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return self._empty()
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        try:
            data = json.loads(self.path.read_text())
            ok = data.get("format") == FORMAT and isinstance(data.get("devices"), dict)
        except (ValueError, AttributeError):
            ok = False
        if not ok or not isinstance(data.get("tokens"), dict):
            raise EnrollmentError(f"{self.path} is not a fedgate device registry")
        if data.get("region") != self.region:
            raise EnrollmentError(
                f"{self.path} belongs to region {data.get('region')!r}, not {self.region!r}"
            )
        self._cache = (stamp, data)
        return data

    def _save(self, data: dict[str, Any]) -> None:
        tmp = self.path.with_name(f".{REGISTRY_FILE}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._cache = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[dict[str, Any]]:
        """Exclusive read-modify-write; the data is saved only if the block succeeds."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f".{REGISTRY_FILE}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._cache = None
            data = json.loads(json.dumps(self._load()))  # private copy
            yield data
            self._save(data)

    # -- DeviceRegistry -------------------------------------------------------------------

    def issue_token(self, ttl_seconds: float = DEFAULT_TOKEN_TTL) -> str:
        """A new one-time token, valid for ``ttl_seconds``; only its hash is stored."""
        if not ttl_seconds > 0:
            raise EnrollmentError("token lifetime must be positive")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        with self._transaction() as data:
            data["tokens"][token_hash(token)] = {
                "issued_at": now,
                "expires_at": now + ttl_seconds,
                "used_at": None,
                "used_by": None,
            }
        return token

    def enroll(self, token: str, public_key: bytes, *, profile: str = "") -> Device:
        """Register ``public_key`` with a valid unused token, consuming it."""
        try:
            device_id = fingerprint(load_public_key(bytes(public_key)))
        except (SignatureError, ValueError, TypeError):
            raise EnrollmentError("not a raw 32-byte Ed25519 public key") from None
        now = self._clock()
        with self._transaction() as data:
            entry = data["tokens"].get(token_hash(token))
            if entry is None:
                raise EnrollmentError("unknown enrollment token for region " + self.region)
            if entry["used_at"] is not None:
                raise EnrollmentError("this enrollment token has already been used")
            if now >= entry["expires_at"]:
                raise EnrollmentError("this enrollment token has expired; ask for a new one")
            if device_id in data["devices"]:
                state = "revoked" if data["devices"][device_id]["revoked_at"] else "enrolled"
                raise EnrollmentError(f"device {device_id[:16]} is already {state} here")
            device = Device(device_id, self.region, bytes(public_key), now, profile)
            entry.update(used_at=now, used_by=device_id)
            data["devices"][device_id] = device.to_json()
        return device

    def revoke(self, device_id: str) -> Device:
        """Mark a device revoked (idempotent: revoking twice keeps the first time)."""
        with self._transaction() as data:
            obj = data["devices"].get(device_id)
            if obj is None:
                raise EnrollmentError(f"no device {device_id!r} in region {self.region}")
            device = self._device(obj)
            if not device.revoked:
                device = replace(device, revoked_at=self._clock())
                data["devices"][device_id] = device.to_json()
        return device

    def get(self, device_id: str) -> Device | None:
        obj = self._load()["devices"].get(device_id)
        return None if obj is None else self._device(obj)

    def devices(self) -> list[Device]:
        devices = [self._device(o) for o in self._load()["devices"].values()]
        return sorted(devices, key=lambda d: (d.enrolled_at, d.device_id))

    def _device(self, obj: Any) -> Device:
        try:
            return Device.from_json(obj)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EnrollmentError(f"{self.path} holds a corrupt device entry ({exc!r})") from None

    def resolve(self, prefix: str) -> str:
        """The one device id starting with ``prefix`` (at least 8 hex digits)."""
        if len(prefix) < 8:
            raise EnrollmentError("give at least 8 characters of the device id")
        hits = [d for d in self._load()["devices"] if d.startswith(prefix.lower())]
        if len(hits) != 1:
            what = "no device" if not hits else f"{len(hits)} devices"
            raise EnrollmentError(f"{what} in region {self.region} match {prefix!r}")
        return hits[0]


def region_registry(home: Path, region: str) -> JsonDeviceRegistry:
    """The JSON registry of ``region`` under a fedgate home (``<home>/regions/<region>``)."""
    from fedgate.server.topology import region_dir

    return JsonDeviceRegistry(region_dir(home, check_region_name(region)), region)
