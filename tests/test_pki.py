"""Region CA and server certificates: names, modes, idempotence, renewal, real TLS handshakes."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
import typer
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from fedgate.server.cli.pki import register
from fedgate.server.trust.pki import (
    PkiError,
    certificate_names,
    check_region_tls,
    ensure_region_pki,
    region_tls,
    signed_by,
)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _handshake(tls_dir, server_name: str) -> str:
    """Serve one TLS handshake with the region's server certificate; return the peer's view."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_dir.server_cert, tls_dir.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ssl.create_default_context(cafile=str(tls_dir.ca_cert))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            version = tls.version() or ""
            tls.sendall(b"x")
    finally:
        thread.join(5)
        listener.close()
    return version


def test_new_region_has_ca_and_server_cert_with_default_and_extra_names(tmp_path):
    result = ensure_region_pki(tmp_path, "eu", ["fleet.eu.example.org", "10.1.2.3", "SuperLink-EU"])
    tls = result.tls
    assert tls == region_tls(tmp_path, "eu") and tls.exists()
    assert result.created_ca and result.issued_server
    assert set(result.names) == {
        "localhost", "127.0.0.1", "fleet.eu.example.org", "10.1.2.3", "superlink-eu"
    }  # fmt: skip
    ca, server = _cert(tls.ca_cert), _cert(tls.server_cert)
    assert set(certificate_names(server)) == set(result.names)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert signed_by(server, ca)
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey)
    assert server.not_valid_after_utc <= ca.not_valid_after_utc
    assert dt.timedelta(days=300) < server.not_valid_after_utc - dt.datetime.now(dt.UTC)


def test_private_keys_are_0600_and_directory_0700(tmp_path):
    tls = ensure_region_pki(tmp_path, "eu").tls
    assert _mode(tls.ca_key) == 0o600
    assert _mode(tls.server_key) == 0o600
    assert _mode(tls.directory) == 0o700 and _mode(tls.ca_dir) == 0o700
    assert tls.ca_key.parent != tls.directory  # mounting tls/ never exposes the CA key
    assert _mode(tls.ca_cert) == 0o644


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "fleet.eu.example.org"])
def test_real_tls_handshake_verifies_against_the_region_ca(tmp_path, name):
    tls = ensure_region_pki(tmp_path, "eu", ["fleet.eu.example.org"]).tls
    assert _handshake(tls, name).startswith("TLSv1.")


def test_handshake_for_a_name_not_in_the_certificate_fails(tmp_path):
    tls = ensure_region_pki(tmp_path, "eu").tls
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls, "attacker.example.org")


def test_a_different_regions_ca_does_not_vouch_for_this_server(tmp_path):
    eu = ensure_region_pki(tmp_path, "eu").tls
    us = ensure_region_pki(tmp_path, "us").tls
    assert not signed_by(_cert(eu.server_cert), _cert(us.ca_cert))
    mixed = type(eu)(tmp_path / "mixed")
    mixed.directory.mkdir()
    mixed.ca_cert.write_bytes(us.ca_cert.read_bytes())
    mixed.server_cert.write_bytes(eu.server_cert.read_bytes())
    mixed.server_key.write_bytes(eu.server_key.read_bytes())
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(mixed, "localhost")


def test_rerun_keeps_everything_byte_for_byte(tmp_path):
    first = ensure_region_pki(tmp_path, "eu", ["fleet.eu.example.org"])
    files = [*first.tls.directory.iterdir(), first.tls.ca_key]
    before = {p: p.read_bytes() for p in files}
    again = ensure_region_pki(tmp_path, "eu")
    assert not again.created_ca and not again.issued_server
    assert {p: p.read_bytes() for p in files} == before
    assert sorted(p.name for p in again.tls.directory.iterdir()) == [
        "ca.pem", "server.key", "server.pem"
    ]  # fmt: skip
    assert "fleet.eu.example.org" in again.names


def test_new_host_reissues_only_the_server_cert_and_keeps_old_names(tmp_path):
    first = ensure_region_pki(tmp_path, "eu", ["a.example.org"])
    ca_bytes = first.tls.ca_cert.read_bytes()
    server_bytes = first.tls.server_cert.read_bytes()
    second = ensure_region_pki(tmp_path, "eu", ["b.example.org"])
    assert not second.created_ca and second.issued_server
    assert "lacks name" in second.reason
    assert second.tls.ca_cert.read_bytes() == ca_bytes
    assert second.tls.server_cert.read_bytes() != server_bytes
    assert {"a.example.org", "b.example.org"} <= set(
        certificate_names(_cert(second.tls.server_cert))
    )


