"""The TUF repository on disk (``tuf.api.metadata``), with consistent snapshots.

Layout under ``<home>/release/repository/`` (what ``fedgate release serve`` serves):

* ``metadata/<N>.root.json`` every root version (signed by the offline root key);
* ``metadata/<N>.targets.json``, ``metadata/<N>.snapshot.json`` (online keys);
* ``metadata/timestamp.json`` (online key), written last: it is what makes a new state visible;
* ``targets/<region>/<sha256>.<profile>.onnx`` the students, by content.

A new state is written in this order, each file atomically: target files, targets, snapshot,
then (after the caller's audit record) the timestamp. A reader, or an edge node, sees the old
state or the new one, never a part. Writers take ``<home>/release/.lock``.
"""

from __future__ import annotations

import fcntl
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Role,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)

from fedgate.atomic_file import PUBLIC, write_atomic
from fedgate.crypto import sha256_hex
from fedgate.errors import UsageError
from fedgate.server.release.keys import RoleKey, release_dir

LIFETIMES: dict[str, timedelta] = {
    "root": timedelta(days=365),
    "targets": timedelta(days=30),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}
ROLES = ("root", "targets", "snapshot", "timestamp")
_VERSIONED = re.compile(r"(\d+)\.(root|targets|snapshot)\.json\Z")


class RepositoryStateError(UsageError):
    """The release repository is missing or not in a state this verb can use."""


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def lifetimes(overrides: Mapping[str, timedelta] | None = None) -> dict[str, timedelta]:
    merged = dict(LIFETIMES)
    for role, value in (overrides or {}).items():
        if role not in LIFETIMES:
            raise UsageError(f"unknown TUF role {role!r}; roles: {', '.join(ROLES)}")
        merged[role] = value
    return merged


@dataclass(frozen=True)
class Versions:
    """Metadata versions of one repository state."""

    root: int
    targets: int
    snapshot: int
    timestamp: int


