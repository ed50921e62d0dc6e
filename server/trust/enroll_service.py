"""A region's enrollment service: devices enroll over HTTPS with one token, nothing else.

It runs on the operator side, next to the region's SuperLink, and is the only part a device
talks to that touches the region database or the SuperLink's Control API. Routes
(OpenAPI at ``/openapi.json``; the wire format and test vectors: ``docs/enrollment.md``):

- ``GET /health``: liveness (``fedgate up`` waits on it)
- ``GET /v1/ca``: the region CA certificate (a device checks it against the token's pin)
- ``GET /v1/challenge``: a fresh challenge to sign (``fedgate.enrollment_wire``)
- ``POST /v1/enroll``: token, signing key, node key, profile, challenge, proof of possession
  -> the device id, its node id and the region's trust bundle
- ``POST /v1/status``: a signed question "am I active?" -> active / revoked / unknown, and
  the region's verdicts on the device's latest updates

Every refusal is an HTTP error whose JSON body names a ``reason`` code and a ``detail``, and
an ``enrollment.refused`` audit event (rate-limit refusals: the first per address per
minute, so a flood cannot flood the log). Bodies are limited to ``max_body`` bytes; each
client address gets a token bucket of ``burst`` requests refilled at ``rate`` per second.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from fedgate.clients.node_key import NodeAuthError, parse_node_public_key
from fedgate.crypto import SignatureError, fingerprint, load_public_key, sha256_hex, verify
from fedgate.enrollment_wire import (
    ChallengeError,
    check_challenge,
    enroll_message,
    mint_challenge,
    status_message,
)
from fedgate.errors import UsageError
from fedgate.server.db.models import Update
from fedgate.server.trust.enroll_batch import EnrollBatcher
from fedgate.server.trust.enrollment import (
    TOKEN_ID_CHARS,
    DatabaseDeviceRegistry,
    EnrollmentError,
    EnrollOrder,
)
from fedgate.server.trust.node_auth import ControlTarget, NodeKeyInUse, register_public_key

log = logging.getLogger("fedgate.enroll")

API_VERSION = "v1"
MAX_BODY = 16 * 1024
DEFAULT_RATE = 20.0  # requests per second per client address
DEFAULT_BURST = 60
RELEASE_ROOT = Path("release") / "root.json"  # under <home>/regions/<region>/
UPDATES_SHOWN = 5
_HTTP = {
    "malformed-request": 422,
    "bad-signing-key": 422,
    "bad-node-key": 422,
    "bad-profile": 422,
    "body-too-large": 413,
    "rate-limited": 429,
    "wrong-region": 400,
    "bad-challenge": 400,
    "bad-proof": 401,
    "unknown-token": 403,
    "token-expired": 410,
    "token-used": 409,
    "key-registered": 409,
    "node-key-registered": 409,
    "superlink-unavailable": 503,
}


class Refusal(UsageError, ValueError):
    """A request the service refuses: an HTTP status, a reason code and a sentence."""

    def __init__(self, reason: str, detail: str, **facts: Any) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.facts = reason, detail, facts

    @property
    def status(self) -> int:
        return _HTTP.get(self.reason, 400)


# -- request and response bodies (the OpenAPI schema) -------------------------------------

_HEX64 = r"^[0-9a-f]{64}$"
_HEX128 = r"^[0-9a-f]{128}$"
_REGION = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"


class EnrollRequest(BaseModel):
    """One device's enrollment."""

    region: str = Field(pattern=_REGION, description="The region the token is for.")
    token: str = Field(min_length=1, max_length=256, description="The one-time fgt_ secret.")
    signing_key: str = Field(pattern=_HEX64, description="Raw Ed25519 public key, hex.")
    node_key: str = Field(
        min_length=1, max_length=1024, description="SuperNode key, OpenSSH ECDSA public line."
    )
    profile: str = Field(pattern=r"^[a-z0-9_-]{1,16}$", description="Device profile: phone, pi.")
    challenge: str = Field(min_length=1, max_length=128, description="From GET /v1/challenge.")
    proof: str = Field(pattern=_HEX128, description="Ed25519 signature of the enroll message.")


class StatusRequest(BaseModel):
    """A device asking about itself, signed with its key."""

    region: str = Field(pattern=_REGION)
    signing_key: str = Field(pattern=_HEX64)
    challenge: str = Field(min_length=1, max_length=128)
    proof: str = Field(pattern=_HEX128)


