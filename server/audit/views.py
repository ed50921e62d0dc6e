"""The auditor's views (runs, rounds, one round's clients) as the audit chain states them,
and every way the mirror tables (``runs``, ``rounds``, ``updates``, ``metrics``) disagree.

The tables are a convenience the chain does not cover: someone who can write the database
can edit them without breaking a hash. So the views are rebuilt from the events, and a
table row that says something else is reported, never shown as the truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine

from fedgate.server.audit.log import AuditLog
from fedgate.server.audit.store import RoundInfo, RunInfo, Store, StoreError, UpdateInfo

CLOCK_SLACK = timedelta(seconds=60)  # a row's timestamp is taken in the same transaction


def _ts(ts: str) -> datetime:
    """An event's fixed-width UTC timestamp (``chain.TS_RE``); ``fromisoformat`` is some ten
    times faster than ``strptime``, which matters over a million events."""
    return datetime.fromisoformat(ts).astimezone(UTC)


def _finite(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, dict):
        return {}
    return {str(k): float(v) for k, v in metrics.items() if isinstance(v, int | float)}


@dataclass
class ChainView:
    """Runs, rounds and client fates as the chain's events state them."""

    runs: dict[str, RunInfo] = field(default_factory=dict)
    rounds: dict[tuple[str, int], RoundInfo] = field(default_factory=dict)
    updates: dict[tuple[str, int], list[UpdateInfo]] = field(default_factory=dict)
    metrics: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)

    def run_rounds(self, run: str) -> list[RoundInfo]:
        if run not in self.runs:
            raise StoreError(f"no run {run}")
        return sorted((r for (k, _), r in self.rounds.items() if k == run), key=lambda r: r.round)

    def rounds_by_run(self) -> dict[str, list[RoundInfo]]:
        """Every run's rounds in order, in one pass (``run_rounds`` for all runs at once)."""
        out: dict[str, list[RoundInfo]] = {run: [] for run in self.runs}
        for (run, _), info in sorted(self.rounds.items(), key=lambda kv: kv[0][1]):
            out.setdefault(run, []).append(info)
        return out

    def round_detail(self, run: str, rnd: int) -> tuple[RoundInfo, list[UpdateInfo]]:
        if (run, rnd) not in self.rounds:
            raise StoreError(f"no round {rnd} in run {run}")
        return self.rounds[run, rnd], list(self.updates.get((run, rnd), []))


def _set(info: Any, **changes: Any) -> Any:
    return type(info)(**{**{f.name: getattr(info, f.name) for f in fields(info)}, **changes})


def build_view(events: Any) -> ChainView:
    """Fold ``(kind, ts, payload)`` events, in seq order, into the views; an event whose
    payload is not a JSON object (edited: the verifier names it) is skipped."""
    view = ChainView()
    for kind, ts, payload in events:
        try:
            data = json.loads(payload)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        run = str(data.get("run", ""))
        if kind == "run.launched":
            view.runs[run] = RunInfo(
                run,
                str(data.get("region", "")),
                str(data.get("launched_by", "")),
                dict(data.get("config") or {}),
                "running",
                _ts(ts),
                None,
                0,
            )
        elif kind == "run.finished" and run in view.runs and view.runs[run].status == "running":
            view.runs[run] = _set(
                view.runs[run], status=str(data.get("status")), finished_at=_ts(ts)
            )
        elif kind == "run.stopped":
            if run not in view.runs:
                view.runs[run] = RunInfo(
                    run,
                    str(data.get("region", "")),
                    str(data.get("by", "")),
                    {},
                    "stopped",
                    _ts(ts),
                    _ts(ts),
                    0,
                )
            elif view.runs[run].status == "running":
                view.runs[run] = _set(view.runs[run], status="stopped", finished_at=_ts(ts))
        elif kind == "evaluation" and data.get("round") is not None:
            key = (run, int(data["round"]))
            view.metrics.setdefault(key, {}).update(_finite(data.get("metrics")))
            if key in view.rounds:
                view.rounds[key] = _set(view.rounds[key], metrics=dict(view.metrics[key]))
        elif kind in ("update.accepted", "update.rejected"):
            view.updates.setdefault((run, int(data["round"])), []).append(
                UpdateInfo(
                    str(data.get("node", "")),
                    str(data.get("device", "")),
                    str(data.get("digest", "")),
                    kind.split(".")[1],
                    str(data.get("reason", "")),
                    str(data.get("detail", "")),
                    int(data.get("num_examples", 0)),
                    "",
                    None,
                    0.0,
                    str(data.get("claimed_device", "")),
                )
            )
        elif kind == "aggregator.decision":
            ups = view.updates.get((run, int(data["round"])), [])
            for i in range(len(ups) - 1, -1, -1):
                if ups[i].node_id == str(data.get("node", "")):
                    score = data.get("score")
                    ups[i] = _set(
                        ups[i],
                        fate=str(data.get("fate", "")),
                        score=None if score is None else float(score),
                        weight=float(data.get("weight") or 0.0),
                    )
                    break
        elif kind == "round.closed":
            key = (run, int(data["round"]))
            metrics = view.metrics.setdefault(key, {})
            metrics.update(_finite(data.get("metrics")))  # the table's insertion order
            view.rounds[key] = RoundInfo(
                run,
                key[1],
                int(data.get("sampled", 0)),
                int(data.get("accepted", 0)),
                int(data.get("rejected", 0)),
                bool(data.get("aggregated")),
                str(data.get("note", "")),
                _ts(ts),
                dict(metrics),
                len(data.get("transport_errors") or []),
            )
            if run in view.runs:
                view.runs[run] = _set(view.runs[run], rounds=view.runs[run].rounds + 1)
    return view


