"""Screening on arrival: replies checked in a pool as they are pulled give the same fates, in
the same order, as screening them all at the end; the replay memory still runs in reply order."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import train_reply as reply
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from test_envelope_screen import Fleet, model

from fedgate.strategies.aggregators import make_aggregator
from fedgate.strategies.arrival import ArrivalScreening, StagedScreen, exchange, stateless
from fedgate.strategies.envelope import Reason
from fedgate.strategies.fates import ClientFate
from fedgate.strategies.robust_strategy import RobustStrategy, structural_screen


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower builds messages only inside a task (a run, a node)."""
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.registry.close()


class DripGrid:
    """push/pull of a Grid: the replies become pullable ``per_pull`` at a time."""

    def __init__(self, replies: dict[int, object], per_pull: int = 1) -> None:
        self.replies, self.per_pull, self.pulls = replies, per_pull, 0
        self.queue: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return sorted(self.replies)

    def push_messages(self, messages) -> list[str]:
        ids = []
        for i, msg in enumerate(messages):
            node = msg.metadata.dst_node_id
            meta = Metadata(
                run_id=1, message_id=f"r{i}", src_node_id=node, dst_node_id=0,
                reply_to_message_id=f"m{i}", group_id="1", created_at=time.time(), ttl=60.0,
                message_type="train",
            )  # fmt: skip
            self.queue.append(Message(self.replies[node], metadata=meta))
            ids.append(f"m{i}")
        return ids

    def pull_messages(self, message_ids) -> list[Message]:
        self.pulls += 1
        out, self.queue = self.queue[: self.per_pull], self.queue[self.per_pull :]
        return [m for m in out if m.metadata.reply_to_message_id in message_ids]


def test_exchange_hands_every_reply_over_as_it_is_pulled() -> None:
    grid = DripGrid({n: RecordDict() for n in (1, 2, 3)})
    seen: list[tuple[int, int]] = []
    messages = [Message(RecordDict(), dst_node_id=n, message_type="train") for n in (1, 2, 3)]

    def on_reply(m: Message) -> None:
        seen.append((m.metadata.src_node_id, grid.pulls))

    got = exchange(grid, messages, 10.0, on_reply, interval=0.001)
    assert [m.metadata.src_node_id for m in got] == [1, 2, 3]
    assert seen == [(1, 1), (2, 2), (3, 3)]  # each handed over at the pull that brought it


def test_exchange_stops_at_the_timeout_with_what_arrived() -> None:
    grid = DripGrid({1: RecordDict()}, per_pull=0)
    messages = [Message(RecordDict(), dst_node_id=1, message_type="train")]
    t0 = time.monotonic()
    assert exchange(grid, messages, 0.05, interval=0.01) == []
    assert time.monotonic() - t0 < 5


def test_the_region_screen_is_staged_and_structural_is_stateless(fleet: Fleet) -> None:
    assert isinstance(fleet.screen, StagedScreen)
    assert ArrivalScreening(structural_screen).staged
    assert not ArrivalScreening(lambda r, s, c: ClientFate(0, True)).staged


def test_checks_run_in_the_pool_on_arrival_and_agree_with_the_plain_screen(
    fleet: Fleet,
) -> None:
    base = model(0.0)
    replies = [reply(i + 1, fleet.content(k, 1, base, 0.1 * i)) for i, k in enumerate(fleet.keys)]
    threads: set[str] = set()

    class Spy:
        def check(self, r, s, c):
            threads.add(threading.current_thread().name)
            return fleet.screen.check(r, s, c)

        def __call__(self, r, s, c):
            return self.check(r, s, c)()

    arrival = ArrivalScreening(Spy(), workers=2)
    arrival.open(1, base)
    for r in replies:
        arrival.arrived(r)
    fates = [arrival.screen(r, 1, base) for r in replies]
    arrival.close()
    assert all(f.accepted for f in fates), fates
    assert threads and all(t.startswith("fedgate-screen") for t in threads)
    assert [f.node_id for f in fates] == [1, 2, 3, 4]


