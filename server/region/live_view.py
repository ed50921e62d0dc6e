"""Per-round progress of one or more region runs as a live rich table (plain lines off a TTY)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


@dataclass
class RegionRow:
    """What the board shows for one region."""

    region: str
    rounds: int
    round: int = 0
    accepted: int = 0
    rejected: int = 0
    train_loss: float | None = None
    fed_acc: float | None = None  # devices' rating of the model of round ``fed_round``
    fed_round: int | None = None
    val_acc: float | None = None
    status: str = "starting"
    history: list[dict[str, Any]] = field(default_factory=list)


class RunBoard:
    """Collects progress events and renders them; use as a context manager."""

    def __init__(self, rounds: dict[str, int], console: Console | None = None) -> None:
        self.console = console or Console()
        self.rows = {r: RegionRow(r, n) for r, n in rounds.items()}
        self.t0 = time.monotonic()
        self._live: Live | None = None

    def __enter__(self) -> RunBoard:
        if self.console.is_terminal:
            self._live = Live(self.table(), console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self.table())
            self._live.__exit__(None, None, None)

    def table(self) -> Table:
        t = Table(title=f"fedgate rounds ({time.monotonic() - self.t0:.0f} s)")
        for col in ("region", "round", "accepted", "rejected", "train loss", "fed acc",
                    "val acc", "status"):  # fmt: skip
            t.add_column(col, justify="left" if col in ("region", "status") else "right")
        for row in self.rows.values():
            t.add_row(
                row.region, f"{row.round}/{row.rounds}", str(row.accepted), str(row.rejected),
                _fmt(row.train_loss), _fmt(row.fed_acc) + _of(row.fed_round), _fmt(row.val_acc),
                row.status,
            )  # fmt: skip
        return t

    def on_event(self, region: str, event: dict[str, Any]) -> None:
        """Apply one progress record (see ``fedgate.server.region.progress``)."""
        row = self.rows[region]
        kind = event["kind"]
        if kind == "started":
            row.status = "running"
        elif kind == "initial":
            row.val_acc = event.get("val-acc")
            row.history.append({"round": 0, "val-acc": row.val_acc})
        elif kind == "round":
            row.round = event["round"]
            row.accepted += event.get("accepted", 0)
            row.rejected += event.get("rejected", 0)
            row.train_loss = event.get("train-loss", row.train_loss)
            row.val_acc = event.get("val-acc", row.val_acc)
            row.history.append(
                {k: event.get(k) for k in ("round", "train-loss", "val-acc", "test-acc")}
            )
            if event.get("note"):
                row.status = event["note"]
        elif kind == "evaluated":  # arrives with the next round's updates
            row.fed_acc, row.fed_round = event.get("fed-eval-acc"), event.get("round")
            for entry in row.history:
                if entry.get("round") == row.fed_round:
                    entry["fed-eval-acc"] = row.fed_acc
        elif kind == "finished":
            row.status = "done"
        elif kind == "failed":
            row.status = f"[red]{event.get('status', 'failed')}[/]"
        elif kind == "note":  # from the follower, not the ServerApp (e.g. a reopened stream)
            self.console.print(f"[{time.monotonic() - self.t0:5.1f} s] {region}: {event['note']}")
        if self._live is not None:
            self._live.update(self.table())
        elif kind in ("round", "finished"):
            self.console.print(
                f"[{time.monotonic() - self.t0:5.1f} s] {region}: round {row.round}/{row.rounds} "
                f"accepted {event.get('accepted', '-')} rejected {event.get('rejected', '-')} "
                f"train loss {_fmt(row.train_loss)} val acc {_fmt(row.val_acc)} "
                f"fed acc {_fmt(row.fed_acc)}{_of(row.fed_round)}"
                + (" (done)" if kind == "finished" else "")
            )


def _of(server_round: int | None) -> str:
    """Which round's model a federated accuracy rates (it lags one round behind)."""
    return "" if server_round is None else f" (r{server_round})"
