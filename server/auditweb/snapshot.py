"""One audit chain, verified and folded into what the auditor's pages show.

A ``Snapshot`` is built from one read of the chain: the verifier's report
(``server/audit/verify.py``; a region's model blobs, the coordinator's global versions), the
views rebuilt from the events (``server/audit/views.py``: runs, rounds, every client's fate)
and, from the same events, devices (enrolled, revoked), regional artifacts, gate decisions,
coordinator decisions and global versions. Everything shown is what the chain states; the
mirror tables are only compared (``views.py``'s disagreements). ``Snapshots`` keeps one per
chain and rebuilds it when the chain's head moves or ``ttl`` seconds passed (an edit made by
SQL that moves nothing is caught by the next re-check).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from fedgate.errors import FedgateError
from fedgate.release_targets import PublishedTarget
from fedgate.server.audit.actors import config_digest
from fedgate.server.audit.checkpoints import checkpoint_at
from fedgate.server.audit.keys import load_pubkeys
from fedgate.server.audit.store import UpdateInfo
from fedgate.server.audit.verify import VerifyReport, check_models, verify_database
from fedgate.server.audit.views import ChainView, build_view
from fedgate.server.auditweb.sources import COORDINATOR, Source
from fedgate.server.coordinator.versions import verify_coordinator
from fedgate.server.db.migrate import open_readonly

ACCURACY = "val-acc"  # the server's validation accuracy of the round's model
LOSS = "val-loss"
GATE_KINDS = ("gate.approved", "gate.rejected", "approval.granted", "approval.refused")
RELEASE_KINDS = ("release.published", "release.channel")
DISTILL = "distill.students"
_EXTRA_KINDS = frozenset(
    ("device.enrolled", "device.revoked", "artifact.produced", "artifact.reproduced",
     "candidate.accepted", "candidate.refused", "global.version", DISTILL, *RELEASE_KINDS,
     *GATE_KINDS)
)  # fmt: skip


@dataclass(frozen=True)
class ChainStatus:
    """The verifier's verdict on one chain, as the overview shows it."""

    source: str
    label: str
    kind: str
    status: str  # verified | in-progress | broken | unreadable
    events: int
    last_seq: int
    head: str
    signed_heads: int
    signatures_checked: bool
    first_bad_seq: int | None
    first_bad_kind: str
    first_problem: str
    problems: list[str]
    checked_at: datetime
    blobs_checked: int  # a region's model blobs, the coordinator's global versions
    in_progress: list[str]
    # the newest signed head that verified: what the verdict is anchored to
    signed_seq: int = 0
    signed_head: str = ""
    signed_at: str = ""
    signed_by: str = ""  # the signing key's fingerprint
    # the largest Merkle checkpoint that matched the tree recomputed from the events: what an
    # outsider keeps to check inclusion and consistency proofs against (C2SP signed note)
    checkpoints_checked: int = 0
    checkpoint_size: int = 0
    checkpoint_root: str = ""
    checkpoint_note: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("verified", "in-progress")


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    region: str
    source: str
    launched_by: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    rounds: int
    config_sha256: str
    final_accuracy: float | None
    accuracy: list[float | None]
    accepted: int
    rejected: int


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    region: str
    profile: str
    public_key: str
    enrolled_at: str
    enrolled_seq: int
    revoked_at: str = ""
    revoked_seq: int = 0
    revoked_reason: str = ""
    revoked_by: str = ""  # the fingerprint of the operator whose signed request revoked it


@dataclass(frozen=True)
class Fate:
    """One update of a device, where it happened."""

    run_id: str
    round: int
    update: UpdateInfo
    claimed: bool  # named by a refused update's envelope only (unverified)


@dataclass(frozen=True)
class ArtifactRecord:
    sha256: str
    run_id: str
    kind: str
    manifest: dict[str, Any]
    seq: int
    ts: str
    reproduced_by: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GateRecord:
    kind: str
    artifact: str
    run_id: str
    approver: str
    approver_name: str
    approved: bool
    reason: str
    checks: list[dict[str, Any]]
    statement_sha256: str
    seq: int
    ts: str


@dataclass(frozen=True)
class CandidateRecord:
    verdict: str
    region: str
    artifact: str
    version: int | None
    reason: str
    detail: str
    seq: int
    ts: str


