"""Each page's data, from the snapshots and the query: plain records the templates render and
the JSON twin returns as they are. Tables paginate (``page``, ``per_page``) and filter (each
page's own parameters); a bad parameter is a ``PageError`` naming it."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from fedgate.errors import UsageError
from fedgate.server.audit.legend import LEGEND
from fedgate.server.audit.store import StoreError
from fedgate.server.audit.views import round_disagreements, rounds_disagreements
from fedgate.server.auditweb.charts import Line, Node, line_chart, lineage_graph, stacked_bars
from fedgate.server.auditweb.snapshot import (
    ACCURACY,
    LOSS,
    ArtifactRecord,
    Snapshot,
    Snapshots,
)

T = TypeVar("T")
PER_PAGE, MAX_PER_PAGE = 50, 1000
DEVICES_PER_RUN = 12  # in a lineage graph; the rest are counted


class PageError(UsageError):
    """A query parameter out of range, or a run, round or device that does not exist."""

    status = 400


class NotFound(PageError):
    status = 404


def plain(obj: Any) -> Any:
    """JSON-ready copy of records, datetimes, tuples and mappings."""
    if isinstance(obj, Paged):
        return {"items": plain(obj.items), "page": obj.page, "per_page": obj.per_page,
                "total": obj.total, "pages": obj.pages}  # fmt: skip
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


@dataclass(frozen=True)
class Paged:
    items: list[Any]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


def _int(query: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PageError(f"{name} must be a whole number, got {raw!r}") from None
    if not lo <= value <= hi:
        raise PageError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def paginate(items: Sequence[T], query: Mapping[str, str]) -> Paged:
    per_page = _int(query, "per_page", PER_PAGE, 1, MAX_PER_PAGE)
    pages = max(1, math.ceil(len(items) / per_page))
    page = _int(query, "page", 1, 1, 10**9)
    page = min(page, pages)
    return Paged(list(items[(page - 1) * per_page : page * per_page]), page, per_page, len(items))


def _choice(query: Mapping[str, str], name: str, allowed: Iterable[str]) -> str:
    """The query's value for ``name`` ("" when absent), which must be one of ``allowed``
    (iterated only when a value is given)."""
    value = query.get(name, "")
    if not value:
        return ""
    allowed = sorted(set(allowed))
    if value not in allowed:
        raise PageError(f"{name} must be one of {', '.join(allowed) or '(none here)'}; "
                        f"got {value!r}")  # fmt: skip
    return value


def _matches(q: str, *fields: str) -> bool:
    return not q or any(q in f.lower() for f in fields)


def _snap(snaps: Snapshots, name: str) -> Snapshot:
    if name not in snaps.sources:
        raise NotFound(f"no chain named {name!r} in this home")
    return snaps.get(name)


# -- overview ---------------------------------------------------------------------------------


def overview(snaps: Snapshots) -> dict[str, Any]:
    chains = []
    for snap in snaps.all():
        chains.append({
            "status": snap.status, "runs": len(snap.runs), "devices": len(snap.devices),
            "artifacts": len(snap.artifacts), "versions": len(snap.versions),
        })  # fmt: skip
    return {"title": "overview", "chains": chains,
            "all_ok": all(c["status"].ok for c in chains)}  # fmt: skip


# -- runs -------------------------------------------------------------------------------------


def runs(snaps: Snapshots, query: Mapping[str, str]) -> dict[str, Any]:
    snapshots = snaps.all()
    every = [r for snap in snapshots for r in snap.runs]  # each snapshot's: newest first
    regions = sorted({name for snap in snapshots for name in snap.run_regions})
    statuses = sorted({name for snap in snapshots for name in snap.run_statuses})
    region = _choice(query, "region", regions)
    status = _choice(query, "status", statuses)
    q = query.get("q", "").strip().lower()
    chosen = every
    if region or status or q:
        chosen = [
            r for r in every
            if (not region or r.region == region) and (not status or r.status == status)
            and _matches(q, r.run_id, r.launched_by, r.config_sha256)
        ]  # fmt: skip
    if len(snapshots) > 1:
        chosen = sorted(chosen, key=lambda r: (r.started_at, r.run_id), reverse=True)
    return {
        "title": "runs", "table": paginate(chosen, query),
        "filters": {"region": region, "status": status, "q": q},
        "regions": regions, "statuses": statuses,
    }  # fmt: skip


def _run(snaps: Snapshots, source: str, run: str) -> tuple[Snapshot, Any]:
    snap = _snap(snaps, source)
    if run not in snap.view.runs:
        raise NotFound(f"no run {run!r} in {snap.source.label}")
    return snap, next(r for r in snap.runs if r.run_id == run)


def run_page(snaps: Snapshots, source: str, run: str, query: Mapping[str, str]) -> dict[str, Any]:
    snap, summary = _run(snaps, source, run)
    info = snap.view.runs[run]
    rounds = snap.view.run_rounds(run)
    numbers = [r.round for r in rounds]
    acc = [r.metrics.get(ACCURACY) for r in rounds]
    loss = [r.metrics.get(LOSS) for r in rounds]
    reasons: Counter[str] = Counter()
    rows = []
    for r in rounds:
        updates = snap.view.updates.get((run, r.round), [])
        why = Counter(u.reason for u in updates if u.verdict == "rejected")
        reasons.update(why)
        rows.append({
            "round": r, "fates": dict(Counter(u.fate for u in updates if u.fate)),
            "rejected_by_reason": dict(why), "choice": r.note,
        })  # fmt: skip
    charts = {
        "metrics": line_chart(f"run {run}: accuracy and loss per round", numbers,
                              [Line(ACCURACY, acc), Line(LOSS, loss)]),
        "updates": stacked_bars("accepted (green) and rejected (red) updates per round", numbers,
                                [r.accepted for r in rounds], [r.rejected for r in rounds]),
    }  # fmt: skip
    artifacts = [a for a in snap.artifacts if a.run_id == run or run in a.reproduced_by]
    aggregated = _choice(query, "aggregated", ("yes", "no"))
    rejections = _choice(query, "rejections", ("some", "none"))
    shown = [
        row for row in rows
        if (not aggregated or row["round"].aggregated == (aggregated == "yes"))
        and (not rejections or bool(row["round"].rejected) == (rejections == "some"))
    ]  # fmt: skip
    return {
        "title": f"run {run}", "source": source, "run": info, "summary": summary,
        "config": info.config, "table": paginate(shown, query), "rounds": len(rounds),
        "filters": {"aggregated": aggregated, "rejections": rejections},
        "rejected_by_reason": dict(reasons.most_common()), "charts": charts,
        "artifacts": artifacts, "disagreements": _disagree(snaps, snap, rounds_disagreements,
                                                           run),
        "legend": LEGEND,
    }  # fmt: skip


def _disagree(snaps: Snapshots, snap: Snapshot, check: Callable[..., list[str]],
              *args: Any) -> list[str]:  # fmt: skip
    """Mirror-table rows that say something else than the chain (``views.py``), compared once
    per snapshot (a re-check of the chain compares again)."""
    from fedgate.server.audit.store import Store  # reading its tables only

    key = (check.__name__, *args)
    if key not in snap.compared:
        try:
            found = check(snap.view, Store(snaps.engine(snap.source.name)), *args)
        except StoreError:
            found = []
        snap.compared[key] = found
    return snap.compared[key]


def round_page(snaps: Snapshots, source: str, run: str, rnd: int,
               query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
    snap, _ = _run(snaps, source, run)
    if (run, rnd) not in snap.view.rounds:
        raise NotFound(f"no round {rnd} in run {run!r} of {snap.source.label}")
    info, updates = snap.view.round_detail(run, rnd)
    verdict = _choice(query, "verdict", ("accepted", "rejected"))
    reason = _choice(query, "reason", (u.reason for u in updates if u.reason))
    fate = _choice(query, "fate", (u.fate for u in updates if u.fate))
    q = query.get("q", "").strip().lower()
    chosen = [
        u for u in updates
        if (not verdict or u.verdict == verdict) and (not reason or u.reason == reason)
        and (not fate or u.fate == fate)
        and _matches(q, u.node_id, u.device_id, u.claimed_device_id, u.digest, u.detail)
    ]  # fmt: skip
    return {
        "title": f"run {run} round {rnd}", "source": source, "run_id": run, "round": info,
        "table": paginate(chosen, query),
        "filters": {"verdict": verdict, "reason": reason, "fate": fate, "q": q},
        "reasons": sorted({u.reason for u in updates if u.reason}),
        "fates": sorted({u.fate for u in updates if u.fate}),
        "has_previous": (run, rnd - 1) in snap.view.rounds,
        "has_next": (run, rnd + 1) in snap.view.rounds,
        "disagreements": _disagree(snaps, snap, round_disagreements, run, rnd),
        "legend": LEGEND,
    }  # fmt: skip


# -- devices ----------------------------------------------------------------------------------


def devices(snaps: Snapshots, query: Mapping[str, str]) -> dict[str, Any]:
    rows = []
    for snap in snaps.all():
        for dev in snap.devices.values():
            fates = snap.fates.get(dev.device_id, [])
            rows.append({
                "source": snap.source.name, "device": dev,
                "accepted": sum(f.update.verdict == "accepted" for f in fates),
                "rejected": sum(f.update.verdict == "rejected" for f in fates),
                "runs": len({f.run_id for f in fates}),
            })  # fmt: skip
    state = _choice(query, "state", ("active", "revoked"))
    region = _choice(query, "region", (r["source"] for r in rows))
    q = query.get("q", "").strip().lower()
    chosen = [
        r for r in rows
        if (not region or r["source"] == region) and _matches(q, r["device"].device_id,
                                                              r["device"].profile)
        and (not state or (state == "revoked") == bool(r["device"].revoked_at))
    ]  # fmt: skip
    return {"title": "devices", "table": paginate(chosen, query),
            "filters": {"state": state, "region": region, "q": q},
            "regions": sorted({r["source"] for r in rows})}  # fmt: skip


def device_page(snaps: Snapshots, source: str, device: str,
                query: Mapping[str, str]) -> dict[str, Any]:  # fmt: skip
    snap = _snap(snaps, source)
    record = snap.devices.get(device)
    fates = snap.fates.get(device, [])
    if record is None and not fates:
        raise NotFound(f"no device {device!r} in {snap.source.label}")
    verdict = _choice(query, "verdict", ("accepted", "rejected"))
    run = _choice(query, "run", (f.run_id for f in fates))
    chosen = [f for f in fates if (not verdict or f.update.verdict == verdict)
              and (not run or f.run_id == run)]  # fmt: skip
    chosen.sort(key=lambda f: (f.run_id, f.round), reverse=True)
    return {
        "title": f"device {device[:16]}", "source": source, "device_id": device,
        "record": record, "table": paginate(chosen, query),
        "filters": {"verdict": verdict, "run": run},
        "runs": sorted({f.run_id for f in fates}), "legend": LEGEND,
    }  # fmt: skip


# -- the global tier: artifacts, gate decisions, global versions -------------------------------


def artifacts(snaps: Snapshots, query: Mapping[str, str]) -> dict[str, Any]:
    rows = []
    for snap in snaps.all():
        for art in snap.artifacts:
            decisions = [g for g in snap.gate if g.artifact == art.sha256]
            rows.append({"source": snap.source.name, "artifact": art, "decisions": decisions,
                         "approved": any(g.approved for g in decisions),
                         "refused": any(not g.approved for g in decisions)})  # fmt: skip
    region = _choice(query, "region", (r["source"] for r in rows))
    decision = _choice(query, "decision", ("approved", "refused", "undecided"))
    q = query.get("q", "").strip().lower()

    def state(row: dict[str, Any]) -> str:
        return "approved" if row["approved"] else "refused" if row["refused"] else "undecided"

    chosen = [r for r in rows if (not region or r["source"] == region)
              and (not decision or state(r) == decision)
              and _matches(q, r["artifact"].sha256, r["artifact"].run_id)]  # fmt: skip
    chosen.sort(key=lambda r: r["artifact"].ts, reverse=True)
    return {"title": "artifacts", "table": paginate(chosen, query),
            "filters": {"region": region, "decision": decision, "q": q},
            "regions": sorted({r["source"] for r in rows})}  # fmt: skip


def _find_artifact(snaps: Snapshots, ref: str, region: str = "") -> tuple[Snapshot, Any] | None:
    """The regional artifact ``ref`` names: its weights' digest (the region's key for it) or
    its signed manifest's digest (what the coordinator calls the artifact)."""
    for snap in snaps.all():
        if region and snap.source.name != region:
            continue
        for art in snap.artifacts:
            if ref in (art.sha256, art.manifest.get("envelope_sha256")):
                return snap, art
    return None


