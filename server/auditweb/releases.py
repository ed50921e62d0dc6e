"""Edge releases as the auditor sees them: the coordinator chain's ``release.published`` and
``release.channel`` events, each target (a student per region and profile) checked against
what the chain says it came from, and the lineage drawn from the release back to the devices.

A release's checks: the global version it names is recorded (``global.version``) and its
statement digest is the release's lineage digest; each student is the one distillation
recorded for that version (``distill.students``); and, when the home holds it, the students
manifest on disk (``<home>/coordinator/students/v<N>/students.json``) names the same student
and statement. A check that cannot be made (no distillation event, no manifest in this home)
says so as a warning; one that disagrees is marked bad.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedgate.release_targets import PublishedTarget
from fedgate.server.auditweb.charts import Node
from fedgate.server.auditweb.pages import (
    NotFound,
    PageError,
    _choice,
    _matches,
    coordinator,
    lineage,
    paginate,
)
from fedgate.server.auditweb.snapshot import (
    ReleaseRecord,
    Snapshot,
    Snapshots,
    VersionRecord,
)

ACTIONS = ("published", "held", "pinned", "live")
MAX_MANIFEST = 1 << 20  # bytes of a students.json read for a check


@dataclass(frozen=True)
class Check:
    name: str
    state: str  # ok | bad | warn (could not be checked here)
    detail: str


def _version(coord: Snapshot, number: int | None) -> VersionRecord | None:
    return next((v for v in coord.versions if v.version == number), None)


def _current(coord: Snapshot) -> dict[tuple[str, str], int]:
    """For each (region, profile), the seq of the newest release event that set its target."""
    out: dict[tuple[str, str], int] = {}
    for rel in coord.releases:
        for t in rel.targets:
            out[(t.region, t.profile)] = max(out.get((t.region, t.profile), 0), rel.seq)
    return out


def channels(coord: Snapshot) -> dict[str, str]:
    """Each region's channel as the chain last set it (a region never set: live)."""
    out: dict[str, str] = {}
    for rel in coord.releases:
        for region in {t.region for t in rel.targets} | ({rel.region} if rel.region else set()):
            out.setdefault(region, "live")
        if rel.action != "published" and rel.region:
            at = f" at v{rel.global_version}" if rel.global_version is not None else ""
            out[rel.region] = f"{rel.action}{at}"
    return dict(sorted(out.items()))


def releases(snaps: Snapshots, query: Mapping[str, str]) -> dict[str, Any]:
    """Every target of every release event, newest first; filters: region, profile, action,
    version, state (current: what the region's devices are offered now) and q (digest)."""
    coord = coordinator(snaps)
    events = coord.releases if coord else []
    now = _current(coord) if coord else {}
    rows = [
        {"seq": rel.seq, "ts": rel.ts, "action": rel.action, "lineage": rel.lineage,
         "target": t, "current": now.get((t.region, t.profile)) == rel.seq}
        for rel in events for t in rel.targets
    ]  # fmt: skip
    region = _choice(query, "region", (r["target"].region for r in rows))
    profile = _choice(query, "profile", (r["target"].profile for r in rows))
    action = _choice(query, "action", ACTIONS)
    version = _choice(query, "version", (str(r["target"].global_version) for r in rows))
    state = _choice(query, "state", ("current", "superseded"))
    q = query.get("q", "").strip().lower()
    chosen = [
        r for r in rows
        if (not region or r["target"].region == region)
        and (not profile or r["target"].profile == profile)
        and (not action or r["action"] == action)
        and (not version or str(r["target"].global_version) == version)
        and (not state or r["current"] == (state == "current"))
        and _matches(q, r["target"].sha256, r["lineage"])
    ]  # fmt: skip
    chosen.sort(key=lambda r: (r["seq"], r["target"].region, r["target"].profile), reverse=True)
    return {
        "title": "edge releases", "has_coordinator": coord is not None,
        "table": paginate(chosen, query), "channels": channels(coord) if coord else {},
        "filters": {"region": region, "profile": profile, "action": action, "version": version,
                    "state": state, "q": q},
        "regions": sorted({r["target"].region for r in rows}),
        "profiles": sorted({r["target"].profile for r in rows}),
        "versions": [str(v) for v in sorted({r["target"].global_version for r in rows})],
    }  # fmt: skip


