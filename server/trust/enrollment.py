"""A region's device registry in its database: one-time tokens, enrolled keys, revocation.

Tokens are random, shown once, stored only as SHA-256, expire, and work once. Every
issue, enrollment and revocation updates the ``devices`` / ``enrollment_tokens`` tables
and appends its audit event in the same transaction (the token appears in the log only
as a 16-hex-digit prefix of its hash). ``get`` is what verification calls per update:
one primary-key query. A registry only sees its own region's rows, so a database shared
by several regions (``$FEDGATE_DB``) still keeps them apart, and its ``devices`` primary
key lets a key belong to one region only.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from fedgate.clients.identity import enroll_identity
from fedgate.crypto import (
    SignatureError,
    fingerprint,
    load_private_key,
    load_public_key,
    read_public_key,
    sha256_hex,
)
from fedgate.errors import UsageError
from fedgate.server.audit.actors import ActorRequest, admit, roster_in, signed_if_needed
from fedgate.server.audit.keys import ensure_region_key, region_key_path, region_pub_path
from fedgate.server.audit.store import Store
from fedgate.server.db.engine import resolve_url, write_txn
from fedgate.server.db.models import Device as DeviceRow
from fedgate.server.db.models import EnrollmentToken
from fedgate.server.trust.actors import local_actor_key
from fedgate.server.trust.enrollment_limits import DEFAULT_TOKEN_TTL, MAX_TOKEN_TTL

TOKEN_PREFIX = "fgt_"
ENROLL_DIR_TOKEN_TTL = 600.0  # the token ``enroll_device_dir`` issues and spends at once
TOKEN_ID_CHARS = 16  # how much of a token's hash the audit log and errors show
ACTIVE, REVOKED = "active", "revoked"
_PROFILE_RE = re.compile(r"[a-z0-9_-]{0,16}\Z")
_HEX_RE = re.compile(r"[0-9a-f]{1,64}\Z")

DEVICES = DeviceRow.__table__
TOKENS = EnrollmentToken.__table__


class EnrollmentError(UsageError, ValueError):
    """An enrollment, revocation or registry operation was refused; ``reason`` is its
    machine-readable code (what the enrollment service answers with)."""

    def __init__(self, message: str, reason: str = "refused") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Device:
    """One enrolled device of a region; times are POSIX seconds."""

    device_id: str
    region: str
    public_key: bytes  # raw 32-byte Ed25519 public key
    enrolled_at: float
    profile: str = ""
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "region": self.region,
            "public_key": self.public_key.hex(),
            "enrolled_at": self.enrolled_at,
            "profile": self.profile,
            "revoked_at": self.revoked_at,
            "revoked": self.revoked,
        }


class DeviceRegistry(Protocol):
    """The storage-independent face of a region's registry."""

    region: str

    def issue_token(self, ttl_seconds: float = DEFAULT_TOKEN_TTL) -> str: ...
    def enroll(self, token: str, public_key: bytes, *, profile: str = "") -> Device: ...
    def revoke(self, device_id: str) -> Device: ...
    def get(self, device_id: str) -> Device | None: ...
    def devices(self) -> list[Device]: ...
    def resolve(self, prefix: str) -> str: ...


def token_hash(token: str) -> str:
    return sha256_hex(token.encode("utf-8"))


@dataclass(frozen=True)
class EnrollOrder:
    """One enrollment to make: the one-time token, the raw Ed25519 key, the profile."""

    token: str
    public_key: bytes
    profile: str = ""


def _profile(order: EnrollOrder) -> str:
    if not _PROFILE_RE.match(order.profile):
        raise EnrollmentError(
            f"bad device profile {order.profile!r} (lowercase name, <= 16 chars)", "bad-profile"
        )
    return order.profile


def check_region_name(region: str) -> str:
    if not region.isidentifier():
        raise EnrollmentError(f"region name must be a simple identifier like 'eu', got {region!r}")
    return region


