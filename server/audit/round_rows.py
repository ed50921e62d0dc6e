"""What recording a round writes, computed from the round alone: table rows and audit events.

``Store.record_round`` writes these in one transaction; everything here is a pure function of
the round's record, so what lands in the tables and the chain is testable without a database.
Round records are duck-typed: dataclasses (``RoundRecord``/``ClientFate``) or dicts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedgate.server.audit.log import Item


@dataclass(frozen=True)
class RoundWrite:
    """One round's writes: its ``rounds`` row (without ``closed_at``, stamped when written),
    one ``updates`` row per client, the finite metrics' ``metrics`` rows and the audit
    events (``update.*``, ``aggregator.decision``, then ``round.closed``).

    An update's ``claimed_device_id`` is the device id its envelope names, unverified (the
    event's ``claimed_device``, present when not empty); ``device_id`` is the verified one.
    The round's Flower transport errors are counted in its row (``transport_errors``) and
    listed, with their reasons, in ``round.closed`` (present when there are any)."""

    round: dict[str, Any]
    updates: list[dict[str, Any]]
    metrics: list[dict[str, Any]]
    events: list[Item]


def field_of(obj: Any, name: str, default: Any = None) -> Any:
    """``obj[name]`` of a mapping, ``obj.name`` of anything else; ``default`` when absent."""
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is None, NaN or infinite (JSON has neither)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def metric_rows(run: str, rnd: int | None, values: Mapping[str, float | None]) -> list[dict]:
    """A ``metrics`` row per finite value (a non-finite one is audited, not stored)."""
    return [
        {"run_id": run, "round": rnd, "name": k, "value": v}
        for k, v in values.items()
        if v is not None
    ]


def update_row(run: str, rnd: int, client: Any) -> dict[str, Any]:
    """One client's ``updates`` row: its verdict, reason and the aggregator's decision."""
    return {
        "run_id": run,
        "round": rnd,
        "node_id": str(field_of(client, "node_id")),
        "device_id": str(field_of(client, "device_id", "") or ""),
        "claimed_device_id": str(field_of(client, "claimed_device_id", "") or ""),
        "digest": str(field_of(client, "digest", "") or ""),
        "verdict": "accepted" if field_of(client, "accepted") else "rejected",
        "reason": str(field_of(client, "reason", "") or ""),
        "detail": str(field_of(client, "detail", "") or ""),
        "num_examples": int(field_of(client, "num_examples", 0) or 0),
        "fate": str(field_of(client, "fate", "") or ""),
        "score": finite(field_of(client, "score")),
        "weight": finite(field_of(client, "weight", 0.0)) or 0.0,
    }


def update_events(row: Mapping[str, Any]) -> list[Item]:
    """``update.accepted``/``update.rejected`` for an ``updates`` row, and the aggregator's
    decision when it made one."""
    base = {
        "run": row["run_id"],
        "round": row["round"],
        "node": row["node_id"],
        "device": row["device_id"],
    }
    verdict = {
        **base,
        "digest": row["digest"],
        "num_examples": row["num_examples"],
        "reason": row["reason"],
        "detail": row["detail"],
    }
    if row["claimed_device_id"]:
        verdict["claimed_device"] = row["claimed_device_id"]
    events: list[Item] = [(f"update.{row['verdict']}", verdict)]
    if row["fate"]:
        decision = {**base, "fate": row["fate"], "score": row["score"], "weight": row["weight"]}
        events.append(("aggregator.decision", decision))
    return events


def transport_error(error: Any) -> dict[str, Any]:
    """One Flower transport error of a round as ``round.closed`` lists it."""
    node = field_of(error, "node_id")
    return {
        "node": None if node is None else str(node),
        "code": int(field_of(error, "code", 0) or 0),
        "reason": str(field_of(error, "reason", "") or ""),
    }


def round_write(run_id: int | str, record: Any, model_sha256: str = "") -> RoundWrite:
    """Everything recording ``record`` (a ``RoundRecord``-like outcome) writes; with
    ``model_sha256`` the ``round.closed`` event names the round's model in the blob store."""
    run, rnd = str(run_id), int(field_of(record, "round"))
    clients = list(field_of(record, "clients", []) or [])
    transport = [transport_error(e) for e in field_of(record, "transport_errors", []) or []]
    accepted = sum(bool(field_of(c, "accepted")) for c in clients)
    metrics = {str(k): finite(v) for k, v in (field_of(record, "metrics", {}) or {}).items()}
    round_row = {
        "run_id": run,
        "round": rnd,
        "sampled": int(field_of(record, "sampled", len(clients))),
        "accepted": accepted,
        "rejected": len(clients) - accepted,
        "aggregated": bool(field_of(record, "aggregated", False)),
        "note": str(field_of(record, "note", "")),
        "transport_errors": len(transport),
    }
    updates = [update_row(run, rnd, c) for c in clients]
    events = [event for row in updates for event in update_events(row)]
    skip = ("run_id", "transport_errors")
    closed = {"run": run, **{k: v for k, v in round_row.items() if k not in skip}}
    closed["metrics"] = metrics
    if transport:
        closed["transport_errors"] = transport
    if model_sha256:
        closed["model"] = model_sha256
    events.append(("round.closed", closed))
    return RoundWrite(round_row, updates, metric_rows(run, rnd, metrics), events)
