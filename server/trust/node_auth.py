"""Flower SuperNode authentication: node keys and registering them with a region's SuperLink.

Flower 1.41 authenticates a SuperNode by an ECDSA key on a NIST curve: the SuperNode signs
every Fleet request with ``--auth-supernode-private-key`` (an OpenSSH private key file) and a
SuperLink started with ``--enable-supernode-auth`` accepts only public keys that were
registered through its Control API (``RegisterNode``, what ``flwr supernode register`` sends).

A device's node key pair lives next to its signing key::

    node-auth.key   OpenSSH ECDSA P-384 private key (mode 0600), for flower-supernode
    node-auth.pub   OpenSSH public key line (``ecdsa-sha2-nistp384 ...``), to register

The Control API is operator-only: call these functions against the SuperLink's operator
address, never through the device-facing proxy (which refuses every Control route).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from fedgate.clients.node_key import (
    NodeAuthError,
    NodeKey,
    public_key_bytes,
)
from fedgate.crypto import sha256_hex

if TYPE_CHECKING:
    from flwr.supercore.control import ControlHttpClient


@dataclass(frozen=True)
class ControlTarget:
    """How to reach a SuperLink's Control API: ``host:port`` and the CA to trust.

    ``root_certificates`` is the region's ``ca.pem``; ``None`` means plain HTTP (only for a
    SuperLink started with ``--insecure``).
    """

    address: str
    root_certificates: Path | None

    @property
    def insecure(self) -> bool:
        return self.root_certificates is None


@dataclass(frozen=True)
class RegisteredNode:
    """One node as the SuperLink lists it."""

    node_id: int
    status: str
    name: str
    fingerprint: str


def control_client(target: ControlTarget) -> ControlHttpClient:
    """Flower's own Control API client, set up as the ``flwr`` CLI sets it up."""
    # heavy import (Flower): only when a SuperLink is asked
    from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    root = None
    if target.root_certificates is not None:
        try:
            root = Path(target.root_certificates).read_bytes()
        except OSError as exc:
            raise NodeAuthError(f"cannot read CA file {target.root_certificates}: {exc}") from None
    return ControlHttpClient.from_server_address(
        server_address=target.address,
        insecure=target.insecure,
        root_certificates=root,
        interceptors=[
            CliClientHttpInterceptor(),
            RuntimeVersionHttpInterceptor(component_name="flwr CLI"),
        ],
    )


@contextlib.contextmanager
def control_session(target: ControlTarget, action: str) -> Iterator[ControlHttpClient]:
    """A Control API client whose failures surface as one clear ``NodeAuthError``."""
    # heavy import (Flower): only when a SuperLink is asked
    from flwr.supercore.error import FlowerError

    client = control_client(target)
    try:
        yield client
    except httpx.HTTPStatusError as exc:
        err = FlowerError.from_json(exc.response.text)
        detail = f"[code {err.code}] {err.message}" if err else exc.response.text[:200]
        raise NodeAuthError(
            f"{action}: the SuperLink at {target.address} answered "
            f"HTTP {exc.response.status_code}: {detail}"
        ) from None
    except httpx.HTTPError as exc:
        raise NodeAuthError(
            f"{action}: cannot reach the SuperLink Control API at {target.address} "
            f"({type(exc).__name__}: {exc})"
        ) from None
    finally:
        client.close()


def list_nodes(target: ControlTarget) -> list[RegisteredNode]:
    """Every node the SuperLink knows (registered, online, offline or unregistered)."""
    from flwr.proto.control_pb2 import ListNodesRequest  # type: ignore[attr-defined]

    with control_session(target, "listing SuperNodes") as client:
        res = client.ListNodes(ListNodesRequest())
    return [
        RegisteredNode(n.node_id, n.status, n.name, sha256_hex(n.public_key))
        for n in res.nodes_info
    ]


def find_node(target: ControlTarget, node: NodeKey) -> RegisteredNode | None:
    """The SuperLink's record of ``node``'s public key, if any."""
    fp = node.fingerprint
    return next((n for n in list_nodes(target) if n.fingerprint == fp), None)