def artifact_page(snaps: Snapshots, source: str, sha: str) -> dict[str, Any]:
    snap = _snap(snaps, source)
    art = next((a for a in snap.artifacts if a.sha256 == sha), None)
    if art is None:
        raise NotFound(f"no artifact {sha!r} in {snap.source.label}")
    decisions = [g for g in snap.gate if g.artifact == sha]
    graph = lineage(snaps, [(source, sha)], None)
    return {"title": f"artifact {sha[:16]}", "source": source, "artifact": art,
            "decisions": decisions, "lineage": graph}  # fmt: skip


def gate(snaps: Snapshots, query: Mapping[str, str]) -> dict[str, Any]:
    rows = [{"source": s.source.name, "decision": g} for s in snaps.all() for g in s.gate]
    region = _choice(query, "region", (r["source"] for r in rows))
    decision = _choice(query, "decision", ("approved", "refused"))
    chosen = [r for r in rows if (not region or r["source"] == region)
              and (not decision or r["decision"].approved == (decision == "approved"))]  # fmt: skip
    chosen.sort(key=lambda r: r["decision"].ts, reverse=True)
    return {"title": "gate decisions", "table": paginate(chosen, query),
            "filters": {"region": region, "decision": decision},
            "regions": sorted({r["source"] for r in rows})}  # fmt: skip


