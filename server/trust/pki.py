"""A region's TLS material: its own CA and the server certificate its SuperLink and proxy use.

Layout under ``<home>/regions/<region>/`` (directories mode 0700)::

    tls/ca.pem       the region CA certificate: devices and operators trust this file
    tls/server.pem   the server certificate (SuperLink and the device-facing proxy)
    tls/server.key   its private key (mode 0600)
    ca/ca.key        the CA private key (mode 0600); only needed to issue server certificates

``tls/`` is all a SuperLink or proxy needs (mount just that); the CA key stays apart.

Keys are ECDSA P-256. The server certificate always names ``localhost`` and ``127.0.0.1``
plus every configured host name or address. ``ensure_region_pki`` is idempotent: it keeps a
valid CA and re-issues only a server certificate that is missing, broken, not signed by the
CA, lacks a requested name or expires within ``RENEW_BEFORE``. ``force`` replaces everything.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedgate.atomic_file import SECRET, write_atomic
from fedgate.errors import UsageError

DEFAULT_NAMES = ("localhost", "127.0.0.1")
CA_DAYS = 5 * 365
SERVER_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)
_BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between hosts
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


class PkiError(UsageError, ValueError):
    """TLS material is missing, inconsistent or a requested name is invalid."""


@dataclass(frozen=True)
class RegionTls:
    """Where one region's TLS files live."""

    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_dir(self) -> Path:
        return self.directory.parent / "ca"

    @property
    def ca_key(self) -> Path:
        return self.ca_dir / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    def exists(self) -> bool:
        return all(p.is_file() for p in (self.ca_cert, self.server_cert, self.server_key))


@dataclass(frozen=True)
class PkiResult:
    """What ``ensure_region_pki`` did and the names the server certificate now carries."""

    tls: RegionTls
    created_ca: bool
    issued_server: bool
    names: tuple[str, ...]
    not_after: dt.datetime
    reason: str = ""


def region_tls(home: str | Path, region: str) -> RegionTls:
    """The TLS directory of ``region`` under a fedgate home."""
    return RegionTls(Path(home) / "regions" / region / "tls")


def normalize_name(name: str) -> str:
    """A valid DNS name (lower-cased) or IP address (canonical form); else ``PkiError``."""
    text = name.strip()
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    dns = text.lower().rstrip(".")
    labels = dns.split(".")
    if not dns or len(dns) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise PkiError(
            f"{name!r} is not a valid host name or IP address for a certificate "
            "(letters, digits and '-' in dot-separated labels, e.g. fleet.eu.example.org)"
        )
    return dns


def server_names(hosts: Iterable[str] = ()) -> tuple[str, ...]:
    """The defaults plus ``hosts``, normalized, de-duplicated, in a stable order."""
    names: list[str] = []
    for name in (*DEFAULT_NAMES, *hosts):
        norm = normalize_name(name)
        if norm not in names:
            names.append(norm)
    return tuple(names)