@dataclass(frozen=True)
class VersionRecord:
    version: int
    base_version: int
    weights: str
    statement: str
    rule: str
    lineage: list[dict[str, Any]]
    seq: int
    ts: str


@dataclass(frozen=True)
class ReleaseRecord:
    """A ``release.published`` event (``action`` published) or a ``release.channel`` event
    (``action`` held, pinned or live: the region's channel changed) of the coordinator."""

    seq: int
    ts: str
    action: str
    global_version: int | None
    lineage: str  # the global version's statement digest the event names ("" on a channel one)
    targets: list[PublishedTarget]
    region: str = ""  # a channel event's region
    previous: str = ""  # a channel event's previous state
    skipped: dict[str, str] = field(default_factory=dict)  # region -> why (held, pinned)


@dataclass(frozen=True)
class DistillRecord:
    """A ``distill.students`` event: the students made from a global version."""

    version: int
    statement: str
    manifest: str  # SHA-256 of students.json
    students: dict[str, str]  # profile -> the student's SHA-256
    seq: int
    ts: str


@dataclass
class Snapshot:
    """Everything the pages show about one chain, from one read of it."""

    source: Source
    status: ChainStatus
    view: ChainView
    runs: list[RunSummary] = field(default_factory=list)
    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    fates: dict[str, list[Fate]] = field(default_factory=dict)
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    gate: list[GateRecord] = field(default_factory=list)
    candidates: list[CandidateRecord] = field(default_factory=list)
    versions: list[VersionRecord] = field(default_factory=list)
    releases: list[ReleaseRecord] = field(default_factory=list)
    distilled: list[DistillRecord] = field(default_factory=list)
    mark: tuple[int, str] = (0, "")
    run_regions: set[str] = field(default_factory=set)
    run_statuses: set[str] = field(default_factory=set)
    # mirror-table comparisons already made against this snapshot (``pages._disagree``)
    compared: dict[tuple[Any, ...], list[str]] = field(default_factory=dict)


def _summary(source: str, view: ChainView) -> list[RunSummary]:
    out = []
    by_run = view.rounds_by_run()
    for run in view.runs.values():
        rounds = by_run[run.id]
        acc = [r.metrics.get(ACCURACY) for r in rounds]
        final = next((a for a in reversed(acc) if a is not None), None)
        out.append(
            RunSummary(
                run.id, run.region, source, run.launched_by, run.status, run.started_at,
                run.finished_at, run.rounds, config_digest(run.config) if run.config else "",
                final, acc, sum(r.accepted for r in rounds), sum(r.rejected for r in rounds),
            )
        )  # fmt: skip
    out.sort(key=lambda r: (r.started_at, r.run_id), reverse=True)  # newest first
    return out