def _manifest(coord: Snapshot, version: int) -> tuple[str, dict[str, Any] | None, str]:
    """The students manifest of ``version`` in this home: (its path in the home, the document
    or None, why not)."""
    shown = f"coordinator/students/v{version}/students.json"
    path = coord.source.blobs.parent / "students" / f"v{version}" / "students.json"
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST + 1)
    except FileNotFoundError:
        return shown, None, "not in this home"
    except OSError as exc:
        return shown, None, f"unreadable: {exc.strerror}"
    if len(raw) > MAX_MANIFEST:
        return shown, None, "larger than 1 MiB"
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return shown, None, f"not JSON: {exc}"
    return (shown, doc, "") if isinstance(doc, dict) else (shown, None, "not a JSON object")


def _manifest_student(doc: Mapping[str, Any], profile: str) -> Mapping[str, Any] | None:
    body = doc.get("students", doc.get("profiles"))
    if isinstance(body, Mapping):
        entry = body.get(profile)
        return entry if isinstance(entry, Mapping) else None
    if isinstance(body, list):
        return next((e for e in body if isinstance(e, Mapping) and e.get("profile") == profile),
                    None)  # fmt: skip
    return None


def checks(coord: Snapshot, rel: ReleaseRecord) -> list[Check]:
    """What the release is checked against (see the module docstring)."""
    out: list[Check] = []
    for number in sorted({t.global_version for t in rel.targets}):
        version = _version(coord, number)
        if version is None:
            out.append(Check(f"global v{number}", "bad",
                             "the coordinator's chain records no such global version"))  # fmt: skip
            continue
        out.append(Check(f"global v{number}", "ok", f"recorded at event {version.seq}"))
        if rel.lineage:
            same = rel.lineage == version.statement
            out.append(Check(
                "lineage digest", "ok" if same else "bad",
                f"{rel.lineage[:16]} is {'' if same else 'NOT '}the SHA-256 of v{number}'s "
                f"signed statement ({version.statement[:16]})",
            ))  # fmt: skip
        distilled = [d for d in coord.distilled if d.version == number]
        doc_path, doc, why = _manifest(coord, number)
        if doc is not None:
            named = str(doc.get("statement_sha256") or doc.get("lineage_digest") or "")
            if named:
                same = named == version.statement
                out.append(Check(
                    "students.json statement", "ok" if same else "bad",
                    f"{doc_path} names statement {named[:16]}"
                    + ("" if same else f", not v{number}'s {version.statement[:16]}"),
                ))  # fmt: skip
        for t in (t for t in rel.targets if t.global_version == number):
            out.extend(_student_checks(t, distilled[-1].students if distilled else None,
                                       doc, doc_path, why))  # fmt: skip
    return out


def _student_checks(t: PublishedTarget, recorded: Mapping[str, str] | None,
                    doc: Mapping[str, Any] | None, doc_path: str,
                    why: str) -> list[Check]:  # fmt: skip
    name = f"{t.region}/{t.profile}"
    out = []
    if recorded is None:
        why_not = f"no distill.students event for v{t.global_version} in the chain"
        out.append(Check(f"{name}: distilled", "warn", why_not))
    else:
        got = recorded.get(t.profile)
        same = got == t.sha256
        out.append(Check(
            f"{name}: distilled", "ok" if same else "bad",
            f"student {t.sha256[:16]} is {'' if same else 'NOT '}the {t.profile} student "
            f"distillation recorded for v{t.global_version}"
            + ("" if same else f" ({(got or 'none')[:16]})"),
        ))  # fmt: skip
    if doc is None:
        out.append(Check(f"{name}: students.json", "warn", f"{doc_path}: {why}"))
    else:
        entry = _manifest_student(doc, t.profile)
        got = str(entry.get("sha256", "")) if entry is not None else ""
        same = got == t.sha256
        out.append(Check(
            f"{name}: students.json", "ok" if same else "bad",
            f"{doc_path} lists the {t.profile} student as {(got or 'nothing')[:16]}"
            + ("" if same else f", the release ships {t.sha256[:16]}"),
        ))  # fmt: skip
    return out