def register_node(target: ControlTarget, node: NodeKey, name: str = "") -> int:
    """Register ``node``'s public key with the SuperLink; returns its Flower node id.

    Idempotent: a key that is already registered returns its existing id. A key whose
    node was unregistered (revoked) stays refused: the device needs a new node key.
    """
    return register_public_key(target, node.public_key(), name, what=str(node.public_path))


class NodeKeyInUse(NodeAuthError):
    """The SuperLink already knows this node key (registered, or unregistered for good)."""


def register_public_key(
    target: ControlTarget,
    key: ec.EllipticCurvePublicKey,
    name: str = "",
    *,
    what: str = "",
    reuse: bool = True,
) -> int:
    """Register a node public key (what ``register_node`` does for a key file; the
    enrollment service has only the key a device sent). Without ``reuse`` a key the
    SuperLink already knows raises ``NodeKeyInUse`` (one call, no listing of all nodes)."""
    from flwr.proto.control_pb2 import RegisterNodeRequest  # type: ignore[attr-defined]
    from flwr.supercore.error import ApiErrorCode

    fp = sha256_hex(public_key_bytes(key))
    what = what or f"node key {fp[:16]}"
    existing = next((n for n in list_nodes(target) if n.fingerprint == fp), None) if reuse else None
    if existing is not None:
        if existing.status == "unregistered":
            raise NodeAuthError(
                f"node key {what} was unregistered (revoked) at {target.address} "
                "and cannot be registered again; make a new node key"
            )
        return existing.node_id
    request = RegisterNodeRequest(public_key=public_key_bytes(key))
    if name:
        request.name = name
    try:
        with control_session(target, f"registering node key {what}") as client:
            res = client.RegisterNode(request)
    except NodeAuthError as exc:
        if f"[code {ApiErrorCode.PUBLIC_KEY_ALREADY_IN_USE}]" in str(exc):
            if not reuse:
                raise NodeKeyInUse(
                    f"node key {what} is already known at {target.address}"
                ) from None
            again = next((n for n in list_nodes(target) if n.fingerprint == fp), None)
            if again is not None and again.status != "unregistered":
                return again.node_id
        raise
    if not res.node_id:
        raise NodeAuthError(f"the SuperLink at {target.address} returned no node id")
    return int(res.node_id)


def unregister_node(target: ControlTarget, node_id: int) -> None:
    """Unregister (revoke) a node: the SuperLink refuses its key from then on."""
    from flwr.proto.control_pb2 import UnregisterNodeRequest  # type: ignore[attr-defined]

    with control_session(target, f"unregistering node {node_id}") as client:
        client.UnregisterNode(UnregisterNodeRequest(node_id=node_id))


def unregister_named(target: ControlTarget, name: str) -> list[int]:
    """Unregister every still-registered node registered under ``name`` (e.g. a device id);
    returns their node ids. For revoking a device whose node key is not at hand."""
    ids = [n.node_id for n in list_nodes(target) if n.name == name and n.status != "unregistered"]
    for node_id in ids:
        unregister_node(target, node_id)
    return ids


def superlink_auth_flags() -> list[str]:
    """``flower-superlink`` flag: accept only SuperNodes whose keys were registered."""
    return ["--enable-supernode-auth"]


def flwr_connection_toml(name: str, target: ControlTarget) -> str:
    """A ``config.toml`` for the ``flwr`` CLI (``FLWR_HOME``) naming one SuperLink connection.

    With TLS it names the region CA as ``root-certificates``; ``flwr run`` and
    ``flwr supernode register`` then verify the SuperLink's certificate against it.
    """
    if not name.replace("-", "_").isidentifier():
        raise NodeAuthError(f"connection name {name!r} must be a simple identifier")
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]"]
    lines.append(f'address = "{target.address}"')
    if target.root_certificates is None:
        lines.append("insecure = true")
    else:
        root = str(Path(target.root_certificates).resolve()).replace("\\", "\\\\")
        lines.append(f'root-certificates = "{root}"')
    return "\n".join(lines) + "\n"