class _Fold:
    """The events ``views.py`` does not fold: devices, artifacts, decisions, versions."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def see(self, seq: int, kind: str, ts: str, payload: str) -> None:
        try:
            data = json.loads(payload)
        except ValueError:  # an edited event: the verifier names it, the fold skips it
            return
        if not isinstance(data, dict):
            return
        snap = self.snap
        if kind == "device.enrolled":
            dev = str(data.get("device", ""))
            snap.devices[dev] = DeviceRecord(
                dev, str(data.get("region", "")), str(data.get("profile", "")),
                str(data.get("public_key", "")), ts, seq,
            )  # fmt: skip
        elif kind == "device.revoked":
            dev = str(data.get("device", ""))
            old = snap.devices.get(dev) or DeviceRecord(dev, str(data.get("region", "")), "", "",
                                                        "", 0)  # fmt: skip
            request = data.get("request") if isinstance(data.get("request"), dict) else {}
            snap.devices[dev] = DeviceRecord(
                old.device_id, old.region, old.profile, old.public_key, old.enrolled_at,
                old.enrolled_seq, ts, seq, str(data.get("reason", "")),
                str(request.get("actor", "")),
            )  # fmt: skip
        elif kind == "artifact.produced":
            snap.artifacts.append(
                ArtifactRecord(str(data.get("sha256", "")), str(data.get("run") or ""),
                               str(data.get("kind", "")), dict(data.get("manifest") or {}),
                               seq, ts)
            )  # fmt: skip
        elif kind == "artifact.reproduced":
            for art in snap.artifacts:
                if art.sha256 == data.get("sha256"):
                    art.reproduced_by.append(str(data.get("run", "")))
        elif kind in GATE_KINDS:
            checks = data.get("checks") or {}
            listed = checks.get("checks") if isinstance(checks, dict) else None
            snap.gate.append(
                GateRecord(
                    kind, str(data.get("artifact", "")), str(data.get("run", "")),
                    str(data.get("approver", "")), str(data.get("approver_name", "")),
                    kind in ("gate.approved", "approval.granted"), str(data.get("reason", "")),
                    [c for c in listed or [] if isinstance(c, dict)],
                    str(data.get("statement_sha256", "")), seq, ts,
                )
            )  # fmt: skip
        elif kind in ("candidate.accepted", "candidate.refused"):
            version = data.get("version")
            snap.candidates.append(
                CandidateRecord(
                    kind.split(".")[1], str(data.get("region", "")),
                    str(data.get("artifact", "")), None if version is None else int(version),
                    str(data.get("reason", "")), str(data.get("detail", "")), seq, ts,
                )
            )  # fmt: skip
        elif kind in RELEASE_KINDS:
            snap.releases.append(_release(seq, kind, ts, data))
        elif kind == DISTILL:
            listed = [e for e in data.get("students") or [] if isinstance(e, dict)]
            snap.distilled.append(
                DistillRecord(
                    _int(data.get("version")) or 0, str(data.get("statement", "")),
                    str(data.get("manifest", "")),
                    {str(e.get("profile", "")): str(e.get("sha256", "")) for e in listed},
                    seq, ts,
                )
            )  # fmt: skip
        elif kind == "global.version":
            snap.versions.append(
                VersionRecord(
                    int(data.get("version", 0)), int(data.get("base_version", 0)),
                    str(data.get("weights", "")), str(data.get("statement", "")),
                    str(data.get("rule", "")),
                    [e for e in data.get("lineage") or [] if isinstance(e, dict)], seq, ts,
                )
            )  # fmt: skip


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _release(seq: int, kind: str, ts: str, data: dict[str, Any]) -> ReleaseRecord:
    targets = [
        PublishedTarget(str(t.get("region", "")), str(t.get("profile", "")),
                       _int(t.get("global_version")) or 0, str(t.get("sha256", "")),
                       _int(t.get("length")) or 0, str(t.get("channel", "")))
        for t in data.get("targets") or [] if isinstance(t, dict)
    ]  # fmt: skip
    if kind == "release.published":
        skipped = data.get("skipped") if isinstance(data.get("skipped"), dict) else {}
        return ReleaseRecord(seq, ts, "published", _int(data.get("global_version")),
                             str(data.get("lineage", "")), targets,
                             skipped={str(k): str(v) for k, v in skipped.items()})  # fmt: skip
    return ReleaseRecord(seq, ts, str(data.get("state", "")), _int(data.get("version")), "",
                         targets, str(data.get("region", "")),
                         str(data.get("previous", "")))  # fmt: skip


def _status(source: Source, report: VerifyReport, blobs: int, kind_at: str) -> ChainStatus:
    first = report.first
    if report.problems:
        status = "broken"
    elif report.in_progress:
        status = "in-progress"
    else:
        status = "verified"
    return ChainStatus(
        source.name, source.label, source.kind, status, report.events, report.last_seq,
        report.head, report.signed_heads, report.heads_checked,
        None if first is None else first.seq, kind_at, "" if first is None else str(first),
        [str(p) for p in report.problems[:20]], datetime.now(UTC), blobs,
        list(report.in_progress), *_signed(report),
    )  # fmt: skip


def _signed(report: VerifyReport) -> tuple[int, str, str, str]:
    head = report.last_head
    return (0, "", "", "") if head is None else (head.seq, head.head, head.signed_at, head.key)


def unreadable(source: Source, why: str) -> ChainStatus:
    """The status of a chain whose database could not be read at all."""
    return ChainStatus(source.name, source.label, source.kind, "unreadable", 0, 0, "", 0, False,
                       None, "", why, [why], datetime.now(UTC), 0, [])  # fmt: skip


def verify_source(source: Source, engine: Engine) -> VerifyReport:
    """Verify one chain as ``fedgate audit verify`` does (with its key when the home has it;
    a region's model blobs, the coordinator's global versions); a ``blobs`` count rides on
    the report's ``models_checked``."""
    keys = load_pubkeys([source.pubkey]) if source.pubkey.is_file() else None
    if source.kind == COORDINATOR:
        report, versions = verify_coordinator(engine, source.blobs, keys)
        report.models_checked = versions
        return report
    report = verify_database(engine, keys)
    if source.blobs.is_dir():
        check_models(report, source.blobs)
    return report