def release_page(snaps: Snapshots, seq: int) -> dict[str, Any]:
    """One release event: its targets, its checks and its lineage back to the devices."""
    coord = coordinator(snaps)
    rel = next((r for r in coord.releases if r.seq == seq), None) if coord else None
    if coord is None or rel is None:
        raise NotFound(f"no edge release at coordinator event {seq}")
    numbers = sorted({t.global_version for t in rel.targets})
    if len(numbers) > 1:  # fedgate never writes this; shown, not drawn
        raise PageError(f"release event {seq} names several global versions: {numbers}")
    number = numbers[0] if numbers else rel.global_version
    version = _version(coord, number)
    found = checks(coord, rel)
    roots = [(str(e.get("region", "")), str(e.get("weights") or e.get("artifact", "")))
             for e in (version.lineage if version else [])]  # fmt: skip
    bad = {c.name.split(":")[0] for c in found if c.state == "bad"}
    leading = [
        Node(f"t:{t.region}:{t.profile}", f"{t.region}/{t.profile} {t.sha256[:8]}", 0,
             f"/releases?region={t.region}&profile={t.profile}",
             "bad" if f"{t.region}/{t.profile}" in bad else "")
        for t in rel.targets
    ]  # fmt: skip
    graph = lineage(snaps, roots, number if version else None, leading)
    now = _current(coord)
    return {
        "title": f"edge release {seq} ({rel.action})", "release": rel, "version": version,
        "global_version": number, "checks": found, "ok": not any(c.state == "bad" for c in found),
        "current": {f"{t.region}/{t.profile}": now.get((t.region, t.profile)) == rel.seq
                    for t in rel.targets},
        "lineage": graph,
    }  # fmt: skip


def shipped(snaps: Snapshots, source: str, run: str) -> list[dict[str, Any]]:
    """Where run ``run`` of region ``source`` went: per artifact it produced (or reproduced),
    the global versions whose lineage names it, the release events that shipped each, and the
    later global versions built on it."""
    coord = coordinator(snaps)
    snap = snaps.get(source)
    out: list[dict[str, Any]] = []
    for art in (a for a in snap.artifacts if a.run_id == run or run in a.reproduced_by):
        refs = {art.sha256, str(art.manifest.get("envelope_sha256", ""))} - {""}
        direct = sorted(
            v.version for v in (coord.versions if coord else [])
            if any(e.get("region") == source and {e.get("weights"), e.get("artifact")} & refs
                   for e in v.lineage)
        )  # fmt: skip
        later: set[int] = set()
        for v in sorted(coord.versions if coord else [], key=lambda v: v.version):
            if v.base_version in set(direct) | later and v.version not in direct:
                later.add(v.version)
        for number in direct:
            rels = [
                {"seq": r.seq, "ts": r.ts, "action": r.action,
                 "targets": [t for t in r.targets if t.global_version == number]}
                for r in (coord.releases if coord else [])
                if any(t.global_version == number for t in r.targets)
            ]  # fmt: skip
            out.append({"artifact": art.sha256, "version": number, "releases": rels,
                        "built_on_by": sorted(later)})  # fmt: skip
        if not direct:
            out.append({"artifact": art.sha256, "version": None, "releases": [],
                        "built_on_by": []})  # fmt: skip
    return out
