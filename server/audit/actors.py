"""Who did it, signed: actors' keys registered in a region's audit chain and the requests
they sign. The one place that decides whether an act is signed by the right key.

Operators and approvers hold Ed25519 keys registered per region by ``actor.added`` /
``actor.removed`` events; the roster at any point of the chain is the fold of those events up
to there, so "registered" always means "registered earlier in the chain and not removed since".
An act (a run launch, a device revocation, an enrollment token, an actor change) is a request
signed by the actor over ``JCS({"actor", "issued_at", "kind", "nonce", "purpose", "region",
"subject"})`` (``actor`` is the key's fingerprint, ``subject`` what the act is about: the run
config's digest, the device id, the token id, the actor key's fingerprint) and is recorded, with
its signature, as ``request`` in the event's payload.

Rules, applied alike when an act is written (``admit``) and by ``audit verify``
(``ActorCheck``): a request names its event's kind, region and subject, verifies under a key
registered with the role the act needs, and is used once (its nonce). Once a region has had an
operator, every run launch, revocation and token carries such a request; an actor change needs
one while the region has an operator (the first operator is registered by the region itself).
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, select

from fedgate.crypto import (
    SignatureError,
    canonical_json,
    fingerprint,
    load_public_key,
    sha256_hex,
    sign,
    verify,
)
from fedgate.errors import VerificationError
from fedgate.formats import is_hex64, is_signature_hex
from fedgate.server.audit.chain import now_ts
from fedgate.server.audit.problem import Problem
from fedgate.server.db.models import Event

EVENTS = Event.__table__
PURPOSE = "fedgate.actor.request.v1"
OPERATOR, APPROVER = "operator", "approver"
ROLES = (OPERATOR, APPROVER)
ADDED, REMOVED = "actor.added", "actor.removed"
LAUNCH_REQUEST_KEY = "launch-request"  # the run config key a launch request travels in
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")
_NONCE_RE = re.compile(r"[0-9a-f]{32}\Z")


class ActorError(VerificationError, ValueError):
    """A request is not signed by a key registered with the role its act needs."""


@dataclass(frozen=True)
class Act:
    """What an audit event kind records: the request kind it needs and by which role."""

    request: str
    role: str


# audit event kind -> the act it records
ACTS: dict[str, Act] = {
    "run.launched": Act("run.launch", OPERATOR),
    "device.revoked": Act("device.revoke", OPERATOR),
    "device.token_issued": Act("device.token", OPERATOR),
    ADDED: Act("actor.add", OPERATOR),
    REMOVED: Act("actor.remove", OPERATOR),
}


def config_digest(config: Mapping[str, Any]) -> str:
    """SHA-256 of a run config's canonical JSON, without the launch request it travels with."""
    return sha256_hex(canonical_json({k: v for k, v in config.items() if k != LAUNCH_REQUEST_KEY}))


def event_subject(kind: str, data: Mapping[str, Any]) -> str:
    """What an act event is about, as its request must name it."""
    if kind == "run.launched":
        config = data.get("config")
        return config_digest(config) if isinstance(config, Mapping) else ""
    name = {"device.revoked": "device", "device.token_issued": "token"}.get(kind, "fingerprint")
    return str(data.get(name, ""))


@dataclass(frozen=True)
class ActorRequest:
    """One signed request; ``actor`` is the signing key's fingerprint, ``signature`` hex."""

    kind: str
    region: str
    subject: str
    issued_at: str
    nonce: str
    actor: str
    signature: str = ""

    def message(self) -> bytes:
        """The bytes the actor signs."""
        fields = asdict(self)
        del fields["signature"]
        return canonical_json({**fields, "purpose": PURPOSE})

    def to_json(self) -> dict[str, str]:
        return asdict(self)

    def encode(self) -> str:
        """Canonical JSON text (how a launch request travels in a Flower run config)."""
        return canonical_json(self.to_json()).decode()

    @classmethod
    def from_json(cls, raw: Any) -> ActorRequest:
        """Parse a request (a dict, or its JSON text); ``ActorError`` names what is malformed."""
        if isinstance(raw, str):
            try:
                raw = json.loads(raw)
            except ValueError:
                raise ActorError("the request is not JSON") from None
        names = [f for f in cls.__dataclass_fields__]
        if not isinstance(raw, Mapping) or sorted(raw) != sorted(names):
            raise ActorError(f"a request is a JSON object with exactly the fields {names}")
        if not all(isinstance(raw[n], str) for n in names):
            raise ActorError("every field of a request is a string")
        request = cls(**{n: raw[n] for n in names})
        if not is_hex64(request.actor) or not _NONCE_RE.match(request.nonce):
            raise ActorError("a request's actor is a key fingerprint, its nonce 32 hex digits")
        return request