def _san(names: Iterable[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def certificate_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The DNS names and IP addresses in a certificate's subjectAltName."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(
        str(entry.value) for entry in san if isinstance(entry, x509.DNSName | x509.IPAddress)
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _not_after(cert: x509.Certificate) -> dt.datetime:
    return cert.not_valid_after_utc


def _ski(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key.public_key())


def _key_usage(ca: bool) -> x509.KeyUsage:
    """A CA signs certificates; a server key only signs TLS handshakes (ECDHE)."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def make_ca(
    region: str, now: dt.datetime, days: int = CA_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed region CA that may sign server certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedgate"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"fedgate region {region} CA"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(_ski(key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(
    region: str,
    names: Iterable[str],
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: dt.datetime,
    days: int = SERVER_DAYS,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new server key and certificate for ``names``, signed by the region CA."""
    names = tuple(names)
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + dt.timedelta(days=days), _not_after(ca_cert))
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedgate"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"fedgate region {region} server"),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(_san(names), critical=False)
        .add_extension(_ski(key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as exc:
        raise PkiError(f"{path}: not a PEM certificate ({exc})") from None


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: expected an ECDSA private key, got {type(key).__name__}")
    return key


def _same_key(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    return key.public_key().public_numbers() == cert.public_key().public_numbers()


def signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    """Whether ``cert`` carries a valid signature of ``ca_cert``'s key."""
    if cert.issuer != ca_cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def load_ca(
    tls: RegionTls, now: dt.datetime | None = None
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The existing CA key and certificate, checked for consistency; else ``PkiError``."""
    now = now or _now()
    missing = [p for p in (tls.ca_cert, tls.ca_key) if not p.is_file()]
    if missing:
        raise PkiError(
            f"incomplete region CA: {missing[0]} is missing "
            "(restore it, or pass --force to make a new CA; every device must then be "
            "given the new ca.pem)"
        )
    cert, key = _load_cert(tls.ca_cert), _load_key(tls.ca_key)
    if not _same_key(key, cert):
        raise PkiError(f"{tls.ca_key} does not belong to {tls.ca_cert} (use --force to replace)")
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise PkiError(f"{tls.ca_cert} is not a CA certificate (use --force to replace)")
    if _not_after(cert) <= now:
        raise PkiError(
            f"the region CA {tls.ca_cert} expired on {_not_after(cert):%Y-%m-%d}; "
            "pass --force to make a new one and give every device the new ca.pem"
        )
    return key, cert


def _server_problem(
    tls: RegionTls, ca_cert: x509.Certificate, names: tuple[str, ...], now: dt.datetime
) -> str:
    """Why the existing server certificate must be re-issued ('' when it is fine)."""
    if not tls.server_cert.is_file() or not tls.server_key.is_file():
        return "no server certificate yet"
    try:
        cert, key = _load_cert(tls.server_cert), _load_key(tls.server_key)
    except PkiError as exc:
        return str(exc)
    if not _same_key(key, cert):
        return "server.key does not match server.pem"
    if not signed_by(cert, ca_cert):
        return "server.pem is not signed by the region CA"
    missing = sorted(set(names) - set(certificate_names(cert)))
    if missing:
        return f"server.pem lacks name(s) {missing}"
    if _not_after(cert) - now < RENEW_BEFORE:
        return f"server.pem expires on {_not_after(cert):%Y-%m-%d}"
    return ""


def ensure_region_pki(
    home: str | Path,
    region: str,
    hosts: Iterable[str] = (),
    *,
    force: bool = False,
    now: dt.datetime | None = None,
    ca_days: int = CA_DAYS,
    server_days: int = SERVER_DAYS,
) -> PkiResult:
    """Make (or keep) ``region``'s CA and server certificate under ``home``.

    The server certificate names ``localhost``, ``127.0.0.1``, the requested ``hosts`` and
    every name it already carried, so re-running without ``--host`` never drops a name.
    """
    if not region.isidentifier():
        raise PkiError(f"region name {region!r} must be a simple identifier like 'eu'")
    if ca_days < 1 or server_days < 1:
        raise PkiError("certificate validity must be at least one day")
    now = now or _now()
    tls = region_tls(home, region)
    for directory in (tls.directory, tls.ca_dir):
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    requested = server_names(hosts)

    created_ca = force or not (tls.ca_cert.exists() or tls.ca_key.exists())
    if created_ca:
        ca_key, ca_cert = make_ca(region, now, ca_days)
        write_atomic(tls.ca_key, _key_pem(ca_key), mode=SECRET)
        write_atomic(tls.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    else:
        ca_key, ca_cert = load_ca(tls, now)

    kept: tuple[str, ...] = ()
    if tls.server_cert.is_file():  # names survive re-issue, even a forced one
        try:
            kept = certificate_names(_load_cert(tls.server_cert))
        except PkiError:
            kept = ()
    names = server_names([*requested, *kept])
    reason = "forced" if force else _server_problem(tls, ca_cert, requested, now)
    if created_ca and not force:
        reason = "new CA"
    if reason:
        key, cert = make_server_cert(region, names, ca_key, ca_cert, now, server_days)
        write_atomic(tls.server_key, _key_pem(key), mode=SECRET)
        write_atomic(tls.server_cert, cert.public_bytes(serialization.Encoding.PEM))
    else:
        cert = _load_cert(tls.server_cert)
        names = certificate_names(cert)
    return PkiResult(tls, created_ca, bool(reason), tuple(names), _not_after(cert), reason)


def check_region_tls(
    tls: RegionTls, names: Iterable[str] = (), now: dt.datetime | None = None
) -> None:
    """Raise ``PkiError`` unless the server certificate is usable for ``names`` right now.

    Needs only ``ca.pem``, ``server.pem`` and ``server.key`` (a host that serves TLS does
    not need the CA key).
    """
    now = now or _now()
    for path in (tls.ca_cert, tls.server_cert, tls.server_key):
        if not path.is_file():
            raise PkiError(f"{path} is missing; run `fedgate region init` first")
    ca_cert, cert = _load_cert(tls.ca_cert), _load_cert(tls.server_cert)
    if not _same_key(_load_key(tls.server_key), cert):
        raise PkiError(f"{tls.server_key} does not match {tls.server_cert}")
    if not signed_by(cert, ca_cert):
        raise PkiError(f"{tls.server_cert} is not signed by {tls.ca_cert}")
    if not cert.not_valid_before_utc <= now < _not_after(cert):
        raise PkiError(f"{tls.server_cert} is not valid now (re-run `fedgate region init`)")
    missing = sorted(set(server_names(names)) - set(certificate_names(cert)))
    if missing:
        raise PkiError(
            f"{tls.server_cert} does not name {missing}; re-run `fedgate region init` "
            + " ".join(f"--host {m}" for m in missing)
        )


def superlink_tls_flags(tls: RegionTls) -> list[str]:
    """``flower-superlink`` flags serving Fleet, Control and Runtime APIs over TLS."""
    return [
        "--ssl-certfile", str(tls.server_cert),
        "--ssl-keyfile", str(tls.server_key),
        "--ssl-ca-certfile", str(tls.ca_cert),
    ]  # fmt: skip
