"""The device side of network enrollment: one token in, a ready device directory out.

``enroll_over_network`` pins the region CA from the token before anything secret leaves the
device (the CA is fetched once without verification and accepted only if its SHA-256 is
the token's; every later request verifies the server against it), proves possession of a
fresh device key over the service's challenge, and writes keys (0600) and trust anchors only
once the region has enrolled the device. ``device_status`` asks the region about this
device, signed with its key. The wire format: ``fedgate.enrollment_wire``, docs/enrollment.md.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fedgate.atomic_file import write_atomic
from fedgate.clients.identity import (
    ANCHORS_DIR,
    DeviceIdentity,
    Enrollment,
    IdentityError,
    check_profile,
    load_identity,
    read_enrollment,
    save_enrollment,
    store_identity,
)
from fedgate.clients.node_key import new_node_key, node_public_line, write_node_key
from fedgate.crypto import generate_key, load_public_key, save_public_key, sign
from fedgate.enrollment_wire import (
    EnrollToken,
    TokenError,
    ca_fingerprint,
    enroll_message,
    parse_token,
    status_message,
)
from fedgate.errors import UnavailableError, UsageError, VerificationError

TIMEOUT = 15.0


class EnrollRefused(UsageError, RuntimeError):
    """The region refused the request; ``reason`` is its code (docs/enrollment.md)."""

    def __init__(self, reason: str, detail: str, status: int) -> None:
        super().__init__(f"the region refused: {detail} [{reason}, HTTP {status}]")
        self.reason, self.detail, self.status = reason, detail, status


class PinMismatch(VerificationError, RuntimeError):
    """The service presented a CA other than the one the token pins."""


class ServiceUnreachable(UnavailableError, RuntimeError):
    """The enrollment service could not be reached."""


@dataclass(frozen=True)
class NetEnrollment:
    """What ``enroll_over_network`` did."""

    device_dir: Path
    enrollment: Enrollment
    node_id: int | None
    fleet_tls: bool
    release_root: bool  # release root metadata came with the bundle


def ca_path(device_dir: Path, region: str) -> Path:
    return Path(device_dir) / ANCHORS_DIR / f"{region}-ca.pem"


def _der(pem: bytes) -> bytes:
    try:
        return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
    except ValueError:
        raise PinMismatch("the service sent something that is not a PEM certificate") from None


def _context(ca_pem: bytes) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca_pem.decode())


def _answer(res: httpx.Response) -> dict[str, Any]:
    try:
        body = res.json()
    except ValueError:
        body = {}
    if res.is_success and isinstance(body, dict):
        return body
    if isinstance(body, dict) and "reason" in body:
        raise EnrollRefused(str(body["reason"]), str(body.get("detail", "")), res.status_code)
    raise EnrollRefused("http-error", res.text[:200] or res.reason_phrase, res.status_code)


def _call(client: httpx.Client, method: str, url: str, **kw: Any) -> dict[str, Any]:
    try:
        return _answer(client.request(method, url, **kw))
    except httpx.HTTPError as exc:
        raise ServiceUnreachable(
            f"cannot reach the enrollment service at {url} ({type(exc).__name__}: {exc})"
        ) from None


def pinned_ca(token: EnrollToken) -> bytes:
    """The region CA from the service, accepted only if its SHA-256 is the token's pin."""
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no system roots: none are needed
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE  # a public file, authenticated by its hash below
    with httpx.Client(verify=unverified, timeout=TIMEOUT) as client:
        body = _call(client, "GET", f"{token.url}/v1/ca")
    pem = str(body.get("ca_pem", "")).encode()
    got = ca_fingerprint(_der(pem))
    if got != token.ca_sha256:
        raise PinMismatch(
            f"the service at {token.url} presented a CA with SHA-256 {got[:16]}…, but the "
            f"token pins {token.ca_sha256[:16]}…; refusing to enroll (a wrong token, or "
            "someone in between)"
        )
    return pem


def check_token(text: str, now: float | None = None) -> EnrollToken:
    """The parsed token if it has not expired; ``TokenError`` otherwise."""
    token = parse_token(text)
    if token.expired(now):
        raise TokenError(
            f"this enrollment token for region {token.region} has expired; ask the region "
            "operator for a new one"
        )
    return token


@dataclass(frozen=True)
class Granted:
    """The region's answer to an enrollment, checked, with the keys it was made for (nothing
    written yet)."""

    token: EnrollToken
    identity: DeviceIdentity
    node: Any  # the node key (ECDSA private key)
    ca_pem: bytes
    answer: dict[str, Any]

    @property
    def bundle(self) -> dict[str, Any]:
        return self.answer["bundle"]


