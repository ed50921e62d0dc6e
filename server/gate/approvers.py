"""A region's approvers: actor keys registered with the ``approver`` role in the region's audit
chain (``fedgate.server.trust.actors``; no second registry). An approver key is never the
region server's key: the gate's signature must come from a person, not the server."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.crypto import fingerprint, public_bytes
from fedgate.server.audit.actors import APPROVER, Actor, ActorError, roster_in
from fedgate.server.audit.keys import region_pub_path
from fedgate.server.audit.store import Store
from fedgate.server.trust.actors import ActorUsageError, actors, add_actor, remove_actor


def _not_region_key(
    home: str | Path, region: str, key: Ed25519PublicKey | Ed25519PrivateKey
) -> None:
    pub = region_pub_path(home, region)
    if pub.is_file() and pub.read_text().strip() == _hex(key):
        raise ActorUsageError(
            f"that is region {region}'s server key; an approver holds a key of their own "
            "(`fedgate region actors keygen`)"
        )


def _hex(key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    return public_bytes(key).hex()


def add_approver(
    home: str | Path,
    store: Store,
    region: str,
    name: str,
    public: Ed25519PublicKey,
    actor_key: Ed25519PrivateKey | None = None,
) -> Actor:
    """Register ``public`` as an approver of ``region`` (an operator's signed ``actor.added``)."""
    _not_region_key(home, region, public)
    return add_actor(store, region, name, APPROVER, public, actor_key)


def list_approvers(store: Store, region: str) -> list[Actor]:
    return [a for a in actors(store, region) if a.role == APPROVER]


def remove_approver(
    store: Store, region: str, who: str, actor_key: Ed25519PrivateKey | None = None
) -> Actor:
    """Remove the approver named ``who`` (or by 8+ hex digits of its fingerprint)."""
    prefix = who.lower() if len(who) >= 8 else None
    found = [
        a
        for a in list_approvers(store, region)
        if a.name == who or (prefix is not None and a.fingerprint.startswith(prefix))
    ]
    if len(found) != 1:
        raise ActorUsageError(f"no approver {who!r} registered in region {region}")
    return remove_actor(store, region, found[0].fingerprint[:16], actor_key)


def approver_for(home: str | Path, store: Store, region: str, key: Ed25519PrivateKey) -> Actor:
    """The registered approver holding ``key``; ``ActorError`` when it is not one."""
    _not_region_key(home, region, key)
    fp = fingerprint(key)
    with store.engine.connect() as conn:
        actor = roster_in(conn, region).actors.get(fp)
    if actor is None or actor.role != APPROVER:
        held = "not registered" if actor is None else f"registered as {actor.role}"
        raise ActorError(
            f"key {fp[:16]} is {held} in region {region}; only a registered approver may decide "
            "(`fedgate gate approvers add`)"
        )
    return actor