def sign_request(
    key: Ed25519PrivateKey, kind: str, region: str, subject: str, *, nonce: str | None = None
) -> ActorRequest:
    """``key``'s signed request to do ``kind`` on ``subject`` in ``region``."""
    unsigned = ActorRequest(
        kind, region, subject, now_ts(), nonce or secrets.token_hex(16), fingerprint(key)
    )
    signature = sign(key, unsigned.message()).hex()
    return ActorRequest(**{**unsigned.to_json(), "signature": signature})


@dataclass(frozen=True)
class Actor:
    """A registered actor key of a region; ``seq`` is the event that added it."""

    name: str
    role: str
    public_key: str  # hex of the raw Ed25519 key
    fingerprint: str
    region: str
    seq: int = 0

    @property
    def label(self) -> str:
        """How records name the actor: its name and key fingerprint prefix."""
        return f"{self.name} ({self.fingerprint[:16]})"


@dataclass
class Roster:
    """A region's actors at one point of its chain."""

    region: str
    actors: dict[str, Actor] = field(default_factory=dict)  # by fingerprint
    had_operator: bool = False

    def apply(self, seq: int, kind: str, data: Mapping[str, Any]) -> None:
        """Fold one ``actor.added`` / ``actor.removed`` event of this region."""
        fp = str(data.get("fingerprint", ""))
        if kind == REMOVED:
            self.actors.pop(fp, None)
            return
        role = str(data.get("role", ""))
        self.actors[fp] = Actor(
            str(data.get("name", "")), role, str(data.get("public_key", "")), fp, self.region, seq
        )
        self.had_operator = self.had_operator or role == OPERATOR

    def holding(self, role: str) -> list[Actor]:
        return [a for a in self.actors.values() if a.role == role]

    def named(self, name: str) -> Actor | None:
        return next((a for a in self.actors.values() if a.name == name), None)

    def required(self, kind: str) -> bool:
        """Whether an event of ``kind`` must carry a signed request here and now."""
        if kind in (ADDED, REMOVED):
            return bool(self.holding(OPERATOR))
        return kind in ACTS and self.had_operator

    def judge(self, kind: str, subject: str, request: ActorRequest | None) -> Actor | None:
        """The actor whose valid request authorises this ``kind`` event on ``subject`` (None:
        no request, and none needed); ``ActorError`` says why the request does not."""
        act = ACTS[kind]
        if request is None:
            if self.required(kind):
                raise ActorError(
                    f"carries no signed request, but region {self.region} has operators: a "
                    f"{act.request} must be signed by a registered {act.role}"
                )
            return None
        if request.kind != act.request:
            raise ActorError(f"its request is a {request.kind!r} request, not {act.request!r}")
        if request.region != self.region:
            raise ActorError(f"its request is for region {request.region!r}, not {self.region!r}")
        if request.subject != subject:
            raise ActorError(
                f"its request names {request.subject[:16]!r}, the event {subject[:16]!r}"
            )
        actor = self.actors.get(request.actor)
        if actor is None:
            raise ActorError(
                f"its request is signed by key {request.actor[:16]}, which is not registered "
                f"in region {self.region} (never added, or removed)"
            )
        if actor.role != act.role:
            raise ActorError(
                f"its request is signed by {actor.label}, an {actor.role}; a {act.request} "
                f"needs an {act.role}"
            )
        try:
            if not is_signature_hex(request.signature):
                raise ValueError("not 128 lowercase hex digits")
            verify(
                load_public_key(bytes.fromhex(actor.public_key)),
                bytes.fromhex(request.signature),
                request.message(),
            )
        except (SignatureError, ValueError):
            raise ActorError(f"its request's signature by {actor.label} does not verify") from None
        return actor


