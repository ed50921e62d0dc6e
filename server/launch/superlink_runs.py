"""A region's runs as its SuperLink knows them: status, the active ones, stopping one.

Calls Flower's Control API at the region's operator-only address (the same client the
``flwr`` CLI uses), so following a run never depends on a ``flwr`` process staying alive.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgate.server.trust.node_auth import ControlTarget, NodeAuthError, control_session

ACTIVE = ("pending", "starting", "running")


@dataclass(frozen=True)
class LinkRun:
    """One run in the SuperLink's state."""

    run_id: int
    status: str  # pending | starting | running | finished
    sub_status: str = ""  # completed | failed | stopped, once finished
    details: str = ""

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def label(self) -> str:
        return f"{self.status}:{self.sub_status}" if self.sub_status else self.status


def _runs(target: ControlTarget, run_id: int | None = None) -> list[LinkRun]:
    from flwr.proto.control_pb2 import ListRunsRequest  # type: ignore[attr-defined]

    request = ListRunsRequest() if run_id is None else ListRunsRequest(run_id=int(run_id))
    with control_session(target, "listing runs") as client:
        res = client.ListRuns(request)
    return [
        LinkRun(int(rid), run.status.status, run.status.sub_status, run.status.details)
        for rid, run in res.run_dict.items()
    ]


def link_run(target: ControlTarget, run_id: int | str) -> LinkRun | None:
    """The SuperLink's record of ``run_id`` (None when it has none)."""
    try:
        found = _runs(target, int(run_id))
    except NodeAuthError as exc:
        if "HTTP 4" in str(exc):  # Flower answers an unknown run id with a client error
            return None
        raise
    return next((r for r in found if r.run_id == int(run_id)), None)


def active_runs(target: ControlTarget) -> list[LinkRun]:
    """Runs the SuperLink would still start or is running."""
    return [r for r in _runs(target) if r.active]


def stop_link_run(target: ControlTarget, run_id: int | str) -> bool:
    """Ask the SuperLink to stop ``run_id``; False when it was no longer active."""
    from flwr.proto.control_pb2 import StopRunRequest  # type: ignore[attr-defined]

    current = link_run(target, run_id)
    if current is None or not current.active:
        return False
    with control_session(target, f"stopping run {run_id}") as client:
        client.StopRun(StopRunRequest(run_id=int(run_id)))
    return True