def read_view(engine: Engine) -> ChainView:
    log = AuditLog(engine)
    return build_view((e.kind, e.ts, e.payload) for e in log.events())


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, datetime) and isinstance(b, datetime):
        a, b = (x if x.tzinfo else x.replace(tzinfo=UTC) for x in (a, b))
        return abs(a - b) <= CLOCK_SLACK
    return a == b


def _diff(table: str, what: str, chain: Any, row: Any, skip: tuple[str, ...] = ()) -> list[str]:
    return [
        f"{table} {what}: {f.name} is {getattr(row, f.name)!r} in the table, "
        f"{getattr(chain, f.name)!r} in the audit chain"
        for f in fields(chain)
        if f.name not in skip and not _same(getattr(chain, f.name), getattr(row, f.name))
    ]


def _keyed(items: list[Any], key: str) -> dict[Any, Any]:
    """``items`` by (their ``key``, how many before them had it)."""
    out: dict[Any, Any] = {}
    seen: dict[Any, int] = {}
    for item in items:
        name = getattr(item, key)
        n = seen.get(name, 0)
        seen[name] = n + 1
        out[name, n] = item
    return out


def _compare(table: str, chain: dict, rows: dict, label: Any, skip: tuple = ()) -> list[str]:
    out = []
    for key in chain.keys() | rows.keys():
        what = label(key)
        if key not in rows:
            out.append(f"{table} {what}: in the audit chain, missing from the table")
        elif key not in chain:
            out.append(f"{table} {what}: in the table, not in the audit chain")
        else:
            out.extend(_diff(table, what, chain[key], rows[key], skip))
    return sorted(out)


def runs_disagreements(view: ChainView, store: Store) -> list[str]:
    rows = {r.id: r for r in store.runs()}
    return _compare("runs", view.runs, rows, lambda k: f"run {k}")


def rounds_disagreements(view: ChainView, store: Store, run: str) -> list[str]:
    chain = {r.round: r for r in view.run_rounds(run)}
    try:
        rows = {r.round: r for r in store.rounds(run)}
    except StoreError:
        rows = {}
    return _compare("rounds", chain, rows, lambda k: f"run {run} round {k}")


def round_disagreements(view: ChainView, store: Store, run: str, rnd: int) -> list[str]:
    info, updates = view.round_detail(run, rnd)
    try:
        row, rows = store.round_detail(run, rnd)
    except StoreError:
        return [f"rounds run {run} round {rnd}: in the audit chain, missing from the table"]
    out = _compare("rounds", {rnd: info}, {rnd: row}, lambda k: f"run {run} round {k}")
    return out + _compare(
        "updates",
        _keyed(updates, "node_id"),
        _keyed(rows, "node_id"),
        lambda k: f"run {run} round {rnd} node {k[0]}" + (f" (#{k[1] + 1})" if k[1] else ""),
    )