def test_a_replayed_update_is_refused_by_reply_order_not_by_which_check_ends_first(
    fleet: Fleet,
) -> None:
    base = model(0.0)
    first = fleet.content(fleet.keys[0], 1, base, 1.0)
    other = fleet.content(fleet.keys[0], 1, base, 2.0)  # same device, another update
    replies = [reply(1, first), reply(2, other), reply(3, first)]
    release = threading.Event()
    real = fleet.screen

    class SlowFirst:
        def check(self, r, s, c):
            if r is replies[0]:
                release.wait(5)  # the first reply's check ends last
            return real.check(r, s, c)

        def __call__(self, r, s, c):
            return self.check(r, s, c)()

    arrival = ArrivalScreening(SlowFirst(), workers=3)
    arrival.open(1, base)
    for r in replies:
        arrival.arrived(r)
    time.sleep(0.05)
    release.set()
    fates = [arrival.screen(r, 1, base) for r in replies]
    arrival.close()
    assert [f.accepted for f in fates] == [True, False, False]
    assert [f.reason for f in fates[1:]] == [Reason.DUPLICATE_DEVICE, Reason.REPLAY]


def test_a_reply_checked_for_another_round_or_model_is_screened_again(fleet: Fleet) -> None:
    base, other_base = model(0.0), model(0.0)
    r = reply(1, fleet.content(fleet.keys[0], 2, base, 1.0))
    arrival = ArrivalScreening(fleet.screen)
    arrival.open(1, base)  # checked as round 1: wrong round ...
    arrival.arrived(r)
    assert arrival.screen(r, 2, base).accepted  # ... but asked as round 2: screened anew
    r2 = reply(2, fleet.content(fleet.keys[1], 2, base, 1.0))
    arrival.open(2, other_base)
    arrival.arrived(r2)
    assert arrival.screen(r2, 2, base).accepted  # a model other than the one opened
    arrival.close()


def test_a_check_that_raises_rejects_the_update_instead_of_the_round(fleet: Fleet) -> None:
    base = model(0.0)

    class Broken:
        def get(self, device_id):
            raise RuntimeError("database gone")

    fleet.screen.registry = Broken()
    arrival = ArrivalScreening(fleet.screen)
    arrival.open(1, base)
    r = reply(1, fleet.content(fleet.keys[0], 1, base, 1.0))
    arrival.arrived(r)
    fate = arrival.screen(r, 1, base)
    arrival.close()
    assert (fate.accepted, fate.reason) == (False, Reason.VERIFICATION_ERROR)
    assert fate.claimed_device_id


def test_a_strategy_round_screens_on_arrival_and_aggregates(fleet: Fleet) -> None:
    base = model(0.0)
    contents = {i + 1: fleet.content(k, 1, base, 1.0) for i, k in enumerate(fleet.keys)}
    strategy = RobustStrategy(
        make_aggregator("median", 1), clients_per_round=4, min_clients=3, screen=fleet.screen
    )
    grid = DripGrid(contents)
    batch = strategy.configure_train(1, base, ConfigRecord(), grid)
    replies = exchange(grid, batch, 10.0, strategy.arrival.arrived, interval=0.001)
    assert len(strategy.arrival._checks) == 4  # all four submitted before aggregation
    arrays, _ = strategy.aggregate_train(1, replies)
    strategy.arrival.close()
    assert strategy.rounds[-1].accepted == 4
    np.testing.assert_allclose(arrays["w"].numpy(), np.ones((3, 2), np.float32))


def test_stateless_marks_a_plain_function() -> None:
    @stateless
    def accept(r, s, c) -> ClientFate:
        return ClientFate(r.metadata.src_node_id, True, num_examples=1)

    current = ArrayRecord({"w": Array(np.zeros(1, np.float32))})
    arrival = ArrivalScreening(accept)
    arrival.open(1, current)
    r = reply(5, RecordDict())
    arrival.arrived(r)
    assert len(arrival._checks) == 1
    assert arrival.screen(r, 1, current).node_id == 5
    arrival.close()


def test_exchange_polls_at_the_grid_s_own_intervals() -> None:
    from fedgate.server.region.fast_grid import FastPollGrid

    assert FastPollGrid(DripGrid({})).poll_intervals == (0.1, 1.0)  # over the network
    grid = DripGrid({1: RecordDict()}, per_pull=0)
    grid.poll_intervals = (0.001, 0.002)  # type: ignore[attr-defined]
    messages = [Message(RecordDict(), dst_node_id=1, message_type="train")]
    assert exchange(grid, messages, 0.2) == []
    assert grid.pulls > 5  # 0.2 s at <= 2 ms a pause; the defaults (0.1 s, growing) give 2-3
