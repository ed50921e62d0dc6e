"""An edge node's home and its local record: what it is, what is installed, what happened.

Layout under the edge home (``--edge-home``, ``$FEDGATE_EDGE_HOME``, else ``~/.fedgate-edge``):

* ``edge.json`` the node: release server URL, region, profile;
* ``trust/root.json`` the root metadata it was provisioned with (read-only): its trust anchor;
* ``metadata/`` TUF's trusted metadata cache (``tuf.ngclient``);
* ``models/v<N>-<sha16>/model.onnx`` + ``release.json`` each installed release;
* ``models/.v<N>-<sha16>.tmp/`` a model directory being written (removed by the next sync; an
  earlier version of the node also kept downloads in ``staging/``, emptied the same way);
* ``state.json`` the current install, the ones before it, versions rolled back from, and local
  events (installs, rollbacks) with whether a sync has reported them yet.

``state.json`` is replaced atomically (``fedgate.atomic_file``) and is the one commit point of
an install: before it is written the old model serves, after it the new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fedgate.atomic_file import PUBLIC, READ_ONLY, write_atomic
from fedgate.errors import UsageError

EDGE_HOME_ENV = "FEDGATE_EDGE_HOME"
MAX_EVENTS = 200


class EdgeStateError(UsageError):
    """The edge home is missing, not initialised, or its files cannot be read."""


def default_edge_home() -> Path:
    return Path(os.environ.get(EDGE_HOME_ENV) or Path.home() / ".fedgate-edge")


def resolve_edge_home(edge_home: Path | str | None) -> Path:
    return (Path(edge_home) if edge_home else default_edge_home()).expanduser().resolve()


def now_iso() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class EdgeConfig:
    url: str
    region: str
    profile: str


@dataclass(frozen=True)
class Installed:
    """One installed release."""

    global_version: int
    sha256: str
    length: int
    lineage_digest: str
    model_dir: str
    input_name: str
    input_shape: tuple[int, ...]
    channel: str
    installed_at: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Installed:
        return cls(**{**data, "input_shape": tuple(data["input_shape"])})


@dataclass
class EdgeState:
    current: Installed | None = None
    history: list[Installed] = field(default_factory=list)  # earlier installs, oldest first
    rolled_back_from: list[int] = field(default_factory=list)  # not re-installed by sync
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EdgeState:
        data = json.loads(text)
        current = data.get("current")
        return cls(
            Installed.from_dict(current) if current else None,
            [Installed.from_dict(h) for h in data.get("history", [])],
            [int(v) for v in data.get("rolled_back_from", [])],
            list(data.get("events", [])),
        )

    def add_event(self, kind: str, **fields: Any) -> None:
        self.events.append({"kind": kind, "at": now_iso(), "reported": False, **fields})
        del self.events[:-MAX_EVENTS]


class EdgeHome:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.config_path = self.root / "edge.json"
        self.trust_root = self.root / "trust" / "root.json"
        self.metadata = self.root / "metadata"
        self.models = self.root / "models"
        self.staging = self.root / "staging"
        self.state_path = self.root / "state.json"

    def config(self) -> EdgeConfig:
        if not self.config_path.is_file():
            raise EdgeStateError(
                f"{self.root} is not an edge node (run `fedgate edge init --root ROOT_JSON --url "
                "URL --region R --profile P` first)"
            )
        try:
            return EdgeConfig(**json.loads(self.config_path.read_text()))
        except (ValueError, TypeError) as exc:
            raise EdgeStateError(f"{self.config_path}: unreadable ({exc})") from None

    def write_config(self, config: EdgeConfig, root_json: bytes) -> None:
        write_atomic(self.trust_root, root_json, mode=READ_ONLY)
        self.metadata.mkdir(parents=True, exist_ok=True)
        write_atomic(self.config_path, json.dumps(asdict(config), indent=2) + "\n", mode=PUBLIC)

    def state(self) -> EdgeState:
        try:
            text = self.state_path.read_text()
        except FileNotFoundError:
            return EdgeState()
        try:
            return EdgeState.from_json(text)
        except (ValueError, TypeError, KeyError) as exc:
            raise EdgeStateError(f"{self.state_path}: unreadable ({exc})") from None

    def state_stamp(self) -> tuple[int, int, int] | None:
        """Identity of the current ``state.json`` (inode, size, mtime): it changes whenever
        the file is replaced, so a reader can keep what it parsed until then."""
        try:
            st = self.state_path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def save_state(self, state: EdgeState, *, fsync: Callable[[int], None] | None = None) -> None:
        """Replace ``state.json`` atomically (``fsync`` as ``write_atomic``'s)."""
        write_atomic(self.state_path, state.to_json(), mode=PUBLIC, fsync=fsync)

    def model_path(self, installed: Installed) -> Path:
        return self.models / installed.model_dir / "model.onnx"