def request_of(data: Mapping[str, Any]) -> ActorRequest | None:
    raw = data.get("request")
    return None if raw is None else ActorRequest.from_json(raw)


@dataclass
class ActorCheck:
    """``audit verify``'s side of the rules: fed every event in seq order, it names each act
    whose request is missing, malformed, wrongly signed, unregistered, of the wrong role, for
    another event, or replayed."""

    rosters: dict[str, Roster] = field(default_factory=dict)
    nonces: dict[str, int] = field(default_factory=dict)
    checked: int = 0

    def see(self, seq: int, kind: str, payload: str) -> list[Problem]:
        if kind not in ACTS:
            return []
        try:
            data = json.loads(payload)
        except ValueError:
            return [Problem(seq, f"{kind}: payload is not JSON")]
        if not isinstance(data, dict):
            return [Problem(seq, f"{kind}: payload is not a JSON object")]
        region = str(data.get("region", ""))
        roster = self.rosters.setdefault(region, Roster(region))
        problems = []
        try:
            request = request_of(data)
            actor = roster.judge(kind, event_subject(kind, data), request)
            if request is not None:
                self.checked += 1
                first = self.nonces.setdefault(request.nonce, seq)
                if first != seq:
                    raise ActorError(f"its request was already used by event {first} (replayed)")
            if kind == "run.launched" and actor and data.get("launched_by") != actor.label:
                raise ActorError(f"launched_by does not name its signer {actor.label}")
        except ActorError as exc:
            problems.append(Problem(seq, f"{kind}: {exc}"))
        if kind in (ADDED, REMOVED):
            roster.apply(seq, kind, data)
        return problems


def roster_in(conn: Connection, region: str) -> Roster:
    """``region``'s roster at the head of the chain, read inside ``conn``'s transaction."""
    roster = Roster(region)
    query = (
        select(EVENTS.c.seq, EVENTS.c.kind, EVENTS.c.payload)
        .where(EVENTS.c.kind.in_((ADDED, REMOVED)))
        .order_by(EVENTS.c.seq)
    )
    for seq, kind, payload in conn.execute(query):
        data = json.loads(payload)
        if data.get("region") == region:
            roster.apply(seq, kind, data)
    return roster


def admit(
    conn: Connection,
    kind: str,
    region: str,
    subject: str,
    request: ActorRequest | None,
    roster: Roster | None = None,
) -> Actor | None:
    """Refuse (``ActorError``) a ``kind`` event about ``subject`` that ``request`` does not
    authorise at the chain's head, or whose request was used before; else its actor (None:
    the region needs no request yet, and one given is not recorded)."""
    roster = roster or roster_in(conn, region)
    if not roster.required(kind):
        return None
    try:
        actor = roster.judge(kind, subject, request)
    except ActorError as exc:
        raise ActorError(f"{ACTS[kind].request} in region {region} refused: {exc}") from None
    if request is not None:
        used = conn.execute(
            select(EVENTS.c.seq)
            .where(EVENTS.c.kind.in_(tuple(ACTS)))
            .where(EVENTS.c.payload.contains(f'"nonce":"{request.nonce}"'))
            .limit(1)
        ).first()
        if used is not None:
            raise ActorError(
                f"{request.kind} in region {region} refused: its request was already used by "
                f"event {used.seq} (replayed)"
            )
    return actor


def signed_if_needed(
    roster: Roster, key: Ed25519PrivateKey | None, kind: str, subject: str
) -> ActorRequest | None:
    """``key``'s request for a ``kind`` event when the region needs one (None otherwise, or
    without a key: ``admit`` then says what is missing)."""
    if key is None or not roster.required(kind):
        return None
    return sign_request(key, ACTS[kind].request, roster.region, subject)
