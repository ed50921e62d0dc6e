"""The coordinator as a whole: its home layout, key, database, blob store and federation, and
the two ways to merge: once (``merge_once``) or as a long-running service (``serve``).

Layout under ``<home>``: ``keys/coordinator.key`` (0600) and ``.pub``, ``coordinator.db``
(default database; ``--db URL`` for PostgreSQL), ``coordinator/federation.toml``,
``coordinator/inbox/<bundle>/`` (what regions hand over), ``coordinator/blobs/`` (global
weights and statements by SHA-256).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fedgate.crypto import read_public_key
from fedgate.errors import UsageError
from fedgate.server.audit.keys import coordinator_key_path, coordinator_pub_path, ensure_key
from fedgate.server.coordinator.candidates import Refusal, read_inbox, screen
from fedgate.server.coordinator.federation import Federation, federation_path, load_federation
from fedgate.server.coordinator.store import CoordinatorStore, VersionInfo
from fedgate.server.coordinator.versions import (
    Published,
    check_version,
    expectation,
    publish,
    recover,
)
from fedgate.server.db.blobs import BlobStore
from fedgate.server.db.engine import coordinator_url
from fedgate.server.db.migrate import open_readonly


class GlobalVersionError(UsageError, LookupError):
    """A global version that this home's coordinator has not published."""


def coordinator_dir(home: Path) -> Path:
    return home / "coordinator"


def default_inbox(home: Path) -> Path:
    return coordinator_dir(home) / "inbox"


@contextlib.contextmanager
def published_store(home: Path) -> Iterator[CoordinatorStore | None]:
    """The home's coordinator store, read-only; ``None`` when no coordinator has published
    (no key or no database yet)."""
    if not coordinator_pub_path(home).is_file() or not (home / "coordinator.db").is_file():
        yield None
        return
    engine = open_readonly(coordinator_url(home))
    try:
        yield CoordinatorStore(engine)
    finally:
        engine.dispose()


def load_global(home: Path, version: int, db: str | None = None) -> tuple[VersionInfo, bytes]:
    """Global version ``version``'s record and weights (safetensors bytes), once its statement
    verifies under the home's coordinator key and the weights hash to what it signs."""
    pub = coordinator_pub_path(home)
    if not pub.is_file():
        raise GlobalVersionError(
            f"global:{version}: no coordinator in {home} ({pub} missing); merge a global "
            "version first (`fedgate coordinator merge` or `fedgate cycle`)"
        )
    engine = open_readonly(db or coordinator_url(home))
    try:
        store = CoordinatorStore(engine)
        info = store.version(version)
        current = store.current_version()
    finally:
        engine.dispose()
    if info is None:
        raise GlobalVersionError(
            f"global:{version}: no such global version in {home} (current: {current})"
        )
    blobs = BlobStore(coordinator_dir(home) / "blobs")
    check_version(info, blobs, read_public_key(pub))  # VerificationError when not intact
    return info, blobs.get(info.weights_sha256)


@dataclass
class Outcome:
    """What one merge attempt did."""

    published: Published | None
    refusals: list[Refusal] = field(default_factory=list)


class Coordinator:
    def __init__(self, home: Path, db: str | None = None, federation: Path | None = None) -> None:
        self.home = home
        # the federation first: a mistyped home fails before any key or database is made
        self.federation: Federation = load_federation(federation or federation_path(home))
        self.signer = ensure_key(coordinator_key_path(home), coordinator_pub_path(home))
        self.store = CoordinatorStore.open(db or coordinator_url(home), self.signer)
        self.blobs = BlobStore(coordinator_dir(home) / "blobs")
        recover(self.blobs.root)

    def merge_once(self, inbox: Path) -> Outcome:
        """Verify every bundle in ``inbox``, record the refusals, merge what is accepted
        (``published`` is None when nothing was)."""
        expect = expectation(self.store, self.blobs)
        accepted, refused = screen(
            read_inbox(inbox), self.federation, expect, self.store.merged_artifacts()
        )
        if not accepted:
            self.store.record_refusals(refused)
            return Outcome(None, refused)
        pub = publish(self.store, self.blobs, self.signer, self.federation, expect, accepted,
                      refused)  # fmt: skip
        return Outcome(pub, refused)

    def serve(
        self,
        inbox: Path,
        *,
        poll: float = 2.0,
        deadline: float | None = None,
        max_versions: int | None = None,
        report: Callable[[Outcome], None] = lambda _: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> int:
        """Watch ``inbox``: refuse (and record) bad bundles as they arrive; merge when every
        region of the federation has an accepted candidate, or ``deadline`` seconds after the
        last version (or start) when at least one has. Returns the versions published."""
        deadline = self.federation.deadline_seconds if deadline is None else deadline
        expected = set(self.federation.regions)
        published, since = 0, clock()
        while max_versions is None or published < max_versions:
            expect = expectation(self.store, self.blobs)
            decided = self.store.decided_artifacts()
            fresh = [b for b in read_inbox(inbox) if b.artifact_sha256 not in decided]
            accepted, refused = screen(fresh, self.federation, expect, decided)
            if refused:
                self.store.record_refusals(refused)
                report(Outcome(None, refused))
            regions = {c.region for c in accepted}
            if accepted and (regions >= expected or clock() - since >= deadline):
                pub = publish(self.store, self.blobs, self.signer, self.federation, expect,
                              accepted, [])  # fmt: skip
                report(Outcome(pub))
                published, since = published + 1, clock()
                continue
            time.sleep(poll)
        return published
