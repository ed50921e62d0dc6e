"""Generate ``docs/enrollment-vectors.json``: the test vectors of ``docs/enrollment.md``.

Deterministic (fixed keys, fixed inputs, Ed25519 signatures are deterministic), so the file
is reproducible byte for byte::

    .venv/bin/python tests/vectors/make_enrollment_vectors.py          # rewrite the file
    .venv/bin/python tests/vectors/make_enrollment_vectors.py --check  # exit 1 if it differs

``tests/test_enrollment_wire.py`` recomputes every value and runs ``build()`` again.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgate.crypto import fingerprint, public_bytes, sha256_hex, sign
from fedgate.enrollment_wire import EnrollToken, enroll_message, status_message

OUT = Path(__file__).resolve().parents[2] / "docs" / "enrollment-vectors.json"
FORMAT = "fedgate.enrollment-vectors/1"
DEVICE_SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"  # RFC 8032 T1
CHALLENGE_KEY = "00" * 32
CA_SHA256 = sha256_hex(b"example region CA certificate (DER)")
SECRET = "fgt_" + "A" * 43
# any OpenSSH line: the proof covers it as a string
NODE_KEY = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBExample"


def _challenge(expiry: int, nonce: str) -> str:
    mac = hmac.new(bytes.fromhex(CHALLENGE_KEY), f"{expiry}.{nonce}".encode(), hashlib.sha256)
    return f"{expiry}.{nonce}.{mac.hexdigest()}"


def build() -> dict[str, Any]:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(DEVICE_SEED))
    token = EnrollToken("https://fleet.eu.example.org:8445", CA_SHA256, "eu", 1900000000, SECRET)
    challenge = _challenge(1900000000, "AAAAAAAAAAAAAAAAAAAAAA")
    signing_key = public_bytes(key).hex()
    enroll = enroll_message(
        region="eu",
        secret_sha256=token.secret_sha256,
        challenge=challenge,
        signing_key=signing_key,
        node_key=NODE_KEY,
        profile="pi",
    )
    status = status_message(region="eu", signing_key=signing_key, challenge=challenge)
    return {
        "format": FORMAT,
        "device_private_seed": DEVICE_SEED,
        "device_public_key": signing_key,
        "device_id": fingerprint(key),
        "token": {
            "fields": {
                "url": token.url,
                "ca": token.ca_sha256,
                "region": token.region,
                "exp": int(token.expires_at),
                "secret": token.secret,
            },
            "string": token.encode(),
            "secret_sha256": token.secret_sha256,
        },
        "challenge": {
            "key": CHALLENGE_KEY,
            "expiry": 1900000000,
            "nonce": "AAAAAAAAAAAAAAAAAAAAAA",
            "string": challenge,
        },
        "enroll": {
            "message_utf8": enroll.decode(),
            "signature": sign(key, enroll).hex(),
            "request": {
                "region": "eu",
                "token": SECRET,
                "signing_key": signing_key,
                "node_key": NODE_KEY,
                "profile": "pi",
                "challenge": challenge,
                "proof": sign(key, enroll).hex(),
            },
        },
        "status": {"message_utf8": status.decode(), "signature": sign(key, status).hex()},
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs")
    args = parser.parse_args()
    text = render()
    if args.check:
        same = OUT.exists() and OUT.read_text() == text
        print("up to date" if same else f"{OUT} differs; regenerate it", file=sys.stderr)
        return 0 if same else 1
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
