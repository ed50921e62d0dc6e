"""A device's Flower node key at its region's SuperLink: register on enroll, drop on revoke.

Signing keys (``fedgate.server.enrollment``) prove what a device sends; node keys
(``fedgate.server.node_auth``) decide whether its SuperNode may connect at all. Both are
handed out at enrollment and both are taken back at revocation. The SuperLink is reached at
its operator-only address: given explicitly (``--superlink``), or the running local topology
under the fedgate home.
"""

from __future__ import annotations

from pathlib import Path

from fedgate.server.node_auth import (
    ControlTarget,
    NodeKey,
    ensure_node_key,
    register_node,
    unregister_named,
)


def control_target(
    home: Path, region: str, superlink: str | None, root_certificates: Path | None, insecure: bool
) -> ControlTarget | None:
    """Where the region's Control API is: explicit, else the local topology if it runs."""
    if superlink:
        if insecure:
            return ControlTarget(superlink, None)
        ca = root_certificates or home / "regions" / region / "tls" / "ca.pem"
        return ControlTarget(superlink, ca)
    from fedgate.server.cli_region import resolve
    from fedgate.server.config import ConfigError
    from fedgate.server.processes import ProcessTable
    from fedgate.server.transport import load_transport

    running = {p.name for p in ProcessTable(home).running()}
    if f"superlink-{region}" not in running:
        return None
    try:
        _, fed = resolve(home, None)
        return load_transport(home).control(fed.region(region))
    except ConfigError:
        return None


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
