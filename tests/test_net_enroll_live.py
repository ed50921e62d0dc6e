"""A device enrolls over the network with one token, joins, trains, and is revoked, against a
real region on loopback (one topology for the module: one SuperLink, one local SuperNode and
the network device, two rounds). The device runs from a home of its own, with its own HOME,
and only the token; everything it writes stays in its device directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import processes_mentioning, region_toml

from fedgate.procenv import flower_env
from fedgate.server.launch.processes import free_port_block
from fedgate.server.launch.runner import follow, submit
from fedgate.server.launch.topology import region_health
from fedgate.server.launch.transport import load_transport
from fedgate.server.trust.node_auth import list_nodes

pytestmark = pytest.mark.integration
FEDGATE = str(Path(sys.executable).parent / "fedgate")


def run(env: dict, *args: object, code: int = 0) -> str:
    done = subprocess.run([FEDGATE, *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == code, done.stdout + done.stderr
    return done.stdout + done.stderr


class Joined:
    """``fedgate client join`` as a device owner runs it, its output collected line by line."""

    def __init__(self, env: dict, device: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [FEDGATE, "client", "join", "--device-home", str(device), "--status-every", "2",
             "--runtime-port", str(free_port_block(1, start=40000))],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None or self.reader.is_alive(), self.output
            assert time.monotonic() < deadline, f"never saw {text!r}:\n{self.output}"
            time.sleep(0.2)

    def ended(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(5)
        return code


def test_a_device_enrolls_with_one_token_trains_and_is_revoked(local_topology, tmp_path) -> None:
    port = free_port_block(20)
    region = region_toml(
        "eu", port, rounds=2, clients_per_round=2, min_clients=2, nodes=["phone"],
        aggregator="mean", f=0, pre="", joined_devices=True,
    )  # fmt: skip
    home, fed = local_topology(region)
    operator = flower_env({"FEDGATE_HOME": str(home)})
    token = run(operator, "region", "enroll-token", "--region", "eu").splitlines()[0]
    assert token.startswith("fge1.")

    # the device: its own home and HOME, the token and nothing else
    user = tmp_path / "owner"
    device = tmp_path / "pi"
    user.mkdir()
    owner = flower_env({"FEDGATE_HOME": str(tmp_path / "device-home"), "HOME": str(user)})
    owner.pop("FEDGATE_DB", None)
    out = run(owner, "client", "enroll", "--token", token, "--profile", "pi",
              "--device-home", device)  # fmt: skip
    assert "CA pinned by the token" in out and "node key registered" in out, out
    run(
        owner,
        "client",
        "enroll",
        "--token",
        token,
        "--profile",
        "pi",
        "--device-home",
        tmp_path / "second",
        code=1,
    )  # fmt: skip  (the token works once)
    device_id = (device / "enrollment.json").read_text().split('"device_id": "')[1][:64]

    joined = Joined(owner, device)
    try:
        joined.wait_for("connected to the region")
        # one process per device: its SuperNode and its ClientApp in the `client join` process
        (only,) = processes_mentioning(str(device))
        assert " client join " in only and "flower-supernode" not in only, only
        deadline = time.monotonic() + 60
        while region_health(home, fed.region("eu")).online < 2:
            assert time.monotonic() < deadline, joined.output
            time.sleep(0.5)
        sub = submit(fed, fed.region("eu"), home)
        done = follow([sub], lambda s, e: None, timeout=300)["eu"]
        assert done["rejected"] == 0, done
        joined.wait_for("round 2: update accepted by the region", timeout=30)
        # revoked while joined: told so, stops with exit 2, leaves nothing running
        run(operator, "region", "revoke", device_id[:16], "--region", "eu", "--reason", "lost")
        assert joined.ended(30) == 2, joined.output
    finally:
        if joined.proc.poll() is None:
            os.killpg(joined.proc.pid, signal.SIGKILL)
    view = joined.output
    assert "round 1: trained on" in view and "(the pi profile caps a round at 200)" in view, view
    assert "update signed" in view and "update sent" in view, view
    assert "REVOKED" in view, view
    assert not processes_mentioning(str(device)), "the device left a process behind"
    assert not (user / ".flwr").exists(), "the device wrote outside its directory"
    assert (device / "flwr-home").is_dir()

    from fedgate.server.audit.store import Store

    store = Store.open(f"sqlite:///{home / 'region-eu.db'}")
    with store.engine.connect() as conn:
        from sqlalchemy import text

        rows = conn.execute(text("SELECT round, verdict FROM updates WHERE device_id = :d "
                                 "ORDER BY round"), {"d": device_id}).all()  # fmt: skip
    assert [tuple(r) for r in rows] == [(1, "accepted"), (2, "accepted")]
    # refused at the transport: its node key is unregistered at the SuperLink
    target = load_transport(home).control(fed.region("eu"))
    assert {n.status for n in list_nodes(target) if n.name == device_id} == {"unregistered"}
    assert "revoked" in run(owner, "client", "status", "--device-home", device, code=2)
    assert "REVOKED" in run(owner, "client", "join", "--device-home", device, code=2)
    # and its updates rejected: an update signed with its key fails verification
    assert verdict_on_update(home, device) == "revoked-device"
    # a node key the SuperLink already knows is refused, even with a fresh token and key
    res = enroll_with_node_key(operator, home, (device / "node-auth.pub").read_text())
    assert (res.status_code, res.json()["reason"]) == (409, "node-key-registered"), res.text


def enroll_with_node_key(operator: dict, home: Path, node_line: str):
    """POST a well-formed enrollment (fresh token, fresh signing key) carrying ``node_line``."""
    import httpx

    from fedgate.clients.enroll_client import _context
    from fedgate.crypto import generate_key, public_bytes, sign
    from fedgate.enrollment_wire import enroll_message, parse_token

    token = parse_token(run(operator, "region", "enroll-token", "--region", "eu").splitlines()[0])
    key = generate_key()
    ca = (home / "regions" / "eu" / "tls" / "ca.pem").read_bytes()
    with httpx.Client(verify=_context(ca), timeout=30) as client:
        challenge = client.get(f"{token.url}/v1/challenge").json()["challenge"]
        facts = dict(region="eu", secret_sha256=token.secret_sha256, challenge=challenge,
                     signing_key=public_bytes(key).hex(), node_key=node_line.strip(),
                     profile="pi")  # fmt: skip
        body = {"region": "eu", "token": token.secret, "signing_key": facts["signing_key"],
                "node_key": facts["node_key"], "profile": "pi", "challenge": challenge,
                "proof": sign(key, enroll_message(**facts)).hex()}  # fmt: skip
        return client.post(f"{token.url}/v1/enroll", json=body)


def verdict_on_update(home: Path, device: Path) -> str:
    """The region's verification verdict on an update signed with ``device``'s key."""
    from flwr.app import ArrayRecord

    from fedgate.clients.identity import load_identity
    from fedgate.server.trust.enrollment import region_registry
    from fedgate.strategies.envelope import (
        RejectedUpdate,
        arrayrecord_digest,
        sign_update,
        verify_envelope,
    )

    arrays = ArrayRecord([np.zeros(3, dtype=np.float32)])
    facts = {"region": "eu", "run_id": "eu-run-0001", "server_round": 1, "nonce": "ab" * 16}
    metrics = {"num-examples": 1}
    key = load_identity(device).key
    envelope = sign_update(key, base=arrays, arrays=arrays, metrics=metrics, **facts)
    with region_registry(home, "eu", create=False) as registry:
        try:
            verify_envelope(
                envelope, arrays, expected_region="eu", run_id=facts["run_id"],
                server_round=1, nonce=facts["nonce"], global_digest=arrayrecord_digest(arrays),
                registry=registry, metrics=metrics,
            )  # fmt: skip
        except RejectedUpdate as exc:
            return exc.code
    return "accepted"