def _events(engine: Engine) -> Iterator[tuple[int, str, str, str]]:
    with engine.connect() as conn:
        result = conn.execute(text("SELECT seq, kind, ts, payload FROM events ORDER BY seq"))
        while rows := result.fetchmany(20_000):
            yield from rows


def _chain_mark(engine: Engine) -> tuple[int, str]:
    with engine.connect() as conn:
        row = conn.execute(text("SELECT seq, head FROM audit_chain")).one()
    return int(row.seq), str(row.head)


def _kind_at(engine: Engine, seq: int | None) -> str:
    if seq is None:
        return ""
    with engine.connect() as conn:
        row = conn.execute(text("SELECT kind FROM events WHERE seq = :s"), {"s": seq}).first()
    return "" if row is None else str(row.kind)


def build_snapshot(source: Source, engine: Engine) -> Snapshot:
    """Verify ``source``'s chain and fold its events (see the module docstring)."""
    mark = _chain_mark(engine)
    report = verify_source(source, engine)
    status = _status(source, report, report.models_checked, _kind_at(engine, report.first
                     and report.first.seq))  # fmt: skip
    if report.last_checkpoint:
        with engine.connect() as conn:
            kept = checkpoint_at(conn, report.last_checkpoint)
        status = replace(status, checkpoints_checked=report.checkpoints_checked,
                         checkpoint_size=kept.size, checkpoint_root=kept.root,
                         checkpoint_note=kept.note)  # fmt: skip
    snap = Snapshot(source, status, ChainView(), mark=mark)
    fold = _Fold(snap)

    def events() -> Iterable[tuple[str, str, str]]:
        for seq, kind, ts, payload in _events(engine):
            if kind in _EXTRA_KINDS:
                fold.see(seq, kind, ts, payload)
            yield kind, ts, payload

    snap.view = build_view(events())
    snap.runs = _summary(source.name, snap.view)
    snap.run_regions = {r.region for r in snap.runs}
    snap.run_statuses = {r.status for r in snap.runs}
    for (run, rnd), updates in snap.view.updates.items():
        for u in updates:
            if u.device_id:
                snap.fates.setdefault(u.device_id, []).append(Fate(run, rnd, u, False))
            elif u.claimed_device_id:
                snap.fates.setdefault(u.claimed_device_id, []).append(Fate(run, rnd, u, True))
    return snap


class Snapshots:
    """One cached ``Snapshot`` per source, rebuilt when its chain head moves or after
    ``ttl`` seconds; a database that cannot be read shows as ``unreadable``."""

    def __init__(self, sources: list[Source], ttl: float = 60.0) -> None:
        self.sources = {s.name: s for s in sources}
        self.ttl = ttl
        self._engines: dict[str, Engine] = {}
        self._cache: dict[str, tuple[float, Snapshot]] = {}
        self._lock = threading.Lock()

    def engine(self, name: str) -> Engine:
        if name not in self._engines:
            self._engines[name] = open_readonly(self.sources[name].url)
        return self._engines[name]

    def get(self, name: str) -> Snapshot:
        source = self.sources[name]
        with self._lock:
            try:
                engine = self.engine(name)
                mark = _chain_mark(engine)
                cached = self._cache.get(name)
                if cached and cached[1].mark == mark and time.monotonic() - cached[0] < self.ttl:
                    return cached[1]
                snap = build_snapshot(source, engine)
            except (FedgateError, SQLAlchemyError, OSError) as exc:  # gone, locked, not ours
                why = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""]
                return Snapshot(source, unreadable(source, why[0]), ChainView())
            self._cache[name] = (time.monotonic(), snap)
            return snap

    def all(self) -> list[Snapshot]:
        return [self.get(name) for name in self.sources]

    def close(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
