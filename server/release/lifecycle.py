"""Creating the release repository, rotating its root (the offline step) and keeping its
metadata from expiring.

``init_release`` makes the offline root key in a directory apart from the home, the online
keys in the home, root v1 and empty targets/snapshot/timestamp. ``rotate_root`` writes root
N+1 signed by the current root key (and the new one when the root key changes), optionally
with new online keys, after which every online role is re-signed. ``refresh_repository``
re-signs whatever expires within half its lifetime (``serve`` runs it periodically).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from fedgate.crypto import generate_key, save_private_key
from fedgate.server.release.channels import ROOT, open_store, record
from fedgate.server.release.keys import (
    ONLINE_ROLES,
    ReleaseKeyError,
    RoleKey,
    check_apart,
    create_key,
    load_online_keys,
    load_root_key,
    online_key_path,
    root_key_path,
)
from fedgate.server.release.repository import (
    ReleaseRepository,
    RepositoryStateError,
    Versions,
    lifetimes,
    now,
)


@dataclass(frozen=True)
class InitResult:
    root_json: Path
    root_key: Path
    versions: Versions


def init_release(
    home: Path,
    root_dir: Path,
    *,
    db: str | None = None,
    lifetime_overrides: Mapping[str, timedelta] | None = None,
) -> InitResult:
    """Create the repository with a new offline root key in ``root_dir`` (outside ``home``)."""
    home = Path(home).resolve()
    root_dir = check_apart(home, root_dir)
    repo = ReleaseRepository(home)
    if repo.exists():
        raise RepositoryStateError(f"a release repository already exists at {repo.root_dir}")
    for path in [root_key_path(root_dir), *(online_key_path(home, r) for r in ONLINE_ROLES)]:
        if path.exists():
            raise ReleaseKeyError(f"{path} already exists: refusing to replace a release key")
    store = open_store(home, db, create_key=True)
    life = lifetimes(lifetime_overrides)
    with repo.locked():
        root_key = create_key(root_key_path(root_dir))
        online = {role: create_key(online_key_path(home, role)) for role in ONLINE_ROLES}
        try:
            versions = repo.initialize(root_key, online, life, now())
        except BaseException:
            repo.remove()
            raise
        keyids = list(repo.root().signed.roles["root"].keyids)
        event = {"root_version": 1, "root_keys": keyids, "online_rotated": True, "initial": True}
        record(store, [(ROOT, event)])
    return InitResult(repo.root_json_path(), root_key_path(root_dir), versions)


def rotate_root(
    home: Path,
    root_dir: Path,
    *,
    new_root_dir: Path | None = None,
    rotate_online: bool = False,
    db: str | None = None,
    lifetime_overrides: Mapping[str, timedelta] | None = None,
) -> Versions:
    """Root N+1, signed by the current root key from ``root_dir`` (and by a new root key made
    in ``new_root_dir``, which replaces it); with ``rotate_online`` new online keys replace the
    old ones and every online role is re-signed with them."""
    home = Path(home).resolve()
    root_dir = check_apart(home, root_dir)
    if new_root_dir is not None:
        new_root_dir = check_apart(home, new_root_dir)
    repo = ReleaseRepository(home).require()
    life = lifetimes(lifetime_overrides)
    store = open_store(home, db)
    old = load_root_key(root_dir)
    with repo.locked():
        rmd = repo.root()
        root = rmd.signed
        if old.public.keyid not in root.roles["root"].keyids:
            raise ReleaseKeyError(f"{root_key_path(root_dir)} is not this repository's root key")
        signers: list[RoleKey] = [old]
        if new_root_dir is not None:
            new = create_key(root_key_path(new_root_dir))
            root.revoke_key(old.public.keyid, "root")
            root.add_key(new.public, "root")
            signers.append(new)
        online: dict[str, RoleKey] = {}
        if rotate_online:
            online = {role: RoleKey(generate_key()) for role in ONLINE_ROLES}
            for role, key in online.items():
                for keyid in list(root.roles[role].keyids):
                    root.revoke_key(keyid, role)
                root.add_key(key.public, role)
        root.version += 1
        root.expires = now() + life["root"]
        rmd.signatures.clear()
        for key in signers:
            rmd.sign(key.signer, append=True)
        repo.write_versioned(rmd)
        if rotate_online:
            for role, key in online.items():
                save_private_key(key.private, online_key_path(home, role), force=True)
            repo.resign({"targets"}, online, life, now())
        record(store, [(ROOT, {
            "root_version": root.version, "root_keys": list(root.roles["root"].keyids),
            "online_rotated": rotate_online, "initial": False,
        })])  # fmt: skip
    return repo.versions()


def due_roles(repo: ReleaseRepository, life: Mapping[str, timedelta], when: datetime) -> set[str]:
    """Online roles whose metadata expires within half its lifetime of ``when``."""
    due = set()
    for role in ("targets", "snapshot", "timestamp"):
        expires = repo.read(role).signed.expires
        if expires - when <= life[role] / 2:
            due.add(role)
    return due


def refresh_repository(
    home: Path, lifetime_overrides: Mapping[str, timedelta] | None = None,
    when: datetime | None = None,
) -> set[str]:  # fmt: skip
    """Re-sign the online roles that are due (see ``due_roles``); returns which were."""
    repo = ReleaseRepository(home).require()
    life = lifetimes(lifetime_overrides)
    when = when or now()
    with repo.locked():
        due = due_roles(repo, life, when)
        if due:
            repo.resign(due, load_online_keys(Path(home)), life, when)
    return due