def coordinator(snaps: Snapshots) -> Snapshot | None:
    for snap in snaps.all():
        if snap.source.kind == "coordinator":
            return snap
    return None


def global_versions(snaps: Snapshots, query: Mapping[str, str]) -> dict[str, Any]:
    coord = coordinator(snaps)
    versions = sorted(coord.versions if coord else [], key=lambda v: v.version, reverse=True)
    regions = sorted({str(e.get("region", "")) for v in versions for e in v.lineage})
    region = _choice(query, "region", regions)
    if region:
        versions = [v for v in versions if any(e.get("region") == region for e in v.lineage)]
    candidates = coord.candidates if coord else []
    verdict = _choice(query, "verdict", ("accepted", "refused"))
    chosen = [c for c in candidates if not verdict or c.verdict == verdict]
    return {"title": "global versions", "has_coordinator": coord is not None,
            "table": paginate(versions, query),
            "candidates": paginate(sorted(chosen, key=lambda c: c.seq, reverse=True),
                                   {"page": query.get("cpage", ""),
                                    "per_page": query.get("per_page", "")}),
            "filters": {"verdict": verdict, "region": region}, "regions": regions}  # fmt: skip


def version_page(snaps: Snapshots, number: int) -> dict[str, Any]:
    coord = coordinator(snaps)
    version = next((v for v in coord.versions if v.version == number), None) if coord else None
    if version is None:
        raise NotFound(f"no global version {number}")
    roots = [(str(e.get("region", "")), str(e.get("weights") or e.get("artifact", "")))
             for e in version.lineage]  # fmt: skip
    candidates = [c for c in coord.candidates if c.version == number] if coord else []
    shipped = [r for r in coord.releases if any(t.global_version == number for t in r.targets)]
    return {"title": f"global version {number}", "version": version, "candidates": candidates,
            "lineage": lineage(snaps, roots, number), "releases": shipped}  # fmt: skip


