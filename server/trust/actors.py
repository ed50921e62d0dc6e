"""A region's actor keys: registering and removing them (audited), the local operator every
home starts with, and the launch admission the ServerApp makes. The rules themselves are
``fedgate.server.audit.actors``'s."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection

from fedgate.crypto import fingerprint, generate_key, load_private_key, public_bytes
from fedgate.crypto import save_private_key as _save_private_key
from fedgate.errors import UsageError
from fedgate.server.audit.actors import (
    ADDED,
    NAME_RE,
    OPERATOR,
    REMOVED,
    ROLES,
    Actor,
    ActorRequest,
    admit,
    config_digest,
    roster_in,
    sign_request,
    signed_if_needed,
)
from fedgate.server.audit.keys import ensure_region_key, keys_dir
from fedgate.server.audit.store import Store
from fedgate.server.db.engine import resolve_url, run_write

LOCAL_OPERATOR = "local-operator"


class ActorUsageError(UsageError, ValueError):
    """An actor name, role or key file that cannot be used as given."""


def operator_key_path(home: str | Path) -> Path:
    """The home's own operator key (``<home>/keys/operator.key``, mode 0600)."""
    return keys_dir(home) / "operator.key"


def local_actor_key(home: str | Path) -> Ed25519PrivateKey | None:
    """The home's operator key if it has one (what acts are signed with by default)."""
    path = operator_key_path(home)
    return load_private_key(path) if path.is_file() else None


def load_actor_key(path: Path) -> Ed25519PrivateKey:
    """An ``--actor-key`` file; a missing one says how to get one."""
    if not Path(path).is_file():
        raise ActorUsageError(
            f"no actor key at {path}: pass --actor-key FILE (a key registered with "
            "`fedgate region actors add`), or set the region up with `fedgate region init`"
        )
    return load_private_key(path)


def _audit(store: Store, conn: Connection, kind: str, payload: dict[str, Any]) -> None:
    store.audit.append_in(conn, [(kind, payload)])
    if store.audit.signer is not None:
        store.audit.sign_in(conn)


def add_actor(
    store: Store,
    region: str,
    name: str,
    role: str,
    public: Ed25519PublicKey | Ed25519PrivateKey,
    actor_key: Ed25519PrivateKey | None = None,
) -> Actor:
    """Register ``public`` as ``region``'s ``role`` called ``name`` (an ``actor.added`` event,
    signed by ``actor_key``, an operator's, once the region has one)."""
    if role not in ROLES:
        raise ActorUsageError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    if not NAME_RE.match(name):
        raise ActorUsageError(f"bad actor name {name!r} (letters, digits, _.@-; <= 64 chars)")
    raw, fp = public_bytes(public).hex(), fingerprint(public)

    def write(conn: Connection) -> Actor:
        roster = roster_in(conn, region)
        if fp in roster.actors:
            raise ActorUsageError(f"key {fp[:16]} is already {roster.actors[fp].label}")
        if roster.named(name) is not None:
            raise ActorUsageError(f"region {region} already has an actor named {name!r}")
        request = signed_if_needed(roster, actor_key, ADDED, fp)
        admit(conn, ADDED, region, fp, request, roster)
        payload = {"region": region, "name": name, "role": role, "public_key": raw,
                   "fingerprint": fp}  # fmt: skip
        _audit(store, conn, ADDED, _with(payload, request))
        return Actor(name, role, raw, fp, region)

    return run_write(store.engine, write, f"registering actor {name} in region {region}")


def remove_actor(
    store: Store, region: str, who: str, actor_key: Ed25519PrivateKey | None = None
) -> Actor:
    """Remove the actor named ``who`` (or whose fingerprint starts with it, 8+ hex digits)."""

    def write(conn: Connection) -> Actor:
        roster = roster_in(conn, region)
        found = roster.named(who)
        if found is None and len(who) >= 8:
            hits = [a for fp, a in roster.actors.items() if fp.startswith(who.lower())]
            found = hits[0] if len(hits) == 1 else None
        if found is None:
            raise ActorUsageError(f"no actor {who!r} registered in region {region}")
        request = signed_if_needed(roster, actor_key, REMOVED, found.fingerprint)
        admit(conn, REMOVED, region, found.fingerprint, request, roster)
        payload = {"region": region, "name": found.name, "role": found.role,
                   "fingerprint": found.fingerprint}  # fmt: skip
        _audit(store, conn, REMOVED, _with(payload, request))
        return found

    return run_write(store.engine, write, f"removing actor {who} from region {region}")


def actors(store: Store, region: str) -> list[Actor]:
    """``region``'s registered actors, in registration order."""
    with store.engine.connect() as conn:
        roster = roster_in(conn, region)
    return sorted(roster.actors.values(), key=lambda a: a.seq)


def ensure_local_operator(home: str | Path, store: Store, region: str) -> Actor | None:
    """Make the home's operator key (if absent) and register it as ``region``'s
    ``local-operator`` when the region has no operator yet; returns it when registered now."""
    path = operator_key_path(home)
    if not path.is_file():
        _save_private_key(generate_key(), path)
    key = load_private_key(path)
    with store.engine.connect() as conn:
        roster = roster_in(conn, region)
    if roster.holding(OPERATOR):
        return None
    name = LOCAL_OPERATOR if roster.named(LOCAL_OPERATOR) is None else f"{LOCAL_OPERATOR}-2"
    return add_actor(store, region, name, OPERATOR, key)


def ensure_region_operator(home: str | Path, region: str, db: str | None = None) -> Actor | None:
    """``ensure_local_operator`` on ``region``'s database (``db``, else ``$FEDGATE_DB``, else
    the SQLite file under ``home``), audited with the region key."""
    store = Store.open(resolve_url(db, home, region), signer=ensure_region_key(home, region))
    try:
        return ensure_local_operator(home, store, region)
    finally:
        store.engine.dispose()


def _with(payload: dict[str, Any], request: ActorRequest | None) -> dict[str, Any]:
    return payload if request is None else {**payload, "request": request.to_json()}


@dataclass(frozen=True)
class Launch:
    """A launch the region admitted: what to record and by whom."""

    config: dict[str, Any]  # the run config the request names
    launched_by: str
    request: dict[str, str] | None


def admit_launch(
    store: Store, region: str, config: Mapping[str, Any], request: str, launched_by: str
) -> Launch:
    """Check a run's launch request (the encoded ``launch-request``, may be empty) against
    ``region``'s roster for ``config`` (the run's canonical run config); ``ActorError`` when
    the region needs one and it does not authorise this config. Without one (a region with no
    operator yet) the launch is recorded as ``launched_by``."""
    parsed = ActorRequest.from_json(request) if request else None
    with store.engine.connect() as conn:
        actor = admit(conn, "run.launched", region, config_digest(config), parsed)
    if actor is None or parsed is None:
        return Launch(dict(config), launched_by, None)
    return Launch(dict(config), actor.label, parsed.to_json())


def sign_launch(key: Ed25519PrivateKey, region: str, config: Mapping[str, Any]) -> str:
    """The encoded launch request for ``config`` (to put under ``launch-request``)."""
    return sign_request(key, "run.launch", region, config_digest(config)).encode()


def describe(actor: Actor) -> dict[str, Any]:
    return {"name": actor.name, "role": actor.role, "fingerprint": actor.fingerprint,
            "public_key": actor.public_key, "region": actor.region, "seq": actor.seq}  # fmt: skip


def dumps(items: list[Actor]) -> str:
    return json.dumps([describe(a) for a in items], indent=2)
