"""Which audit chains a home holds: each region's database and the coordinator's.

A region is ``<home>/region-<name>.db`` (its key ``<home>/keys/region-<name>.pub``), the
coordinator ``<home>/coordinator.db`` (``<home>/keys/coordinator.pub``); a region kept in
PostgreSQL is named explicitly (``--db NAME=URL``), and so is a coordinator kept there
(``--db coordinator=URL``: its key and blobs are still the home's).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedgate.errors import UsageError
from fedgate.server.audit.keys import coordinator_pub_path, region_pub_path
from fedgate.server.db.engine import coordinator_url, default_url

COORDINATOR = "coordinator"
_REGION_FILE = re.compile(r"region-([a-z0-9][a-z0-9_-]{0,31})\.db\Z")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}\Z")


@dataclass(frozen=True)
class Source:
    """One audit chain: a region's (``kind`` region) or the coordinator's."""

    name: str
    kind: str  # "region" | "coordinator"
    url: str
    pubkey: Path  # the trusted public key (may be missing: signatures then not checked)
    blobs: Path  # where the model blobs its chain names live

    @property
    def label(self) -> str:
        return "global coordinator" if self.kind == COORDINATOR else f"region {self.name}"


def parse_db_options(values: list[str]) -> dict[str, str]:
    """``NAME=URL`` pairs (``--db``) as a mapping; a malformed one is a ``UsageError``."""
    out: dict[str, str] = {}
    for value in values:
        name, sep, url = value.partition("=")
        if not sep or not _NAME.match(name) or not url:
            raise UsageError(f"--db wants REGION=URL (e.g. eu=postgresql://...), got {value!r}")
        out[name] = url
    return out


def discover(home: Path, extra: Mapping[str, str] | None = None) -> list[Source]:
    """The home's regions (sorted by name), then its coordinator when it has one."""
    urls: dict[str, str] = {}
    if home.is_dir():
        for path in sorted(home.iterdir()):
            match = _REGION_FILE.match(path.name)
            if match and path.is_file():
                urls[match.group(1)] = default_url(home, match.group(1))
    urls.update(extra or {})
    coordinator = urls.pop(COORDINATOR, None)
    if coordinator is None and (home / "coordinator.db").is_file():
        coordinator = coordinator_url(home)
    sources = [
        Source(name, "region", url, region_pub_path(home, name), home / "blobs")
        for name, url in sorted(urls.items())
    ]
    if coordinator is not None:
        sources.append(
            Source(COORDINATOR, COORDINATOR, coordinator, coordinator_pub_path(home),
                   home / "coordinator" / "blobs")
        )  # fmt: skip
    if not sources:
        raise UsageError(
            f"no audit chain under {home}: no region-<name>.db nor coordinator.db there "
            "(pass --home, or --db REGION=URL)"
        )
    return sources
