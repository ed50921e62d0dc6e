"""SuperNode authentication keys: the format Flower 1.41 itself loads, files and errors.

Registration against a real SuperLink is exercised in ``test_secure_transport.py``.
"""

from __future__ import annotations

import argparse
import socket
import stat
import tomllib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flwr.cli.flower_config import read_superlink_connection
from flwr.cli.supernode.register import try_load_public_key
from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

from fedgate.clients.node_key import (
    NODE_KEY_FILE,
    NODE_PUB_FILE,
    ensure_node_key,
    load_node_private_key,
    public_key_bytes,
    supernode_flags,
)
from fedgate.server.trust.node_auth import (
    ControlTarget,
    NodeAuthError,
    NodeKey,
    flwr_connection_toml,
    list_nodes,
    register_node,
)


def test_new_node_key_is_p384_openssh_with_private_file_0600(tmp_path):
    node = ensure_node_key(tmp_path / "dev", comment="phone 1")
    assert node == NodeKey(tmp_path / "dev" / NODE_KEY_FILE, tmp_path / "dev" / NODE_PUB_FILE)
    assert stat.S_IMODE(node.private_path.stat().st_mode) == 0o600
    assert node.private_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    line = node.public_path.read_text()
    assert line.startswith("ecdsa-sha2-nistp384 ") and line.rstrip().endswith(" phone1")
    assert isinstance(node.public_key().curve, ec.SECP384R1)
    assert len(node.fingerprint) == 64


def test_flower_supernode_loads_the_private_key(tmp_path):
    node = ensure_node_key(tmp_path)
    args = argparse.Namespace(
        auth_supernode_private_key=str(node.private_path), auth_supernode_public_key=None
    )
    private, public = _try_setup_client_authentication(args)
    assert public.public_numbers() == node.public_key().public_numbers()
    assert private.public_key().public_numbers() == node.public_key().public_numbers()


def test_flwr_supernode_register_loads_the_public_key(tmp_path):
    node = ensure_node_key(tmp_path)
    assert try_load_public_key(node.public_path) == public_key_bytes(node.public_key())


def test_existing_key_is_kept_and_force_replaces_it(tmp_path):
    first = ensure_node_key(tmp_path)
    before, fingerprint = first.private_path.read_bytes(), first.fingerprint
    assert ensure_node_key(tmp_path).private_path.read_bytes() == before
    first.public_path.unlink()
    again = ensure_node_key(tmp_path)  # the .pub is re-derived from the private key
    assert again.fingerprint == fingerprint
    forced = ensure_node_key(tmp_path, force=True)
    assert forced.private_path.read_bytes() != before
    assert forced.fingerprint != fingerprint


def test_public_file_of_another_key_is_an_error(tmp_path):
    ensure_node_key(tmp_path / "a")
    other = ensure_node_key(tmp_path / "b")
    (tmp_path / "a" / NODE_PUB_FILE).write_bytes(other.public_path.read_bytes())
    with pytest.raises(NodeAuthError, match="does not belong to"):
        ensure_node_key(tmp_path / "a")


def test_non_nist_key_is_refused_with_the_reason(tmp_path):
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    (tmp_path / NODE_KEY_FILE).write_bytes(pem)
    with pytest.raises(NodeAuthError, match="NIST curve"):
        ensure_node_key(tmp_path)


def test_garbage_or_missing_key_files_are_clear_errors(tmp_path):
    (tmp_path / NODE_KEY_FILE).write_text("hello")
    with pytest.raises(NodeAuthError, match="not an OpenSSH private key"):
        load_node_private_key(tmp_path / NODE_KEY_FILE)
    with pytest.raises(NodeAuthError, match="not found"):
        load_node_private_key(tmp_path / "missing.key")


def test_connection_toml_is_what_the_flwr_cli_reads(tmp_path, monkeypatch):
    ca = tmp_path / "ca.pem"
    text = flwr_connection_toml("eu", ControlTarget("127.0.0.1:9093", ca))
    assert tomllib.loads(text)["superlink"]["default"] == "eu"
    (tmp_path / "config.toml").write_text(text)
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    conn = read_superlink_connection("eu")
    assert conn.address == "127.0.0.1:9093"
    assert conn.root_certificates == str(ca.resolve())
    assert not conn.insecure
    plain = flwr_connection_toml("lab", ControlTarget("127.0.0.1:9093", None))
    (tmp_path / "config.toml").write_text(plain)
    assert read_superlink_connection().insecure


def test_connection_name_must_be_simple(tmp_path):
    with pytest.raises(NodeAuthError, match="simple identifier"):
        flwr_connection_toml('eu"]\nx', ControlTarget("127.0.0.1:1", None))


def test_supernode_flags_name_ca_and_key(tmp_path):
    node = ensure_node_key(tmp_path)
    flags = supernode_flags(tmp_path / "ca.pem", node)
    assert flags == [
        "--root-certificates", str(tmp_path / "ca.pem"),
        "--auth-supernode-private-key", str(node.private_path),
    ]  # fmt: skip


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_superlink_is_one_clear_error(tmp_path):
    node = ensure_node_key(tmp_path)
    target = ControlTarget(f"127.0.0.1:{_closed_port()}", None)
    with pytest.raises(NodeAuthError, match=r"cannot reach the SuperLink Control API at 127\.0\.0"):
        register_node(target, node)
    with pytest.raises(NodeAuthError, match="cannot reach"):
        list_nodes(target)


def test_missing_ca_file_is_one_clear_error(tmp_path):
    target = ControlTarget("127.0.0.1:1", tmp_path / "nope.pem")
    with pytest.raises(NodeAuthError, match=r"cannot read CA file .*nope\.pem"):
        list_nodes(target)