def test_force_replaces_ca_and_server(tmp_path):
    first = ensure_region_pki(tmp_path, "eu", ["fleet.eu.example.org"])
    ca_bytes = first.tls.ca_cert.read_bytes()
    forced = ensure_region_pki(tmp_path, "eu", force=True)
    assert forced.created_ca and forced.issued_server
    assert forced.tls.ca_cert.read_bytes() != ca_bytes
    assert "fleet.eu.example.org" in forced.names
    assert signed_by(_cert(forced.tls.server_cert), _cert(forced.tls.ca_cert))


def test_server_cert_close_to_expiry_is_renewed(tmp_path):
    first = ensure_region_pki(tmp_path, "eu")
    later = first.not_after - dt.timedelta(days=10)
    renewed = ensure_region_pki(tmp_path, "eu", now=later)
    assert renewed.issued_server and "expires" in renewed.reason
    assert renewed.not_after > first.not_after


def test_server_key_that_does_not_match_is_replaced(tmp_path):
    first = ensure_region_pki(tmp_path, "eu")
    other = ensure_region_pki(tmp_path / "other", "eu")
    first.tls.server_key.write_bytes(other.tls.server_key.read_bytes())
    fixed = ensure_region_pki(tmp_path, "eu")
    assert fixed.issued_server and "does not match" in fixed.reason
    check_region_tls(fixed.tls)


def test_incomplete_ca_is_an_error_naming_the_missing_file(tmp_path):
    tls = ensure_region_pki(tmp_path, "eu").tls
    tls.ca_key.unlink()
    with pytest.raises(PkiError, match=r"ca\.key is missing.*--force"):
        ensure_region_pki(tmp_path, "eu")


def test_corrupt_ca_certificate_is_a_clear_error(tmp_path):
    tls = ensure_region_pki(tmp_path, "eu").tls
    tls.ca_cert.write_text("not a certificate")
    with pytest.raises(PkiError, match=r"ca\.pem: not a PEM certificate"):
        ensure_region_pki(tmp_path, "eu")


@pytest.mark.parametrize("bad", ["bad_name", "-lead.example", "a..b", "x" * 64, "", "a b"])
def test_invalid_host_names_are_refused(tmp_path, bad):
    with pytest.raises(PkiError, match="not a valid host name"):
        ensure_region_pki(tmp_path, "eu", [bad])
    assert not region_tls(tmp_path, "eu").ca_key.exists()


def test_invalid_region_name_is_refused(tmp_path):
    with pytest.raises(PkiError, match="simple identifier"):
        ensure_region_pki(tmp_path, "../eu")


def test_check_region_tls_names_what_is_missing(tmp_path):
    tls = ensure_region_pki(tmp_path, "eu").tls
    check_region_tls(tls, ["localhost"])
    with pytest.raises(PkiError, match=r"does not name \['fleet\.example\.org'\].*--host"):
        check_region_tls(tls, ["fleet.example.org"])
    tls.server_key.unlink()
    with pytest.raises(PkiError, match=r"server\.key is missing"):
        check_region_tls(tls)


def _cli() -> typer.Typer:
    app = typer.Typer()
    region_app = typer.Typer()
    register(region_app)
    app.add_typer(region_app, name="region")
    return app


def test_region_init_cli_makes_tls_material_and_the_signing_key(tmp_path):
    home = tmp_path / "home"
    args = ["region", "init", "--region", "eu", "--home", str(home), "--host", "fleet.eu.example"]
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 0, res.output
    assert "fleet.eu.example" in res.output and "new" in res.output
    assert region_tls(home, "eu").exists()
    assert (home / "keys" / "region-eu.key").is_file()
    assert _mode(home / "keys" / "region-eu.key") == 0o600
    pub = (home / "keys" / "region-eu.pub").read_text()
    again = CliRunner().invoke(_cli(), ["region", "init", "--region", "eu", "--home", str(home)])
    assert again.exit_code == 0 and "kept" in again.output
    assert (home / "keys" / "region-eu.pub").read_text() == pub


def test_region_init_cli_reports_bad_input_in_one_line(tmp_path):
    args = ["region", "init", "--region", "eu", "--home", str(tmp_path), "--host", "no_way"]
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 1
    assert "error: 'no_way' is not a valid host name" in res.output
    assert "Traceback" not in res.output


def test_region_init_cli_exports_only_public_material(tmp_path):
    home, public = tmp_path / "home", tmp_path / "public"
    args = ["region", "init", "--region", "eu", "--home", str(home), "--public-dir", str(public)]
    res = CliRunner().invoke(_cli(), args)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in public.iterdir()) == ["ca.pem", "region-eu.pub"]
    assert (public / "ca.pem").read_bytes() == region_tls(home, "eu").ca_cert.read_bytes()
    assert (public / "region-eu.pub").read_text() == (home / "keys" / "region-eu.pub").read_text()
    assert _mode(public / "ca.pem") == 0o644
