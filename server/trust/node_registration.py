"""A device's Flower node key at its region's SuperLink: register on enroll, drop on revoke.

Signing keys (``fedgate.server.trust.enrollment``) prove what a device sends; node keys
(``fedgate.server.trust.node_auth``) decide whether its SuperNode may connect at all. Both are
handed out at enrollment and both are taken back at revocation. The SuperLink is reached at
its operator-only address (a ``ControlTarget``): given explicitly (``--superlink``), or the
running local topology under the fedgate home (``fedgate.server.launch.transport.control_target``).
"""

from __future__ import annotations

from pathlib import Path

from fedgate.clients.node_key import ensure_node_key
from fedgate.server.trust.node_auth import (
    ControlTarget,
    NodeKey,
    register_node,
    unregister_named,
)


def register_device_node(
    target: ControlTarget | None, device_dir: Path, device_id: str
) -> tuple[NodeKey, int | None]:
    """The device's node key (made on first use) and its node id once registered (None when no
    SuperLink was given or found)."""
    node = ensure_node_key(device_dir, comment=device_id[:16])
    if target is None:
        return node, None
    return node, register_node(target, node, name=device_id)


def unregister_device_node(target: ControlTarget | None, device_id: str) -> list[int] | None:
    """Unregister every node registered under ``device_id``; None when no SuperLink is known."""
    return None if target is None else unregister_named(target, device_id)
