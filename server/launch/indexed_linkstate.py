"""Flower's in-memory link state, with its pending messages indexed by destination node.

Flower 1.41's simulation engine asks ``InMemoryLinkState.get_message_ins(node_id, limit=1)``
for every virtual node every 0.1 s, and each call scans *every* stored message (checking each
one's expiry and federation on the way): ``O(n)`` per node, ``O(n^2)`` per sweep, all under
the state's lock. At 1,000 virtual clients a sweep is a million message checks, repeated for
the whole round; that is most of why a round grew faster than the number of clients.

``index_messages_by_node()`` keeps, beside Flower's ``message_ins_store``, the ids of the
messages for each destination node (``MessagesByNode``, a ``dict`` that maintains the index
on every insertion and deletion) and makes ``get_message_ins`` visit only the asking node's
messages. Every other rule is Flower's own code, unchanged: the same per-message check
(``_check_stored_messages``, which deletes expired or out-of-federation messages), the same
filters (run, not yet delivered), the same order (insertion), the same ``limit`` and
delivery stamp. What differs: a message for another node is checked (and, if expired,
deleted) when that node asks, or when the server asks for replies, not on every node's call.

Applied in the simulation child only (``server/launch/simulation.py``), before
``run_simulation`` creates its state; a Flower without these attributes is left alone
(``applies`` says whether the patch fits).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_PATCHED = "_fedgate_indexed"


class MessagesByNode(dict):
    """``message_id -> Message`` that also keeps ``node_id -> {message_id: None}`` (insertion
    order) for the messages addressed to each node."""

    def __init__(self) -> None:
        super().__init__()
        self.by_node: dict[int, dict[str, None]] = {}

    def __setitem__(self, message_id: str, message: Any) -> None:
        node = message.metadata.dst_node_id
        if message_id not in self:
            super().__setitem__(message_id, message)
            self.by_node.setdefault(node, {})[message_id] = None
            return
        # replacing keeps the key's place in the dict, so its place among its node's ids too
        moved = self[message_id].metadata.dst_node_id != node
        if moved:
            self._forget(message_id)
        super().__setitem__(message_id, message)
        if moved:  # rare: rebuild the new node's ids in dict order
            self.by_node[node] = {
                k: None for k, m in self.items() if m.metadata.dst_node_id == node
            }

    def __delitem__(self, message_id: str) -> None:
        self._forget(message_id)
        super().__delitem__(message_id)

    def pop(self, message_id: str, *default: Any) -> Any:
        if message_id in self:
            self._forget(message_id)
        return super().pop(message_id, *default)

    def clear(self) -> None:
        super().clear()
        self.by_node.clear()

    def _unsupported(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("MessagesByNode supports item assignment, del, pop and clear only")

    update = setdefault = popitem = __ior__ = _unsupported  # type: ignore[assignment]

    def _forget(self, message_id: str) -> None:
        node = self[message_id].metadata.dst_node_id
        ids = self.by_node.get(node)
        if ids is not None:
            ids.pop(message_id, None)
            if not ids:
                del self.by_node[node]

    def ids_for(self, node_id: int) -> Iterator[str]:
        """The ids of the messages for ``node_id``, oldest first (a snapshot)."""
        return iter(list(self.by_node.get(node_id, ())))


def applies() -> bool:
    """Whether this Flower's in-memory link state has the shape the patch relies on."""
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    needed = ("get_message_ins", "_check_stored_messages", "store_message_ins")
    return all(hasattr(InMemoryLinkState, name) for name in needed)


def get_message_ins(
    self: Any, node_id: int, limit: int | None, *, run_id: int | None = None
) -> list[Any]:
    """Flower's ``InMemoryLinkState.get_message_ins``, visiting only ``node_id``'s messages
    (``self.message_ins_store`` is a ``MessagesByNode``)."""
    from flwr.supercore.date import now

    if limit is not None and limit < 1:
        raise AssertionError("`limit` must be >= 1")
    found: list[Any] = []
    with self.lock:
        for msg_id in self.message_ins_store.ids_for(node_id):
            self._check_stored_messages({msg_id})
            if (
                (msg_ins := self.message_ins_store.get(msg_id))
                and msg_ins.metadata.dst_node_id == node_id
                and (run_id is None or msg_ins.metadata.run_id == run_id)
                and msg_ins.metadata.delivered_at == ""
            ):
                found.append(msg_ins)
            if limit and len(found) == limit:
                break
    delivered_at = now().isoformat()
    for msg_ins in found:
        msg_ins.metadata.delivered_at = delivered_at
    return found


def index_messages_by_node() -> bool:
    """Patch ``InMemoryLinkState`` in this process (idempotent); returns whether it did."""
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState

    if getattr(InMemoryLinkState, _PATCHED, False):
        return True
    if not applies():
        return False
    original_init = InMemoryLinkState.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        store = MessagesByNode()
        for message_id, message in self.message_ins_store.items():
            store[message_id] = message
        self.message_ins_store = store

    InMemoryLinkState.__init__ = __init__  # type: ignore[method-assign]
    InMemoryLinkState.get_message_ins = get_message_ins  # type: ignore[method-assign]
    setattr(InMemoryLinkState, _PATCHED, True)
    return True