class TrustBundle(BaseModel):
    """What a device trusts and where it connects, handed out once enrolled."""

    region: str
    region_ca_pem: str
    region_server_key: str  # hex of the raw Ed25519 key that signs instructions
    fleet_address: str
    fleet_tls: bool
    enrollment_url: str
    release_root: dict[str, Any] | None = None  # <home>/regions/<r>/release/root.json


class EnrollResponse(BaseModel):
    device_id: str
    node_id: int | None
    profile: str
    bundle: TrustBundle


class UpdateVerdict(BaseModel):
    run: str
    round: int
    verdict: str
    reason: str


class StatusResponse(BaseModel):
    device_id: str
    region: str
    status: str  # active, revoked, unknown
    revoked_at: float | None = None
    updates: list[UpdateVerdict] = []


class ChallengeResponse(BaseModel):
    challenge: str
    expires_at: float


class CaResponse(BaseModel):
    region: str
    ca_pem: str


class RefusalBody(BaseModel):
    reason: str
    detail: str


# -- the service ----------------------------------------------------------------------------


@dataclass
class ServiceSettings:
    """One region's enrollment service: where its records are and what it hands out."""

    registry: DatabaseDeviceRegistry
    ca_pem: bytes
    region_server_key: bytes  # raw 32 bytes
    fleet_address: str
    public_url: str  # how devices reach this service (goes into the bundle)
    control: ControlTarget | None = None  # None: no SuperNode authentication (insecure fleet)
    # Where the release root metadata is, first found wins: a file, or a release repository's
    # metadata directory (its newest ``N.root.json``). Read at each enrollment, so a release
    # repository set up after the service started is handed out too.
    release_roots: tuple[Path, ...] = ()
    rate: float = DEFAULT_RATE
    burst: int = DEFAULT_BURST
    max_body: int = MAX_BODY
    clock: Callable[[], float] = time.time
    challenge_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def region(self) -> str:
        return self.registry.region


def release_root_file(candidates: tuple[Path, ...]) -> Path | None:
    """The first candidate that holds release root metadata: a file, or the newest
    ``N.root.json`` of a directory."""
    for path in candidates:
        if path.is_file():
            return path
        if path.is_dir():
            versions = [(int(p.name.split(".", 1)[0]), p) for p in path.glob("*.root.json")
                        if p.name.split(".", 1)[0].isdigit()]  # fmt: skip
            if versions:
                return max(versions)[1]
    return None