def request_enrollment(token: EnrollToken, profile: str, device_dir: Path) -> Granted:
    """The network half of enrollment: pin the CA, fresh keys, challenge, proof, the region's
    checked answer. Writes nothing (``enroll_over_network`` stores the result)."""
    ca_pem = pinned_ca(token)
    identity = DeviceIdentity(generate_key(), Path(device_dir))
    node = new_node_key()
    node_line = node_public_line(node)
    with httpx.Client(verify=_context(ca_pem), timeout=TIMEOUT) as client:
        challenge = str(_call(client, "GET", f"{token.url}/v1/challenge")["challenge"])
        signing_key = identity.public_key.hex()
        message = enroll_message(
            region=token.region,
            secret_sha256=token.secret_sha256,
            challenge=challenge,
            signing_key=signing_key,
            node_key=node_line,
            profile=profile,
        )
        body = {
            "region": token.region,
            "token": token.secret,
            "signing_key": signing_key,
            "node_key": node_line,
            "profile": profile,
            "challenge": challenge,
            "proof": sign(identity.key, message).hex(),
        }
        answer = _call(client, "POST", f"{token.url}/v1/enroll", json=body)
    bundle = answer.get("bundle") or {}
    if answer.get("device_id") != identity.device_id or bundle.get("region") != token.region:
        raise VerificationError(
            f"the region answered for another device or region ({answer.get('device_id')!r}, "
            f"{bundle.get('region')!r}); nothing was written"
        )
    if ca_fingerprint(_der(str(bundle.get("region_ca_pem", "")).encode())) != token.ca_sha256:
        raise PinMismatch("the trust bundle's CA is not the pinned one; nothing was written")
    return Granted(token, identity, node, ca_pem, answer)


def enroll_over_network(
    token_text: str, profile: str, device_dir: Path, *, force: bool = False
) -> NetEnrollment:
    """Enroll ``device_dir`` with the region the token names; see the module docstring."""
    device_dir = Path(device_dir)
    check_profile(profile)
    token = check_token(token_text)
    previous = read_enrollment(device_dir)
    if previous is not None and not force:
        raise IdentityError(
            f"{device_dir} is already enrolled in region {previous.region} as "
            f"{previous.device_id[:16]}; use --force to enroll again with new keys "
            "(a revoked device needs a new token)"
        )
    granted = request_enrollment(token, profile, device_dir)
    bundle, identity = granted.bundle, granted.identity
    server_key = load_public_key(bytes.fromhex(str(bundle["region_server_key"])))
    store_identity(identity, force=True)
    write_node_key(device_dir, granted.node, identity.device_id[:16])
    anchors = device_dir / ANCHORS_DIR
    save_public_key(server_key, anchors / f"{token.region}.pub")
    write_atomic(ca_path(device_dir, token.region), granted.ca_pem)
    root = bundle.get("release_root")
    if root is not None:
        write_atomic(anchors / f"{token.region}-release-root.json", json.dumps(root, indent=2))
    enrollment = Enrollment(
        token.region, identity.device_id, profile, str(bundle["fleet_address"]), token.url
    )
    save_enrollment(device_dir, enrollment)  # last: its presence means "enrolled"
    return NetEnrollment(
        device_dir, enrollment, granted.answer.get("node_id"), bool(bundle.get("fleet_tls")),
        root is not None,
    )  # fmt: skip


def device_status(device_dir: Path) -> dict[str, Any]:
    """Ask the region whether this device is active, revoked or unknown (and its latest
    update verdicts), signed with the device key."""
    device_dir = Path(device_dir)
    enrollment = read_enrollment(device_dir)
    if enrollment is None:
        raise IdentityError(f"{device_dir} is not enrolled; run `fedgate client enroll`")
    if not enrollment.service:
        raise IdentityError(
            f"{device_dir} was enrolled on the operator's machine, not over the network: it "
            "knows no enrollment service to ask (`fedgate region devices` shows its status)"
        )
    identity = load_identity(device_dir)
    ca = ca_path(device_dir, enrollment.region)
    if not ca.is_file():
        raise IdentityError(f"no region CA at {ca}; enroll again")
    with httpx.Client(verify=_context(ca.read_bytes()), timeout=TIMEOUT) as client:
        challenge = str(_call(client, "GET", f"{enrollment.service}/v1/challenge")["challenge"])
        signing_key = identity.public_key.hex()
        message = status_message(
            region=enrollment.region, signing_key=signing_key, challenge=challenge
        )
        body = {
            "region": enrollment.region,
            "signing_key": signing_key,
            "challenge": challenge,
            "proof": sign(identity.key, message).hex(),
        }
        return _call(client, "POST", f"{enrollment.service}/v1/status", json=body)
