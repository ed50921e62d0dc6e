"""A Grid wrapper that polls for replies within a second instead of every 3 s."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from fedgate.strategies.arrival import exchange


class FastPollGrid(Grid):
    """Delegates to Flower's Grid, but ``send_and_receive`` pulls adaptively.

    Flower's own ``send_and_receive`` sleeps 3 s between pulls, which dominates the
    latency of small rounds; pushing and pulling ourselves (``fedgate.strategies.arrival.
    exchange``, which ``RobustStrategy`` also calls directly to screen replies on arrival)
    keeps its semantics. On the simulation engine's in-memory grid, where a pull costs no
    request, it polls every ``interval`` like Flower's own in-memory grid; over the network
    the pause grows up to ``max_interval`` (1 s) while nothing arrives.
    """

    def __init__(
        self, inner: Grid, interval: float = 0.1, max_interval: float | None = None
    ) -> None:
        self._inner = inner
        self._interval = interval
        if max_interval is None:  # a pull of the simulation engine's grid costs no request
            max_interval = interval if _in_memory(inner) else 1.0
        self._max_interval = max_interval

    @property
    def poll_intervals(self) -> tuple[float, float]:
        """``(interval, max_interval)`` of the adaptive pull (``exchange`` uses them)."""
        return self._interval, self._max_interval

    def set_run(self, run) -> None:
        self._inner.set_run(run)

    @property
    def run(self):
        return self._inner.run

    def create_message(self, *args, **kwargs) -> Message:
        return self._inner.create_message(*args, **kwargs)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return exchange(self, messages, timeout, None, self._interval, self._max_interval)


def _in_memory(grid: Grid) -> bool:
    """Whether ``grid`` is the simulation engine's in-process grid."""
    try:
        from flwr.superlink.grid.inmemory_grid import InMemoryGrid
    except ImportError:  # pragma: no cover - Flower moved it: poll as over the network
        return False
    return isinstance(grid, InMemoryGrid)