class RateLimiter:
    """A token bucket per client address; ``admit`` says whether a request may proceed."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._noted: dict[str, float] = {}  # address -> when its last refusal was audited
        self._lock = threading.Lock()

    def admit(self, address: str) -> bool:
        now = self.clock()
        with self._lock:
            tokens, then = self._buckets.get(address, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            ok = tokens >= 1.0
            self._buckets[address] = (tokens - 1.0 if ok else tokens, now)
            if len(self._buckets) > 10_000:  # forget full buckets (idle addresses)
                self._buckets = {
                    a: b for a, b in self._buckets.items() if b[0] < self.burst - 1 or a == address
                }
            return ok

    def first_refusal(self, address: str, window: float = 60.0) -> bool:
        """True once per ``window`` per address: whether to audit this refusal."""
        now = self.clock()
        with self._lock:
            if now - self._noted.get(address, -window) < window:
                return False
            if len(self._noted) > 10_000:
                self._noted = {a: t for a, t in self._noted.items() if now - t < window}
            self._noted[address] = now
            return True


class SpentChallenges:
    """Challenges already used, kept until they expire (a challenge works once)."""

    def __init__(self) -> None:
        self._spent: dict[str, float] = {}
        self._lock = threading.Lock()

    def spend(self, challenge: str, expiry: float, now: float) -> bool:
        with self._lock:
            if len(self._spent) > 1000:
                self._spent = {c: e for c, e in self._spent.items() if e > now}
            if challenge in self._spent:
                return False
            self._spent[challenge] = expiry
            return True


class EnrollmentService:
    """The request handling of ``create_app``, free of HTTP (tests call it directly)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.s = settings
        self.spent = SpentChallenges()
        self._node_lock = threading.Lock()  # one Control API registration at a time
        self.batcher = EnrollBatcher(settings.registry)  # concurrent calls: one transaction

    # -- helpers
    def refuse(self, refusal: Refusal, client: str) -> None:
        facts = {k: v for k, v in refusal.facts.items() if v}
        self.s.registry.record(
            "enrollment.refused",
            {"reason": refusal.reason, "detail": refusal.detail, "client": client, **facts},
        )

    def _challenge(self, challenge: str) -> None:
        now = self.s.clock()
        try:
            expiry = check_challenge(self.s.challenge_key, challenge, now)
        except ChallengeError as exc:
            raise Refusal("bad-challenge", str(exc)) from None
        if not self.spent.spend(challenge, expiry, now):
            raise Refusal("bad-challenge", "challenge already used; get a new one")

    def _region(self, region: str) -> None:
        if region != self.s.region:
            raise Refusal(
                "wrong-region",
                f"this is the enrollment service of region {self.s.region}, not {region}",
            )

    @staticmethod
    def _proof(signing_key: str, proof: str, message: bytes) -> str:
        try:
            key = load_public_key(bytes.fromhex(signing_key))
            verify(key, bytes.fromhex(proof), message)
        except (SignatureError, ValueError):
            raise Refusal(
                "bad-proof", "the proof of possession does not verify with this signing key"
            ) from None
        return fingerprint(key)

    def bundle(self) -> TrustBundle:
        root = None
        path = release_root_file(self.s.release_roots)
        if path is not None:
            try:
                root = json.loads(path.read_text())
            except (OSError, ValueError) as exc:  # the operator's file: say so, enroll anyway
                log.error("release root metadata %s unreadable, not handed out: %s", path, exc)
        return TrustBundle(
            region=self.s.region,
            region_ca_pem=self.s.ca_pem.decode(),
            region_server_key=self.s.region_server_key.hex(),
            fleet_address=self.s.fleet_address,
            fleet_tls=self.s.control is not None,
            enrollment_url=self.s.public_url,
            release_root=root,
        )

    # -- calls
    def challenge(self) -> ChallengeResponse:
        c = mint_challenge(self.s.challenge_key, self.s.clock())
        return ChallengeResponse(challenge=c, expires_at=float(c.split(".", 1)[0]))

    def enroll(self, req: EnrollRequest) -> EnrollResponse:
        token_id = sha256_hex(req.token.strip().encode())[:TOKEN_ID_CHARS]
        facts = {"token": token_id}
        try:
            self._region(req.region)
            self._challenge(req.challenge)
            message = enroll_message(
                region=req.region,
                secret_sha256=sha256_hex(req.token.strip().encode()),
                challenge=req.challenge,
                signing_key=req.signing_key,
                node_key=req.node_key,
                profile=req.profile,
            )
            device_id = self._proof(req.signing_key, req.proof, message)
            facts["device"] = device_id
            try:
                node_key = parse_node_public_key(req.node_key)
            except NodeAuthError as exc:
                raise Refusal("bad-node-key", str(exc)) from None
            if req.profile not in ("phone", "pi"):
                raise Refusal("bad-profile", f"unknown device profile {req.profile!r}")
            signing_key = bytes.fromhex(req.signing_key)
            self.s.registry.check_enrollable(req.token, signing_key)
            node_id = self._register_node(node_key, device_id)
            try:
                self.batcher.enroll(EnrollOrder(req.token, signing_key, req.profile))
            except EnrollmentError:
                self._unregister(node_id)
                raise
        except EnrollmentError as exc:
            raise Refusal(exc.reason, str(exc), **facts) from None
        except Refusal as refusal:
            refusal.facts = {**facts, **refusal.facts}
            raise
        return EnrollResponse(
            device_id=device_id, node_id=node_id, profile=req.profile, bundle=self.bundle()
        )

    def _register_node(self, key: Any, device_id: str) -> int | None:
        target = self.s.control
        if target is None:
            return None
        with self._node_lock:
            try:
                return register_public_key(target, key, name=device_id, reuse=False)
            except NodeKeyInUse:
                raise Refusal(
                    "node-key-registered",
                    "this node key is already registered at the region's SuperLink; make a new one",
                ) from None
            except NodeAuthError as exc:
                log.error("node key registration failed: %s", exc)
                raise Refusal(
                    "superlink-unavailable",
                    "the region's SuperLink did not register the node key; try again later",
                ) from None

    def _unregister(self, node_id: int | None) -> None:
        if node_id is None or self.s.control is None:
            return
        from fedgate.server.trust.node_auth import unregister_node

        try:
            unregister_node(self.s.control, node_id)
        except NodeAuthError as exc:  # logged: the operator sees an orphan node key
            log.error("could not unregister node %s after a refused enrollment: %s", node_id, exc)

    def status(self, req: StatusRequest) -> StatusResponse:
        facts: dict[str, Any] = {}
        try:
            self._region(req.region)
            self._challenge(req.challenge)
            message = status_message(
                region=req.region, signing_key=req.signing_key, challenge=req.challenge
            )
            device_id = self._proof(req.signing_key, req.proof, message)
        except Refusal as refusal:
            refusal.facts = {**facts, **refusal.facts, "call": "status"}
            raise
        device = self.s.registry.get(device_id)
        if device is None:
            return StatusResponse(device_id=device_id, region=self.s.region, status="unknown")
        return StatusResponse(
            device_id=device_id,
            region=self.s.region,
            status="revoked" if device.revoked else "active",
            revoked_at=device.revoked_at,
            updates=self._updates(device_id),
        )

    def _updates(self, device_id: str) -> list[UpdateVerdict]:
        table = Update.__table__
        query = (
            select(table.c.run_id, table.c.round, table.c.verdict, table.c.reason)
            .where(table.c.device_id == device_id)
            .order_by(table.c.id.desc())
            .limit(UPDATES_SHOWN)
        )
        with self.s.registry.store.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [UpdateVerdict(run=r[0], round=r[1], verdict=r[2], reason=r[3]) for r in rows]


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _refusal_response(refusal: Refusal) -> JSONResponse:
    headers = {"Retry-After": "1"} if refusal.reason == "rate-limited" else None
    return JSONResponse(
        {"reason": refusal.reason, "detail": refusal.detail},
        status_code=refusal.status,
        headers=headers,
    )


