"""Screening on arrival: each reply is checked while the server still waits for the others.

``exchange`` pushes a round's messages and pulls replies adaptively (Flower's own
``send_and_receive`` sleeps 3 s between pulls), handing each reply to ``on_reply`` the moment
it is pulled. ``ArrivalScreening`` submits the stateless part of the screen (structure,
canonical digest, Ed25519 signature, envelope checks: hashlib and cryptography release the
GIL) to a thread pool there, so when the last reply arrives only its own check and the
ordered, stateful remainder (the replay memory) are left before aggregation.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, runtime_checkable

from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from fedgate.strategies.fates import ClientFate

Commit = Callable[[], ClientFate]
"""A checked reply's remaining, stateful screening step; returns its fate."""


@runtime_checkable
class StagedScreen(Protocol):
    """A screen split in two: ``check`` keeps no state (safe to run concurrently, in any
    order) and returns the ``Commit`` that finishes the fate, run in reply order."""

    def check(self, reply: Message, server_round: int, current: ArrayRecord) -> Commit: ...

    def __call__(self, reply: Message, server_round: int, current: ArrayRecord) -> ClientFate: ...


def stateless(screen: Callable[[Message, int, ArrayRecord], ClientFate]):
    """Mark a plain screen function as keeping no state: ``ArrivalScreening`` may then run
    it on each reply as it arrives, concurrently."""
    screen.stateless = True  # type: ignore[attr-defined]
    return screen


def default_workers() -> int:
    """Threads for checking replies: one per CPU, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def exchange(
    grid: Grid,
    messages: Iterable[Message],
    timeout: float | None,
    on_reply: Callable[[Message], None] | None = None,
    interval: float | None = None,
    max_interval: float | None = None,
) -> list[Message]:
    """Push ``messages`` and pull their replies until all arrived or ``timeout`` passed.

    The pause between pulls starts at ``interval``, grows by half after every empty pull up
    to ``max_interval`` (a pull costs the SuperLink a few database queries) and drops back
    when replies arrive, since the others tend to follow. Unset, both come from the grid's
    ``poll_intervals`` if it has them, else 0.1 and 1 s. ``on_reply`` sees every reply as
    soon as it is pulled.
    """
    default = getattr(grid, "poll_intervals", (0.1, 1.0))
    interval = default[0] if interval is None else interval
    max_interval = default[1] if max_interval is None else max_interval
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    pause = interval
    while pending:
        got = list(grid.pull_messages(pending))
        for msg in got:
            pending.discard(msg.metadata.reply_to_message_id)
            if on_reply is not None:
                on_reply(msg)
        replies.extend(got)
        if not pending or (deadline is not None and time.monotonic() >= deadline):
            break
        pause = interval if got else min(pause * 1.5, max_interval)
        time.sleep(pause)
    return replies


class ArrivalScreening:
    """Checks a round's replies in a thread pool as they arrive; ``screen`` then returns each
    reply's fate, committing in the order it is asked (the strategy's reply order).

    ``open(round, current)`` starts a round (dropping what an earlier one left); a reply the
    pool never saw (a screen that is not staged, or ``screen`` called without ``arrived``) is
    screened on the spot, so the result never depends on timing.
    """

    def __init__(self, screen: Callable, workers: int | None = None) -> None:
        self.base = screen
        self.staged = isinstance(screen, StagedScreen) or getattr(screen, "stateless", False)
        self.workers = workers or default_workers()
        self._pool: ThreadPoolExecutor | None = None
        self._round: tuple[int, ArrayRecord] | None = None
        self._checks: dict[int, Future[Commit]] = {}  # id(reply) -> its check
        self._lock = threading.Lock()

    def open(self, server_round: int | None, current: ArrayRecord | None = None) -> None:
        """Screen the replies that arrive from now on as round ``server_round``'s, whose
        clients started from ``current``; None: check nothing on arrival (evaluate replies)."""
        with self._lock:
            self._round = None if server_round is None else (server_round, current)
            self._checks = {}

    def _check(self, reply: Message, server_round: int, current: ArrayRecord) -> Commit:
        if isinstance(self.base, StagedScreen):
            return self.base.check(reply, server_round, current)
        fate = self.base(reply, server_round, current)
        return lambda: fate

    def arrived(self, reply: Message) -> None:
        """Start checking ``reply`` (of the open round) in the pool."""
        if not self.staged or self._round is None:
            return
        server_round, current = self._round
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fedgate-screen")
            self._checks[id(reply)] = self._pool.submit(self._check, reply, server_round, current)

    def screen(self, reply: Message, server_round: int, current: ArrayRecord) -> ClientFate:
        """``reply``'s fate: its arrival check finished and committed, or screened now."""
        with self._lock:
            future = self._checks.pop(id(reply), None)
            opened = self._round
        if (
            future is not None
            and opened is not None
            and opened[0] == server_round
            and opened[1] is current
        ):
            return future.result()()
        return self.base(reply, server_round, current)

    def close(self) -> None:
        """Stop the pool's threads (it starts again if another reply arrives)."""
        with self._lock:
            pool, self._pool, self._checks = self._pool, None, {}
        if pool is not None:
            pool.shutdown(wait=True)