def lineage(snaps: Snapshots, roots: Sequence[tuple[str, str]], version: int | None,
            leading: Sequence[Node] = ()) -> dict[str, Any]:  # fmt: skip
    """The graph from a global version (or an artifact) back to the runs and the devices whose
    accepted updates went in; and the same as plain data for the JSON twin. ``leading`` nodes
    (an edge release's students) come first, each joined to the global version."""
    nodes: list[Node] = list(leading)
    edges: list[tuple[str, str]] = []
    plain_roots = []
    offset = 1 if leading else 0
    if version is not None:
        nodes.append(Node("v", f"global v{version}", offset, f"/global/{version}"))
        edges += [(n.key, "v") for n in leading]
        offset += 1
    for region, sha in roots:
        found = _find_artifact(snaps, sha, region)
        akey = f"a:{region}:{sha}"
        art: ArtifactRecord | None = found[1] if found else None
        snap = found[0] if found else None
        weights = art.sha256 if art else sha
        approvers = [g.approver_name or g.approver[:12] for g in (snap.gate if snap else [])
                     if g.artifact == weights and g.approved]  # fmt: skip
        label = f"{region} {sha[:10]}" + (f" ✓{approvers[0]}" if approvers else "")
        nodes.append(Node(akey, label, offset, f"/artifacts/{region}/{weights}" if art else "",
                          "" if art else "bad"))  # fmt: skip
        if version is not None:
            edges.append(("v", akey))
        entry: dict[str, Any] = {"region": region, "artifact": sha, "approved_by": approvers,
                                 "found": art is not None, "runs": []}  # fmt: skip
        if art is not None and snap is not None:
            for run in [art.run_id, *art.reproduced_by]:
                rkey = f"r:{region}:{run}"
                nodes.append(Node(rkey, f"run {run}", offset + 1, f"/runs/{region}/{run}"))
                edges.append((akey, rkey))
                devices = sorted({u.device_id for (r, _), ups in snap.view.updates.items()
                                  if r == run for u in ups
                                  if u.verdict == "accepted" and u.device_id})  # fmt: skip
                entry["runs"].append({"run": run, "devices": devices})
                for dev in devices[:DEVICES_PER_RUN]:
                    dkey = f"d:{region}:{dev}"
                    revoked = bool(snap.devices.get(dev) and snap.devices[dev].revoked_at)
                    if all(n.key != dkey for n in nodes):
                        nodes.append(
                            Node(
                                dkey,
                                f"device {dev[:16]}",
                                offset + 2,
                                f"/devices/{region}/{dev}",
                                "bad" if revoked else "",
                            )
                        )
                    edges.append((rkey, dkey))
                if len(devices) > DEVICES_PER_RUN:
                    more = f"m:{region}:{run}"
                    nodes.append(
                        Node(
                            more,
                            f"+{len(devices) - DEVICES_PER_RUN} more devices",
                            offset + 2,
                            f"/runs/{region}/{run}",
                        )
                    )
                    edges.append((rkey, more))
        plain_roots.append(entry)
    headers = [*(["edge release (region/profile)"] if leading else []),
               *(["global version"] if version is not None else []), "regional artifact",
               "run", "devices (accepted updates)"]  # fmt: skip
    return {"svg": lineage_graph(nodes, edges, headers), "roots": plain_roots}