class _Guard:
    """ASGI middleware: per-address rate limit and body size limit, before any parsing."""

    def __init__(self, app: Any, service: EnrollmentService, limiter: RateLimiter) -> None:
        self.app, self.service, self.limiter = app, service, limiter

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope["client"][0] if scope.get("client") else "unknown"
        limit = self.service.s.max_body
        if not self.limiter.admit(client):
            refusal = Refusal("rate-limited", "too many requests from this address; slow down")
            if self.limiter.first_refusal(client):
                self.service.refuse(refusal, client)
            await _refusal_response(refusal)(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0")
        too_big = Refusal("body-too-large", f"request bodies are limited to {limit} bytes")
        if not declared.isdigit() or int(declared) > limit:
            self.service.refuse(too_big, client)
            await _refusal_response(too_big)(scope, receive, send)
            return
        body, more = b"", True
        while more:  # buffer the (small) body: chunked ones without a length are counted too
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                self.service.refuse(too_big, client)
                await _refusal_response(too_big)(scope, receive, send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


REFUSALS = {
    code: {"model": RefusalBody, "description": ", ".join(r for r, c in _HTTP.items() if c == code)}
    for code in sorted(set(_HTTP.values()))
}


def create_app(settings: ServiceSettings) -> FastAPI:
    """The service as an ASGI app (``serve`` runs it with uvicorn, tests in-process)."""
    service = EnrollmentService(settings)
    app = FastAPI(
        title=f"fedgate enrollment service (region {settings.region})",
        version=API_VERSION,
        description="Enroll a device with one token; see docs/enrollment.md.",
    )
    app.state.service = service

    @app.exception_handler(Refusal)
    async def refused(request: Request, exc: Refusal) -> JSONResponse:
        service.refuse(exc, _client(request))
        return _refusal_response(exc)

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        refusal = Refusal("malformed-request", f"{where}: {first.get('msg', 'invalid')}")
        service.refuse(refusal, _client(request))
        return _refusal_response(refusal)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "region": settings.region}

    @app.get(f"/{API_VERSION}/ca", response_model=CaResponse)
    def ca() -> CaResponse:
        return CaResponse(region=settings.region, ca_pem=settings.ca_pem.decode())

    @app.get(f"/{API_VERSION}/challenge", response_model=ChallengeResponse)
    def challenge() -> ChallengeResponse:
        return service.challenge()

    @app.post(
        f"/{API_VERSION}/enroll", response_model=EnrollResponse, status_code=201,
        responses=REFUSALS,
    )  # fmt: skip
    def enroll(req: EnrollRequest) -> EnrollResponse:
        return service.enroll(req)

    @app.post(f"/{API_VERSION}/status", response_model=StatusResponse, responses=REFUSALS)
    def status(req: StatusRequest) -> StatusResponse:
        return service.status(req)

    app.add_middleware(_Guard, service=service, limiter=RateLimiter(settings.rate, settings.burst))
    return app


def ca_der(pem: bytes) -> bytes:
    """The DER bytes of a PEM certificate (what a token's fingerprint covers)."""
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
