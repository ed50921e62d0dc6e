"""A region's release channel (live, held, pinned) and the release events of the coordinator's
signed audit chain.

The channel state is what the chain says: the last ``release.channel`` event of a region
(none: live). Publishing (``release.published``), channel changes (``release.channel``),
initialisation and root rotation (``release.root``) are appended with the coordinator key
signing the head in the same transaction (``fedgate audit verify --coordinator``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedgate.errors import UsageError
from fedgate.server.audit.keys import coordinator_key_path, coordinator_pub_path, ensure_key
from fedgate.server.coordinator.store import CoordinatorStore
from fedgate.server.db.engine import coordinator_url

PUBLISHED, CHANNEL, ROOT = "release.published", "release.channel", "release.root"
KINDS = (PUBLISHED, CHANNEL, ROOT)


@dataclass(frozen=True)
class Channel:
    region: str
    state: str = "live"  # live | held | pinned
    version: int | None = None

    def describe(self) -> str:
        return self.state if self.version is None else f"{self.state} at v{self.version}"


def open_store(home: Path, db: str | None = None, *, create_key: bool = False) -> CoordinatorStore:
    """The coordinator's store acting with its key; the key must exist unless ``create_key``."""
    key_path = coordinator_key_path(home)
    if not create_key and not key_path.is_file():
        raise UsageError(
            f"no coordinator key at {key_path} (run `fedgate coordinator init` or "
            "`fedgate release init` in this home)"
        )
    key = ensure_key(key_path, coordinator_pub_path(home))
    return CoordinatorStore.open(db or coordinator_url(home), key)


def record(store: CoordinatorStore, events: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
    """Append ``events`` and sign the head, in one transaction."""
    store.audit.append_many(list(events), sign=True)


def channels(store: CoordinatorStore) -> dict[str, Channel]:
    """Every region's channel as the chain last recorded it."""
    out: dict[str, Channel] = {}
    for event in store.audit.events(kind=CHANNEL):
        data = json.loads(event.payload)
        region = str(data.get("region"))
        version = data.get("version")
        out[region] = Channel(region, str(data.get("state", "live")),
                              version if isinstance(version, int) else None)  # fmt: skip
    return out


def channel_of(store: CoordinatorStore, region: str) -> Channel:
    return channels(store).get(region, Channel(region))
