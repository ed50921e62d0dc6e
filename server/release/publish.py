"""Publishing students as signed releases, and holding or pinning a region's channel.

``publish_release`` puts global version N's students (``<home>/coordinator/students/vN``) on
the channel of every named region that is live (a held region keeps what it has; a pinned one
keeps its pinned version). The global version must be recorded by the coordinator and its
signed statement must verify; its digest is the releases' lineage digest. Order, under the
repository lock: student files and the targets and snapshot metadata are written, the audit
event is committed (signed head), then the timestamp makes the new state visible. A crash
before the timestamp leaves the old state served; the chain never lacks a served release.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from fedgate.crypto import read_public_key, sha256_hex
from fedgate.errors import UsageError, VerificationError
from fedgate.release_targets import MalformedRelease, PublishedTarget, ReleaseTarget, check_name
from fedgate.server.audit.keys import coordinator_pub_path
from fedgate.server.coordinator.federation import federation_path, load_federation
from fedgate.server.coordinator.store import CoordinatorStore
from fedgate.server.coordinator.versions import check_version
from fedgate.server.db.blobs import BlobStore
from fedgate.server.release.channels import (
    CHANNEL,
    PUBLISHED,
    Channel,
    channel_of,
    channels,
    open_store,
    record,
)
from fedgate.server.release.keys import load_online_keys
from fedgate.server.release.repository import ReleaseRepository, Versions, lifetimes, now
from fedgate.server.release.students import StudentSet, read_students


class PublishError(UsageError):
    """A release cannot be published as asked."""


@dataclass(frozen=True)
class Publication:
    """What one publish (or channel change) put on the repository."""

    version: int
    targets: list[PublishedTarget]
    skipped: dict[str, str]
    versions: Versions

    def to_dict(self) -> dict[str, Any]:
        return {
            "global_version": self.version,
            "targets": [t.__dict__ | {"path": t.path} for t in self.targets],
            "skipped": self.skipped,
            "metadata": self.versions.__dict__,
        }


def release_of(target: TargetFile) -> ReleaseTarget:
    try:
        return ReleaseTarget.from_custom(target.custom)
    except MalformedRelease as exc:
        raise VerificationError(f"published target {target.path}: {exc}") from None


def _published(target: TargetFile) -> PublishedTarget:
    rel = release_of(target)
    return PublishedTarget(rel.region, rel.profile, rel.global_version, target.hashes["sha256"],
                           target.length, rel.channel)  # fmt: skip


def lineage_digest(home: Path, store: CoordinatorStore, version: int) -> str:
    """The SHA-256 of global version ``version``'s statement, after checking it: recorded by
    the coordinator, both blobs intact, the statement signed by the coordinator key."""
    info = store.version(version)
    if info is None:
        raise PublishError(f"global version {version} is not recorded by the coordinator")
    pub = read_public_key(coordinator_pub_path(home))
    check_version(info, BlobStore(Path(home) / "coordinator" / "blobs"), pub)
    return info.statement_sha256


DISTILL_EVENT = "distill.students"


def check_distilled(store: CoordinatorStore, students: StudentSet, manifest: bytes) -> None:
    """When the coordinator's chain records distillation of this version (``distill.students``,
    with the manifest's SHA-256), the students.json read must be the one it recorded last."""
    recorded = [
        data.get("manifest")
        for event in store.audit.events(kind=DISTILL_EVENT)
        if isinstance(data := json.loads(event.payload), dict)
        and data.get("version") == students.version
    ]
    if recorded and recorded[-1] != sha256_hex(manifest):
        raise VerificationError(
            f"students.json of global version {students.version} is not the manifest "
            f"distillation recorded in the coordinator's chain ({str(recorded[-1])[:16]})"
        )


def _targets_for(
    repo: ReleaseRepository, region: str, students: StudentSet, lineage: str, channel: str,
    when: datetime,
) -> dict[str, TargetFile]:  # fmt: skip
    out = {}
    for profile, s in students.students.items():
        rel = ReleaseTarget(
            region, profile, students.version, lineage, s.input_name, s.input_shape, s.probe,
            channel, when.isoformat(), s.facts,
        )  # fmt: skip
        target = repo.store_target(region, profile, s.data, rel.to_custom())
        out[target.path] = target
    return out


def _default_regions(home: Path) -> list[str]:
    path = federation_path(home)
    if not path.is_file():
        raise PublishError(f"name the regions (--regions eu,us): no federation file at {path}")
    return sorted(load_federation(path).regions)


def _commit(
    repo: ReleaseRepository, store: CoordinatorStore, home: Path,
    targets: Mapping[str, TargetFile], events: Iterable[tuple[str, Mapping[str, Any]]],
    life: Mapping[str, timedelta], when: datetime,
) -> Versions:  # fmt: skip
    """Stage ``targets``, record ``events`` (signed head), then make the state visible."""
    timestamp = repo.stage(targets, load_online_keys(home), life, when)
    record(store, events)
    repo.write_timestamp(timestamp)
    return repo.versions()