class ReleaseRepository:
    """The repository's files; every write goes through ``fedgate.atomic_file``."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.root_dir = release_dir(self.home) / "repository"
        self.metadata_dir = self.root_dir / "metadata"
        self.targets_dir = self.root_dir / "targets"

    # ----------------------------------------------------------------- reading
    def exists(self) -> bool:
        return (self.metadata_dir / "1.root.json").is_file()

    def require(self) -> ReleaseRepository:
        if not self.exists():
            raise RepositoryStateError(
                f"no release repository under {self.root_dir} (run `fedgate release init "
                "--root-dir DIR` first)"
            )
        return self

    def latest_version(self, role: str) -> int:
        versions = [
            int(m.group(1))
            for p in self.metadata_dir.glob(f"*.{role}.json")
            if (m := _VERSIONED.match(p.name)) and m.group(2) == role
        ]
        if not versions:
            raise RepositoryStateError(f"the release repository has no {role} metadata")
        return max(versions)

    def read(self, role: str, version: int | None = None) -> Metadata[Any]:
        if role == "timestamp":
            path = self.metadata_dir / "timestamp.json"
        else:
            path = self.metadata_dir / f"{version or self.latest_version(role)}.{role}.json"
        return Metadata.from_bytes(path.read_bytes())

    def root(self) -> Metadata[Root]:
        return self.read("root")

    def targets(self) -> Metadata[Targets]:
        return self.read("targets")

    def versions(self) -> Versions:
        return Versions(
            self.latest_version("root"), self.latest_version("targets"),
            self.latest_version("snapshot"), self.read("timestamp").signed.version,
        )  # fmt: skip

    def root_json_path(self) -> Path:
        """The newest root metadata: what a new edge node is provisioned with."""
        return self.metadata_dir / f"{self.latest_version('root')}.root.json"

    # ----------------------------------------------------------------- writing
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise writers (publish, hold/pin, refresh, rotate-root) across processes."""
        lock = release_dir(self.home) / ".lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def write_versioned(self, md: Metadata[Any]) -> bytes:
        data = md.to_bytes()
        write_atomic(self.metadata_dir / f"{md.signed.version}.{md.signed.type}.json", data,
                     mode=PUBLIC)  # fmt: skip
        return data

    def write_timestamp(self, md: Metadata[Timestamp]) -> None:
        write_atomic(self.metadata_dir / "timestamp.json", md.to_bytes(), mode=PUBLIC)

    def store_target(
        self, region: str, profile: str, data: bytes, custom: dict[str, Any]
    ) -> TargetFile:
        """Write a student under its content address; its TargetFile carries ``custom``."""
        digest = sha256_hex(data)
        path = self.targets_dir / region / f"{digest}.{profile}.onnx"
        if not (path.is_file() and sha256_hex(path.read_bytes()) == digest):
            write_atomic(path, data, mode=PUBLIC)
        return TargetFile(
            len(data), {"sha256": digest}, f"{region}/{profile}.onnx", {"custom": custom}
        )

    def sign_next(
        self, md: Metadata[Any], key: RoleKey, lifetime: timedelta, when: datetime
    ) -> Metadata[Any]:
        """Bump ``md``'s version, set its expiry to ``when + lifetime`` and sign it."""
        md.signed.version += 1
        md.signed.expires = when + lifetime
        md.sign(key.signer)
        return md

    def stage(
        self,
        targets: Mapping[str, TargetFile],
        keys: Mapping[str, RoleKey],
        life: Mapping[str, timedelta],
        when: datetime,
    ) -> Metadata[Timestamp]:
        """Write the next targets (exactly ``targets``) and snapshot; return the signed next
        timestamp, which the caller writes with ``write_timestamp`` to make the state visible."""
        tmd = self.targets()
        tmd.signed.targets = dict(targets)
        self.sign_next(tmd, keys["targets"], life["targets"], when)
        tdata = self.write_versioned(tmd)
        return self._stage_snapshot(tdata, tmd.signed.version, keys, life, when)

    def _stage_snapshot(
        self, tdata: bytes, tversion: int, keys: Mapping[str, RoleKey],
        life: Mapping[str, timedelta], when: datetime,
    ) -> Metadata[Timestamp]:  # fmt: skip
        smd: Metadata[Snapshot] = self.read("snapshot")
        smd.signed.meta["targets.json"] = MetaFile(
            tversion, len(tdata), {"sha256": sha256_hex(tdata)}
        )
        self.sign_next(smd, keys["snapshot"], life["snapshot"], when)
        sdata = self.write_versioned(smd)
        return self._next_timestamp(sdata, smd.signed.version, keys, life, when)

    def _next_timestamp(
        self, sdata: bytes, sversion: int, keys: Mapping[str, RoleKey],
        life: Mapping[str, timedelta], when: datetime,
    ) -> Metadata[Timestamp]:  # fmt: skip
        ts: Metadata[Timestamp] = self.read("timestamp")
        ts.signed.snapshot_meta = MetaFile(sversion, len(sdata), {"sha256": sha256_hex(sdata)})
        return self.sign_next(ts, keys["timestamp"], life["timestamp"], when)

    def resign(
        self, roles: set[str], keys: Mapping[str, RoleKey], life: Mapping[str, timedelta],
        when: datetime,
    ) -> Versions:  # fmt: skip
        """New versions of ``roles`` (and those above them) with unchanged content, visible at
        once: the refresh that keeps metadata from expiring, and re-signing after a rotation."""
        if "targets" in roles:
            ts = self.stage(self.targets().signed.targets, keys, life, when)
        elif "snapshot" in roles:
            tv = self.latest_version("targets")
            tdata = (self.metadata_dir / f"{tv}.targets.json").read_bytes()
            ts = self._stage_snapshot(tdata, tv, keys, life, when)
        else:
            sv = self.latest_version("snapshot")
            sdata = (self.metadata_dir / f"{sv}.snapshot.json").read_bytes()
            ts = self._next_timestamp(sdata, sv, keys, life, when)
        self.write_timestamp(ts)
        return self.versions()

    def initialize(
        self, root_key: RoleKey, online: Mapping[str, RoleKey], life: Mapping[str, timedelta],
        when: datetime,
    ) -> Versions:  # fmt: skip
        """Root v1 (signed by ``root_key``) and empty targets, snapshot and timestamp v1."""
        if self.exists() or (self.metadata_dir / "timestamp.json").exists():
            raise RepositoryStateError(f"a release repository already exists at {self.root_dir}")
        root = Root(expires=when + life["root"], consistent_snapshot=True)
        root.roles = {role: Role([], 1) for role in ROLES}
        root.add_key(root_key.public, "root")
        for role, key in online.items():
            root.add_key(key.public, role)
        rmd = Metadata(root)
        rmd.sign(root_key.signer)
        self.write_versioned(rmd)
        tmd = Metadata(Targets(version=1, expires=when + life["targets"]))
        tmd.sign(online["targets"].signer)
        tdata = self.write_versioned(tmd)
        meta = {"targets.json": MetaFile(1, len(tdata), {"sha256": sha256_hex(tdata)})}
        smd = Metadata(Snapshot(version=1, expires=when + life["snapshot"], meta=meta))
        smd.sign(online["snapshot"].signer)
        sdata = self.write_versioned(smd)
        snap = MetaFile(1, len(sdata), {"sha256": sha256_hex(sdata)})
        ts = Metadata(Timestamp(version=1, expires=when + life["timestamp"], snapshot_meta=snap))
        ts.sign(online["timestamp"].signer)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        self.write_timestamp(ts)
        return self.versions()

    def remove(self) -> None:
        """Drop a half-made repository (init failed before it was usable)."""
        shutil.rmtree(self.root_dir, ignore_errors=True)
