"""The simulation child's index of Flower's pending messages by destination node
(``server/launch/indexed_linkstate.py``): the index follows the store, and the indexed
``get_message_ins`` returns what Flower's own returns."""

from __future__ import annotations

import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.server.launch import indexed_linkstate
from fedgate.server.launch.indexed_linkstate import MessagesByNode

FLOWER_GET_MESSAGE_INS = InMemoryLinkState.get_message_ins  # Flower's, this process unpatched


def message(dst: int, run: int = 1, expired: bool = False) -> SimpleNamespace:
    meta = SimpleNamespace(dst_node_id=dst, run_id=run, delivered_at="", expired=expired)
    return SimpleNamespace(metadata=meta)


class Stub:
    """What ``get_message_ins`` uses of an ``InMemoryLinkState``: its lock, its store, and a
    per-message check that deletes expired messages (as Flower's does)."""

    def __init__(self, store: dict) -> None:
        self.lock = threading.RLock()
        self.message_ins_store = store

    def _check_stored_messages(self, ids: set[str]) -> None:
        for msg_id in ids:
            msg = self.message_ins_store.get(msg_id)
            if msg is not None and msg.metadata.expired:
                del self.message_ins_store[msg_id]


def expected_index(store: MessagesByNode) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for msg_id, msg in store.items():  # dict order: insertion order
        out.setdefault(msg.metadata.dst_node_id, []).append(msg_id)
    return out


OPS = st.lists(
    st.tuples(
        st.sampled_from(["set", "del", "pop", "clear"]), st.integers(0, 9), st.integers(0, 3)
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(ops=OPS)
def test_the_index_follows_every_insertion_and_deletion(ops) -> None:
    store = MessagesByNode()
    for op, key, node in ops:
        msg_id = f"m{key}"
        if op == "set":
            store[msg_id] = message(node)
        elif op == "del" and msg_id in store:
            del store[msg_id]
        elif op == "pop":
            store.pop(msg_id, None)
        elif op == "clear" and key == 0:
            store.clear()
        assert {n: list(ids) for n, ids in store.by_node.items()} == expected_index(store)
    for node in range(4):
        assert list(store.ids_for(node)) == expected_index(store).get(node, [])


def test_replacing_a_message_keeps_its_place() -> None:
    """As a dict keeps a replaced key's place, so does the index (CI found the index moving
    it to the end), also when the replacement is for another node."""
    store = MessagesByNode()
    for msg_id, node in (("m0", 0), ("m1", 0), ("m2", 1)):
        store[msg_id] = message(node)
    store["m0"] = message(0)
    assert list(store.ids_for(0)) == ["m0", "m1"]
    store["m2"] = message(0)  # m2 moves to node 0, after m0 and m1 as in the dict
    store["m0"] = message(1)
    assert list(store.ids_for(0)) == ["m1", "m2"]
    assert list(store.ids_for(1)) == ["m0"]
    assert {n: list(ids) for n, ids in store.by_node.items()} == expected_index(store)


def test_merging_operations_are_refused() -> None:
    store = MessagesByNode()
    with pytest.raises(TypeError, match="supports item assignment"):
        store.update({"m": message(1)})
    with pytest.raises(TypeError):
        store.setdefault("m", message(1))


CALLS = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from([None, 1, 2]), st.sampled_from([None, 1, 2])),
    min_size=1,
    max_size=12,
)
MESSAGES = st.lists(
    st.tuples(st.integers(0, 3), st.integers(1, 2), st.booleans(), st.booleans()), max_size=30
)


@settings(max_examples=200, deadline=None)
@given(messages=MESSAGES, calls=CALLS)
def test_indexed_get_message_ins_returns_what_flowers_returns(messages, calls) -> None:
    def stores() -> tuple[dict, MessagesByNode]:
        plain: dict = {}
        indexed = MessagesByNode()
        for i, (dst, run, expired, delivered) in enumerate(messages):
            for store in (plain, indexed):
                msg = message(dst, run, expired)
                msg.metadata.delivered_at = "earlier" if delivered else ""
                store[f"m{i}"] = msg
        return plain, indexed

    plain, indexed = stores()
    flower, ours = Stub(plain), Stub(indexed)
    for node, limit, run in calls:
        want = FLOWER_GET_MESSAGE_INS(flower, node, limit, run_id=run)
        got = indexed_linkstate.get_message_ins(ours, node, limit, run_id=run)
        ids = {id(m): k for k, m in plain.items()} | {id(m): k for k, m in indexed.items()}
        assert [ids[id(m)] for m in got] == [ids[id(m)] for m in want]
        assert all(m.metadata.delivered_at not in ("", "earlier") for m in got)
    live = {k for k, m in plain.items() if not m.metadata.expired}
    assert live == {k for k, m in indexed.items() if not m.metadata.expired}


def test_flowers_link_state_takes_the_patch() -> None:
    """In a fresh process (the patch is per process): this Flower has what the patch needs,
    and a state made after it keeps the index."""
    code = (
        "from fedgate.server.launch.indexed_linkstate import index_messages_by_node as p, "
        "MessagesByNode\n"
        "from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState\n"
        "from flwr.superlink.federation import NoOpFederationManager\n"
        "from flwr.supercore.object_store import ObjectStoreFactory\n"
        "assert p() and p()\n"
        "s = InMemoryLinkState(NoOpFederationManager(), ObjectStoreFactory().store())\n"
        "assert isinstance(s.message_ins_store, MessagesByNode)\n"
        "assert s.get_message_ins(7, 1) == []\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
