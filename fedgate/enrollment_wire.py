"""What a device and its region's enrollment service exchange: the token string, the server
challenge and the messages a device key signs (proof of possession, status request).

The token a region operator hands out is one line::

    fge1.<base64url(JCS JSON {"v":1,"url":…,"ca":…,"region":…,"exp":…,"secret":…})>

``url`` is the enrollment service (``https://host:port``), ``ca`` the SHA-256 (hex) of the
region CA certificate's DER, ``exp`` POSIX seconds, ``secret`` the one-time ``fgt_…`` token the
region stores only as a hash. A device pins ``ca`` (it refuses any other CA: no trust on first
use) before the secret leaves it.

A challenge is ``<expiry>.<nonce>.<mac>``: minted by the service under a key only it holds
(HMAC-SHA256), so it needs no storage to check; the service also remembers spent ones until
they expire. Signed messages are RFC 8785 canonical JSON with a ``purpose`` that separates
an enrollment proof from a status request (a signature of one is never valid as the other).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from fedgate.crypto import canonical_json, sha256_hex
from fedgate.errors import UsageError, VerificationError

TOKEN_SCHEME = "fge1."
SECRET_PREFIX = "fgt_"
ENROLL_PURPOSE = "fedgate-enroll-v1"
STATUS_PURPOSE = "fedgate-device-status-v1"
CHALLENGE_TTL = 120.0  # seconds a challenge stays valid
MAX_TOKEN_CHARS = 2048
_SECRET_RE = re.compile(r"fgt_[A-Za-z0-9_-]{16,128}\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_REGION_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_CHALLENGE_RE = re.compile(r"(\d{1,12})\.([A-Za-z0-9_-]{22})\.([0-9a-f]{64})\Z")


class TokenError(UsageError, ValueError):
    """An enrollment token string is malformed, expired or names something impossible."""


class ChallengeError(VerificationError, ValueError):
    """A server challenge is malformed, forged or expired."""


@dataclass(frozen=True)
class EnrollToken:
    """Everything a device needs to enroll, parsed from the one string it was given."""

    url: str  # the enrollment service, https://host:port
    ca_sha256: str  # SHA-256 hex of the region CA certificate (DER)
    region: str
    expires_at: float  # POSIX seconds
    secret: str  # the one-time fgt_… token

    def encode(self) -> str:
        body = {
            "v": 1,
            "url": self.url,
            "ca": self.ca_sha256,
            "region": self.region,
            "exp": int(self.expires_at),
            "secret": self.secret,
        }
        return TOKEN_SCHEME + base64.urlsafe_b64encode(canonical_json(body)).decode().rstrip("=")

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at

    @property
    def secret_sha256(self) -> str:
        return sha256_hex(self.secret.encode("utf-8"))


def is_network_token(text: str) -> bool:
    """Whether ``text`` is an enrollment token for the network (not a bare ``fgt_`` secret)."""
    return text.strip().startswith(TOKEN_SCHEME)


def parse_token(text: str) -> EnrollToken:
    """The token in ``text``; ``TokenError`` naming what is wrong otherwise."""
    text = text.strip()
    if len(text) > MAX_TOKEN_CHARS:
        raise TokenError(f"enrollment token is too long ({len(text)} > {MAX_TOKEN_CHARS} chars)")
    if not text.startswith(TOKEN_SCHEME):
        raise TokenError(
            f"not a network enrollment token (it must start with {TOKEN_SCHEME!r}); "
            "ask the region operator for `fedgate region enroll-token` output"
        )
    payload = text[len(TOKEN_SCHEME) :]
    try:
        raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        body = json.loads(raw)
    except (ValueError, binascii.Error):
        raise TokenError(
            "enrollment token is damaged (not base64url JSON); copy it again"
        ) from None
    if not isinstance(body, dict) or body.get("v") != 1:
        raise TokenError("enrollment token has an unknown version; update fedgate")
    want = {"v", "url", "ca", "region", "exp", "secret"}
    if set(body) != want:
        raise TokenError(f"enrollment token fields must be {sorted(want)}, got {sorted(body)}")
    url, ca, region, exp, secret = (body[k] for k in ("url", "ca", "region", "exp", "secret"))
    if not isinstance(url, str) or not re.match(r"https://[^\s/?#]+\Z", url):
        raise TokenError(f"enrollment token url must be https://host:port, got {url!r}")
    if not isinstance(ca, str) or not _HEX64.match(ca):
        raise TokenError("enrollment token CA fingerprint must be 64 lowercase hex digits")
    if not isinstance(region, str) or not _REGION_RE.match(region):
        raise TokenError(f"enrollment token region {region!r} is not a region name")
    if not isinstance(exp, int) or isinstance(exp, bool) or exp <= 0:
        raise TokenError("enrollment token expiry must be a positive integer (POSIX seconds)")
    if not isinstance(secret, str) or not _SECRET_RE.match(secret):
        raise TokenError("enrollment token secret is malformed")
    return EnrollToken(url, ca, region, float(exp), secret)


def ca_fingerprint(der: bytes) -> str:
    """SHA-256 hex of a CA certificate's DER bytes: what a token pins."""
    return sha256_hex(der)


# -- challenges ---------------------------------------------------------------------------


def _mac(key: bytes, expiry: int, nonce: str) -> str:
    return hmac.new(key, f"{expiry}.{nonce}".encode(), hashlib.sha256).hexdigest()


def mint_challenge(key: bytes, now: float | None = None, ttl: float = CHALLENGE_TTL) -> str:
    """A fresh challenge, valid ``ttl`` seconds, checkable with ``key`` alone."""
    expiry = int((time.time() if now is None else now) + ttl)
    nonce = secrets.token_urlsafe(16)
    return f"{expiry}.{nonce}.{_mac(key, expiry, nonce)}"


def check_challenge(key: bytes, challenge: str, now: float | None = None) -> float:
    """The challenge's expiry if ``key`` minted it and it has not expired; else
    ``ChallengeError``."""
    m = _CHALLENGE_RE.match(challenge) if isinstance(challenge, str) else None
    if m is None:
        raise ChallengeError("malformed challenge")
    expiry, nonce, mac = int(m.group(1)), m.group(2), m.group(3)
    if not hmac.compare_digest(mac, _mac(key, expiry, nonce)):
        raise ChallengeError("challenge was not issued by this service")
    if (time.time() if now is None else now) >= expiry:
        raise ChallengeError("challenge expired; get a new one")
    return float(expiry)


# -- signed messages ----------------------------------------------------------------------


def enroll_message(
    *, region: str, secret_sha256: str, challenge: str, signing_key: str, node_key: str,
    profile: str,
) -> bytes:  # fmt: skip
    """What a device signs to prove it holds ``signing_key`` (hex of the raw Ed25519 key):
    bound to the token (by hash), the service's challenge, the node key and the profile."""
    return canonical_json(
        {
            "purpose": ENROLL_PURPOSE,
            "region": region,
            "token_sha256": secret_sha256,
            "challenge": challenge,
            "signing_key": signing_key,
            "node_key": node_key,
            "profile": profile,
        }
    )


def status_message(*, region: str, signing_key: str, challenge: str) -> bytes:
    """What a device signs to ask its region about itself."""
    return canonical_json(
        {
            "purpose": STATUS_PURPOSE,
            "region": region,
            "signing_key": signing_key,
            "challenge": challenge,
        }
    )


def describe(token: EnrollToken) -> dict[str, Any]:
    """The token's public facts (never the secret), for display."""
    return {
        "url": token.url,
        "region": token.region,
        "ca_sha256": token.ca_sha256,
        "expires_at": token.expires_at,
    }