def _to_dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _to_ts(value: datetime) -> float:
    """POSIX seconds of a stored time (SQLite gives back naive UTC)."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _device_id_of(public_key: bytes) -> str:
    try:
        return fingerprint(load_public_key(bytes(public_key)))
    except (SignatureError, ValueError, TypeError):
        raise EnrollmentError("not a raw 32-byte Ed25519 public key", "bad-signing-key") from None


class DatabaseDeviceRegistry:
    """``DeviceRegistry`` of ``region`` on a region database (see ``region_registry``).

    Writes take the database's write lock (SQLite ``BEGIN IMMEDIATE``; on PostgreSQL the
    token row is locked ``FOR UPDATE``), so of two enrollments with one token exactly one
    wins. A revocation made by another process is seen at the next ``get``.
    """

    def __init__(
        self,
        store: Store,
        region: str,
        *,
        clock: Callable[[], float] = time.time,
        actor_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.region = check_region_name(region)
        self.store = store
        self._clock = clock
        self.actor_key = actor_key  # signs token issues and revocations (an operator's)
        self._get = (
            select(DEVICES)
            .where(DEVICES.c.device_id == bindparam("device_id"))
            .where(DEVICES.c.region == self.region)
        )

    @property
    def url(self) -> str:
        """The database this registry lives in (password hidden)."""
        return self.store.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Close the database connections (the registry reconnects if used again)."""
        self.store.engine.dispose()

    def __enter__(self) -> DatabaseDeviceRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _audit(self, conn: Connection, kind: str, payload: dict[str, Any]) -> None:
        self.store.audit.append_in(conn, [(kind, payload)])
        if self.store.audit.signer is not None:
            self.store.audit.sign_in(conn)

    def _request(self, conn: Connection, kind: str, subject: str) -> dict[str, Any]:
        """The operator's signed request for a ``kind`` event on ``subject``, checked against
        the region's actors (``ActorError`` if it is needed and not valid); {} if not needed."""
        roster = roster_in(conn, self.region)
        request: ActorRequest | None = signed_if_needed(roster, self.actor_key, kind, subject)
        admit(conn, kind, self.region, subject, request, roster)
        return {} if request is None else {"request": request.to_json()}

    # -- DeviceRegistry -------------------------------------------------------------------

    def issue_token(self, ttl_seconds: float = DEFAULT_TOKEN_TTL) -> str:
        """A new one-time token, valid for ``ttl_seconds``; only its hash is stored."""
        if not 0 < ttl_seconds <= MAX_TOKEN_TTL:
            raise EnrollmentError(
                f"token lifetime must be positive and at most {MAX_TOKEN_TTL / 3600:g} hours"
            )
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = token_hash(token)
        now = self._clock()
        issued, expires = _to_dt(now), _to_dt(now + ttl_seconds)
        with write_txn(self.store.engine) as conn:
            conn.execute(
                insert(TOKENS).values(
                    token_hash=digest, region=self.region, issued_at=issued, expires_at=expires
                )
            )
            token_id = digest[:TOKEN_ID_CHARS]
            self._audit(
                conn,
                "device.token_issued",
                {
                    "region": self.region,
                    "token": token_id,
                    "expires_at": expires.isoformat(),
                    **self._request(conn, "device.token_issued", token_id),
                },
            )
        return token

    def enroll(self, token: str, public_key: bytes, *, profile: str = "") -> Device:
        """Register ``public_key`` with a valid unused token, consuming it atomically."""
        outcome = self.enroll_many([EnrollOrder(token, public_key, profile)])[0]
        if isinstance(outcome, EnrollmentError):
            raise outcome
        return outcome

    def enroll_many(self, orders: Sequence[EnrollOrder]) -> list[Device | EnrollmentError]:
        """Enroll every order in one write transaction: each checked as ``enroll`` checks it,
        each accepted one's ``device.enrolled`` event appended and its head signed (an auditor
        requires a signed head at every device event), one commit for all (group commit: what
        the enrollment service does with concurrent calls).
        Returns, in order, each one's ``Device`` or the ``EnrollmentError`` refusing it; a
        refused order writes nothing. Should another writer enroll one of the keys meanwhile
        (an ``IntegrityError`` aborts the whole transaction), each is retried on its own."""
        outcomes: list[Device | EnrollmentError | None] = [None] * len(orders)
        pending = []
        for i, order in enumerate(orders):
            try:
                pending.append((i, order, _device_id_of(order.public_key), _profile(order)))
            except EnrollmentError as exc:
                outcomes[i] = exc
        if not pending:
            return outcomes  # type: ignore[return-value]
        now = _to_dt(self._clock())
        try:
            with write_txn(self.store.engine, f"enrolling {len(pending)} device(s)") as conn:
                events = []
                for i, order, device_id, profile in pending:
                    try:
                        row, payload = self._enroll_in(conn, order, device_id, profile, now)
                    except EnrollmentError as exc:
                        outcomes[i] = exc
                        continue
                    outcomes[i] = self._device(row)
                    events.append(("device.enrolled", payload))
                if self.store.audit.signer is None:
                    self.store.audit.append_in(conn, events)
                else:  # an auditor requires a signed head at every device event
                    self.store.audit.append_signed_in(conn, events)
        except IntegrityError:  # the same key enrolled concurrently by another writer
            if len(pending) == 1:
                raise EnrollmentError(
                    f"device {pending[0][2][:16]} is already enrolled", "key-registered"
                ) from None
            return [self.enroll_many([order])[0] for order in orders]
        return outcomes  # type: ignore[return-value]

    def _enroll_in(
        self, conn: Connection, order: EnrollOrder, device_id: str, profile: str, now: datetime
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """One enrollment's checks and rows inside ``conn``'s write transaction (a refusal is
        raised before anything is written); returns the device row and its audit payload."""
        digest = token_hash(order.token.strip())
        self._check_token(conn, digest, now)
        known = conn.execute(
            select(DEVICES.c.region, DEVICES.c.status).where(DEVICES.c.device_id == device_id)
        ).first()
        if known is not None:
            state = "revoked" if known.status == REVOKED else "enrolled"
            where = "here" if known.region == self.region else f"in region {known.region}"
            raise EnrollmentError(
                f"device {device_id[:16]} is already {state} {where}", "key-registered"
            )
        row = {
            "device_id": device_id,
            "public_key": bytes(order.public_key).hex(),
            "region": self.region,
            "status": ACTIVE,
            "enrolled_at": now,
            "profile": profile,
            "revoked_at": None,
        }
        conn.execute(insert(DEVICES).values(**row))  # first: the token's used_by refers to it
        used = conn.execute(
            update(TOKENS)
            .where(TOKENS.c.token_hash == digest, TOKENS.c.used_at.is_(None))
            .values(used_at=now, used_by=device_id)
        )
        if used.rowcount != 1:  # a second guard, should the row lock ever be lost
            conn.execute(delete(DEVICES).where(DEVICES.c.device_id == device_id))
            raise EnrollmentError("this enrollment token has already been used", "token-used")
        payload = {
            "device": device_id,
            "region": self.region,
            "profile": profile,
            "public_key": row["public_key"],
            "token": digest[:TOKEN_ID_CHARS],
        }
        return row, payload

    def check_enrollable(self, token: str, public_key: bytes) -> str:
        """The device id ``enroll`` would record, if the token is valid now and the key is new;
        the same ``EnrollmentError`` it would raise otherwise. Reads only (no lock): the
        enrollment service calls it before registering a node key, ``enroll`` checks again."""
        device_id = _device_id_of(public_key)
        with self.store.engine.connect() as conn:
            entry = conn.execute(
                select(TOKENS.c.expires_at, TOKENS.c.used_at).where(
                    TOKENS.c.token_hash == token_hash(token.strip()),
                    TOKENS.c.region == self.region,
                )
            ).first()
            _token_usable(entry, self.region, _to_dt(self._clock()))
            known = conn.execute(
                select(DEVICES.c.region).where(DEVICES.c.device_id == device_id)
            ).first()
        if known is not None:
            raise EnrollmentError(f"device {device_id[:16]} is already enrolled", "key-registered")
        return device_id

    def record(self, kind: str, payload: dict[str, Any]) -> None:
        """Append one audit event of this region on its own (e.g. a refused enrollment)."""
        with write_txn(self.store.engine) as conn:
            self._audit(conn, kind, {"region": self.region, **payload})

    def _check_token(self, conn: Connection, digest: str, now: datetime) -> None:
        entry = conn.execute(
            select(TOKENS.c.expires_at, TOKENS.c.used_at)
            .where(TOKENS.c.token_hash == digest, TOKENS.c.region == self.region)
            .with_for_update()
        ).first()
        _token_usable(entry, self.region, now)

    def revoke(self, device_id: str, *, reason: str = "") -> Device:
        """Mark a device revoked (idempotent: revoking twice keeps the first time)."""
        now = _to_dt(self._clock())
        with write_txn(self.store.engine) as conn:
            done = conn.execute(
                update(DEVICES)
                .where(
                    DEVICES.c.device_id == device_id,
                    DEVICES.c.region == self.region,
                    DEVICES.c.revoked_at.is_(None),
                )
                .values(status=REVOKED, revoked_at=now)
            )
            if done.rowcount == 1:
                self._audit(
                    conn,
                    "device.revoked",
                    {
                        "device": device_id,
                        "region": self.region,
                        "reason": reason,
                        **self._request(conn, "device.revoked", device_id),
                    },
                )
            row = conn.execute(self._get, {"device_id": device_id}).first()
        if row is None:
            raise EnrollmentError(f"no device {device_id!r} in region {self.region}")
        return self._device(row._mapping)

    def get(self, device_id: str) -> Device | None:
        """The device (revoked or not), or None when this region never enrolled it."""
        with self.store.engine.connect() as conn:
            row = conn.execute(self._get, {"device_id": device_id}).first()
        return None if row is None else self._device(row._mapping)

    def devices(self) -> list[Device]:
        """Every device of this region, oldest enrollment first."""
        query = (
            select(DEVICES)
            .where(DEVICES.c.region == self.region)
            .order_by(DEVICES.c.enrolled_at, DEVICES.c.device_id)
        )
        with self.store.engine.connect() as conn:
            return [self._device(r._mapping) for r in conn.execute(query)]

    def resolve(self, prefix: str) -> str:
        """The one device id of this region starting with ``prefix`` (at least 8 hex digits)."""
        prefix = prefix.strip().lower()
        if len(prefix) < 8:
            raise EnrollmentError("give at least 8 characters of the device id")
        hits: list[str] = []
        if _HEX_RE.match(prefix):
            query = (
                select(DEVICES.c.device_id)
                .where(DEVICES.c.region == self.region, DEVICES.c.device_id.startswith(prefix))
                .limit(2)
            )
            with self.store.engine.connect() as conn:
                hits = list(conn.execute(query).scalars())
        if len(hits) != 1:
            what = "no device" if not hits else "more than one device"
            raise EnrollmentError(f"{what} in region {self.region} matches {prefix!r}")
        return hits[0]

    def _device(self, row: Any) -> Device:
        try:
            revoked = row["revoked_at"]
            return Device(
                device_id=row["device_id"],
                region=row["region"],
                public_key=bytes.fromhex(row["public_key"]),
                enrolled_at=_to_ts(row["enrolled_at"]),
                profile=row["profile"],
                revoked_at=None if revoked is None else _to_ts(revoked),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise EnrollmentError(f"corrupt device row in {self.url} ({exc})") from None


def _token_usable(entry: Any, region: str, now: datetime) -> None:
    """Raise the ``EnrollmentError`` a token row (or its absence) calls for at ``now``."""
    if entry is None:
        raise EnrollmentError(f"unknown enrollment token for region {region}", "unknown-token")
    if entry.used_at is not None:
        raise EnrollmentError("this enrollment token has already been used", "token-used")
    if _to_ts(now) >= _to_ts(entry.expires_at):
        raise EnrollmentError(
            "this enrollment token has expired; ask for a new one", "token-expired"
        )


def region_registry(
    home: str | Path,
    region: str,
    db: str | None = None,
    *,
    clock: Callable[[], float] = time.time,
    create: bool = True,
    actor_key: Ed25519PrivateKey | None = None,
) -> DatabaseDeviceRegistry:
    """The registry of ``region`` in its database, migrated to the newest schema.

    The database is ``db``, else ``$FEDGATE_DB``, else ``<home>/region-<region>.db``; audit
    heads are signed with the region server key (``<home>/keys/region-<region>.key``). With
    ``create`` the key is made on first use (what ``up`` needs); without it (every operator
    verb) a home where the region was never set up is an error and nothing is created.
    Token issues and revocations are signed with ``actor_key`` (default: the home's operator
    key, ``<home>/keys/operator.key``, if it has one).
    """
    check_region_name(region)
    url = resolve_url(db, home, region)
    signer = ensure_region_key(home, region) if create else existing_region_key(home, region)
    actor_key = actor_key or local_actor_key(home)
    store = Store.open(url, signer=signer)
    return DatabaseDeviceRegistry(store, region, clock=clock, actor_key=actor_key)


def existing_region_key(home: str | Path, region: str) -> Ed25519PrivateKey:
    """The region's signing key under ``home``; an error naming the way out if it is absent."""
    path = region_key_path(home, region)
    if not path.is_file():
        raise EnrollmentError(
            f"region {region} is not set up under {home} (no signing key {path}): run "
            f"`fedgate region init --region {region}` or `fedgate up` there first, or pass the "
            "right --home"
        )
    return load_private_key(path)


def region_anchor(home: str | Path, region: str) -> Ed25519PublicKey:
    """The region server's public key under ``home``: what its devices trust."""
    path = region_pub_path(home, check_region_name(region))
    if not path.is_file():
        raise EnrollmentError(
            f"no public key of region {region} at {path}; initialise the region on this home "
            f"first (`fedgate region init --region {region}` creates its key) "
            "or pass --region-key FILE"
        )
    return read_public_key(path)


def enroll_device_dir(
    home: str | Path,
    region: str,
    device_dir: str | Path,
    profile: str,
    db: str | None = None,
    *,
    force: bool = False,
) -> Device:
    """Enroll a device directory with ``region`` in one go (what a local topology needs).

    Runs the same device-side procedure as ``fedgate client enroll`` (key kept if present,
    registration, enrollment record, the region's key as trust anchor); its registration
    step issues a short-lived token and spends it at once.
    """
    registered: list[Device] = []
    with region_registry(home, region, db) as registry:
        anchor = region_anchor(home, region)

        def register(public_key: bytes) -> str:
            token = registry.issue_token(ttl_seconds=ENROLL_DIR_TOKEN_TTL)
            registered.append(registry.enroll(token, public_key, profile=profile))
            return registered[-1].device_id

        enroll_identity(Path(device_dir), region, profile, anchor, register, force=force)
    return registered[-1]


def revoke_device(
    home: str | Path,
    region: str,
    device: str,
    db: str | None = None,
    *,
    reason: str = "",
    actor_key: Ed25519PrivateKey | None = None,
) -> Device:
    """Revoke ``device`` (its id or a unique prefix of 8+ hex digits) in ``region``, signed by
    ``actor_key`` (default: the home's operator key)."""
    with region_registry(home, region, db, create=False, actor_key=actor_key) as registry:
        return registry.revoke(registry.resolve(device), reason=reason)