def publish_release(
    home: Path,
    version: int,
    regions: Iterable[str] | None = None,
    *,
    db: str | None = None,
    students_root: Path | None = None,
    lifetime_overrides: Mapping[str, timedelta] | None = None,
) -> Publication:
    """Publish global version ``version``'s students to ``regions`` (default: the federation's
    regions) whose channel is live; returns what was published and which regions were skipped."""
    home = Path(home)
    repo = ReleaseRepository(home).require()
    life = lifetimes(lifetime_overrides)
    names = [check_name("region", r) for r in (regions or _default_regions(home))]
    store = open_store(home, db)
    lineage = lineage_digest(home, store, version)
    students = read_students(home, version, students_root)
    check_distilled(store, students, students.manifest)
    if students.lineage_digest is not None and students.lineage_digest != lineage:
        raise VerificationError(
            f"students.json names lineage {students.lineage_digest[:16]}, but global version "
            f"{version}'s statement is {lineage[:16]}"
        )
    when = now()
    with repo.locked():
        chans = channels(store)
        skipped: dict[str, str] = {}
        current = dict(repo.targets().signed.targets)
        live = []
        for region in names:
            chan = chans.get(region, Channel(region))
            if chan.state != "live":
                skipped[region] = chan.describe()
                continue
            live.append(region)
            for profile in students.students:
                old = current.get(f"{region}/{profile}.onnx")
                if old is not None and release_of(old).global_version > version:
                    raise PublishError(
                        f"{region}/{profile} is already at v{release_of(old).global_version}: "
                        f"publish a newer version, or `fedgate release pin --region {region} "
                        f"--version {version}` to go back on purpose"
                    )
        if not live:
            raise PublishError(
                "nothing published: " + ", ".join(f"{r} {why}" for r, why in skipped.items())
            )
        new = {}
        for region in live:
            new.update(_targets_for(repo, region, students, lineage, "live", when))
        current.update(new)
        event = {
            "global_version": version, "lineage": lineage,
            "targets": [_published(t).__dict__ for t in new.values()], "skipped": skipped,
        }  # fmt: skip
        versions = _commit(repo, store, home, current, [(PUBLISHED, event)], life, when)
    return Publication(version, [_published(t) for t in new.values()], skipped, versions)


def set_channel(
    home: Path,
    region: str,
    state: str,
    version: int | None = None,
    *,
    db: str | None = None,
    students_root: Path | None = None,
    lifetime_overrides: Mapping[str, timedelta] | None = None,
) -> Publication:
    """Hold the region's channel where it is (``held``), pin it to global ``version``
    (``pinned``: its targets become that version's students) or let it follow new publishes
    again (``live``). Recorded as ``release.channel`` in the coordinator's chain."""
    home = Path(home)
    region = check_name("region", region)
    if state not in ("live", "held", "pinned"):
        raise PublishError(f"channel state must be live, held or pinned, got {state!r}")
    if (state == "pinned") != (version is not None):
        raise PublishError("pin needs --version; hold and resume take none")
    repo = ReleaseRepository(home).require()
    life = lifetimes(lifetime_overrides)
    store = open_store(home, db)
    when = now()
    with repo.locked():
        current = dict(repo.targets().signed.targets)
        mine = {p: t for p, t in current.items() if p.startswith(f"{region}/")}
        if state == "pinned":
            assert version is not None
            lineage = lineage_digest(home, store, version)
            students = read_students(home, version, students_root)
            mine = _targets_for(repo, region, students, lineage, "pinned", when)
        else:
            mine = {p: _with_channel(t, state) for p, t in mine.items()}
        if state == "held" and not mine:
            raise PublishError(f"region {region} has no release to hold yet")
        at = version if version is not None else _version_of(mine)
        current.update(mine)
        previous = channel_of(store, region)
        event = {
            "region": region, "state": state, "version": at, "previous": previous.describe(),
            "targets": [_published(t).__dict__ for t in mine.values()],
        }  # fmt: skip
        versions = _commit(repo, store, home, current, [(CHANNEL, event)], life, when)
    return Publication(at or 0, [_published(t) for t in mine.values()], {}, versions)


def _with_channel(target: TargetFile, state: str) -> TargetFile:
    rel = replace(release_of(target), channel=state)
    return TargetFile(target.length, dict(target.hashes), target.path, {"custom": rel.to_custom()})


def _version_of(targets: Mapping[str, TargetFile]) -> int | None:
    versions = {release_of(t).global_version for t in targets.values()}
    return max(versions) if versions else None


def published_targets(home: Path) -> list[PublishedTarget]:
    """Every target the repository's newest targets metadata lists."""
    repo = ReleaseRepository(home).require()
    return [_published(t) for t in repo.targets().signed.targets.values()]
