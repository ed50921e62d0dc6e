"""Secure transport end to end: a TLS SuperLink with SuperNode authentication behind the
fleet-only proxy, real Flower processes on loopback.

Devices get only the proxy's address; the operator address (the SuperLink itself) is used
for run submission and node registration. Checked: an unregistered node key is refused, a
SuperNode without TLS cannot connect, run submission and node registration through the
device address are refused, and registered SuperNodes behind the proxy complete a round.
"""

from __future__ import annotations

import http.client
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from flwr.proto.control_pb2 import ListRunsRequest, StartRunRequest  # type: ignore[attr-defined]
from flwr.supercore.exit import ExitCode

from fedgate.clients.node_key import ensure_node_key, supernode_flags
from fedgate.procenv import flower_env, port_open
from fedgate.server.audit.keys import ensure_region_key
from fedgate.server.launch.config import FederationConfig, RegionConfig, parse_federation
from fedgate.server.launch.fleet_proxy import (
    ProxySpec,
    check_config,
    healthy,
    start_command,
    write_config,
)
from fedgate.server.launch.local_devices import device_dir, enroll_region_devices
from fedgate.server.launch.processes import ProcessTable, alive, free_port_block, wait_until
from fedgate.server.launch.runner import Submission, follow, run_config, to_toml, write_app
from fedgate.server.launch.topology import node_config
from fedgate.server.trust.node_auth import (
    ControlTarget,
    NodeAuthError,
    NodeKey,
    control_client,
    find_node,
    flwr_connection_toml,
    list_nodes,
    register_node,
    superlink_auth_flags,
    unregister_named,
    unregister_node,
)
from fedgate.server.trust.pki import RegionTls, ensure_region_pki, superlink_tls_flags

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

HOST = "127.0.0.1"


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@dataclass
class SecureRegion:
    """One region up with TLS, SuperNode auth and its fleet-only proxy."""

    home: Path
    fed: FederationConfig
    region: RegionConfig
    tls: RegionTls
    table: ProcessTable
    proxy: ProxySpec
    spare_port: int  # base of free ports for SuperNodes the tests start

    @property
    def operator(self) -> ControlTarget:
        return ControlTarget(f"{HOST}:{self.region.superlink_port}", self.tls.ca_cert)

    @property
    def device_address(self) -> str:
        return self.proxy.address

    @property
    def access_log(self) -> Path:
        return self.home / "proxy" / "logs" / "access.log"


def _our_processes(markers: list[str]) -> list[int]:
    """PIDs of live processes whose command line names one of ``markers`` (ours only)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(m in cmdline for m in markers) and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _assert_all_gone(markers: list[str], what: str) -> None:
    deadline = time.monotonic() + 15
    while _our_processes(markers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _our_processes(markers) == [], f"{what} left processes behind"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRegion]:
    home = tmp_path_factory.mktemp("secure-region")
    base = free_port_block(20)
    fed = parse_federation(
        {
            "federation": {"name": "secure", "seed": 0},
            "regions": {
                "eu": {
                    "rounds": 1,
                    "clients-per-round": 2,
                    "min-clients": 2,
                    "aggregator": "mean",
                    "f": 0,
                    "pre": "",
                    "round-timeout": 90.0,
                    "port": base,
                    "nodes": ["phone", "pi"],
                }
            },
        },
        "test",
    )
    region = fed.region("eu")
    tls = ensure_region_pki(home, "eu").tls
    ensure_region_key(home, "eu")
    enroll_region_devices(home, region)
    table = ProcessTable(home)
    state = home / "superlink"
    state.mkdir()
    proxy = ProxySpec(base + 2, f"{HOST}:{base}", tls.server_cert, tls.server_key, tls.ca_cert)
    link = table.start(
        "superlink-eu",
        [
            _script("flower-superlink"),
            *superlink_tls_flags(tls),
            *superlink_auth_flags(),
            "--isolation", "subprocess",
            "--database", str(state / "state.db"),
            "--host", HOST,
            "--port", str(base),
            "--disable-runtime-dependency-installation",
        ],
        {"FLWR_HOME": str(state / "flwr-home")},
    )  # fmt: skip
    markers = [str(home), f"{HOST}:{base}"]
    try:
        paths = write_config(proxy, home / "proxy")
        check_config(paths)
        nginx = table.start("fleet-proxy-eu", start_command(paths), {})
        wait_until(lambda: port_open(base), 60, "SuperLink", link.log, link.pid)
        wait_until(lambda: healthy(proxy, tls.ca_cert), 60, "fleet proxy", nginx.log, nginx.pid)
        assert len(_our_processes(markers)) >= 2  # the clean-up check below can see them
        yield SecureRegion(home, fed, region, tls, table, proxy, base + 3)
    finally:
        table.stop_all()
        _assert_all_gone(markers, "the SuperLink and proxy")


def _supernode(
    secure: SecureRegion,
    home: Path,
    port: int,
    tls_flags: list[str],
    superlink: str | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a SuperNode expected to give up; returns its exit status and output."""
    cmd = [
        _script("flower-supernode"),
        *tls_flags,
        "--superlink", superlink or secure.device_address,
        "--isolation", "process",
        "--host", HOST,
        "--port", str(port),
        "--max-retries", "2",
        "--max-wait-time", "30",
    ]  # fmt: skip
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        cmd,
        env=flower_env({"FLWR_HOME": str(home)}),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _assert_refused(res: subprocess.CompletedProcess[str]) -> None:
    """The SuperNode gave up with Flower's 'could not connect to the SuperLink' exit."""
    output = res.stdout + res.stderr
    assert res.returncode != 0, output
    assert f"Exit Code: {ExitCode.SUPERNODE_CONNECTION_ERROR}" in output, output


def _post(secure: SecureRegion, path: str) -> int:
    ctx = ssl.create_default_context(cafile=str(secure.tls.ca_cert))
    conn = http.client.HTTPSConnection(HOST, secure.proxy.listen_port, context=ctx, timeout=10)
    try:
        conn.request("POST", path, body=b"")
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_supernode_with_an_unregistered_key_is_refused(secure, tmp_path):
    stranger = ensure_node_key(tmp_path / "stranger")
    res = _supernode(
        secure, tmp_path / "flwr", secure.spare_port, supernode_flags(secure.tls.ca_cert, stranger)
    )
    _assert_refused(res)
    assert "Failed to activate SuperNode" in res.stdout + res.stderr
    assert find_node(secure.operator, stranger) is None
    assert 'POST /v1/fleet/activate-node HTTP/1.1" 412' in secure.access_log.read_text()


def test_a_supernode_that_skips_tls_cannot_connect(secure, tmp_path):
    before = len(list_nodes(secure.operator))
    # Through the device address: nginx answers plain HTTP on its TLS port with 400.
    res = _supernode(secure, tmp_path / "a", secure.spare_port + 1, ["--insecure"])
    _assert_refused(res)
    assert "400 Bad Request" in res.stdout + res.stderr
    # Straight at the SuperLink (were it reachable): it speaks only TLS as well.
    res = _supernode(
        secure,
        tmp_path / "b",
        secure.spare_port + 2,
        ["--insecure"],
        superlink=secure.operator.address,
    )
    _assert_refused(res)
    assert len(list_nodes(secure.operator)) == before


def test_a_supernode_that_does_not_trust_the_region_ca_cannot_connect(secure, tmp_path):
    node = ensure_node_key(tmp_path / "node")
    register_node(secure.operator, node, name="no-ca")
    # TLS without --root-certificates: the system trust store, which lacks the region CA.
    flags = ["--auth-supernode-private-key", str(node.private_path)]
    res = _supernode(secure, tmp_path / "flwr", secure.spare_port + 3, flags)
    _assert_refused(res)
    assert "CERTIFICATE_VERIFY_FAILED" in res.stdout + res.stderr


def test_run_submission_and_node_registration_are_refused_at_the_device_address(secure, tmp_path):
    device_side = ControlTarget(secure.device_address, secure.tls.ca_cert)
    # `flwr run` pointed at the device address.
    cli_home = tmp_path / "cli"
    cli_home.mkdir()
    (cli_home / "config.toml").write_text(flwr_connection_toml("device", device_side))
    app_dir = write_app(tmp_path, run_config(secure.fed, secure.region, secure.home))
    res = subprocess.run(
        [_script("flwr"), "run", str(app_dir), "device"],
        env=flower_env({"FLWR_HOME": str(cli_home)}),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode != 0
    assert "403" in res.stdout + res.stderr
    # Flower's own Control API client, StartRun straight at the device address.
    client = control_client(device_side)
    try:
        with pytest.raises(httpx.HTTPStatusError) as refused:
            client.StartRun(StartRunRequest())
        assert refused.value.response.status_code == 403
    finally:
        client.close()
    # Node registration (Control API) and Fleet self-registration.
    intruder = ensure_node_key(tmp_path / "intruder")
    with pytest.raises(NodeAuthError, match="HTTP 403"):
        register_node(device_side, intruder)
    assert _post(secure, "/v1/fleet/register-node") == 403
    assert _post(secure, "/v1/runtime/acquire-task") == 403
    # Nothing got through: no run, and the key is unknown to the SuperLink.
    client = control_client(secure.operator)
    try:
        assert len(client.ListRuns(ListRunsRequest()).run_dict) == 0
    finally:
        client.close()
    assert find_node(secure.operator, intruder) is None


def test_registration_is_idempotent_and_an_unregistered_key_stays_revoked(secure, tmp_path):
    node = ensure_node_key(tmp_path / "node")
    node_id = register_node(secure.operator, node, name="revoke-me")
    assert register_node(secure.operator, node) == node_id
    listed = find_node(secure.operator, node)
    assert listed is not None and listed.node_id == node_id and listed.name == "revoke-me"
    assert unregister_named(secure.operator, "revoke-me") == [node_id]
    assert unregister_named(secure.operator, "revoke-me") == []  # already revoked
    with pytest.raises(NodeAuthError, match="revoked"):
        register_node(secure.operator, node)
    with pytest.raises(NodeAuthError, match=r"HTTP 4\d\d"):
        unregister_node(secure.operator, node_id)  # Flower refuses a second unregistration
    res = _supernode(
        secure, tmp_path / "flwr", secure.spare_port + 4, supernode_flags(secure.tls.ca_cert, node)
    )
    _assert_refused(res)


def _start_device_side(secure: SecureRegion, table: ProcessTable) -> list[NodeKey]:
    """Register each device's node key, start its SuperNode behind the proxy and the worker."""
    region = secure.region
    keys, specs = [], []
    for i in range(len(region.nodes)):
        node = ensure_node_key(device_dir(secure.home, region.name, i), comment=f"eu-{i}")
        register_node(secure.operator, node, name=f"eu-{i}")
        flwr_home = secure.home / "regions" / region.name / f"node-{i}" / "flwr-home"
        table.start(
            f"supernode-eu-{i}",
            [
                _script("flower-supernode"),
                *supernode_flags(secure.tls.ca_cert, node),
                "--superlink", secure.device_address,
                "--isolation", "process",
                "--host", HOST,
                "--port", str(region.node_runtime_port(i)),
                "--node-config", node_config(secure.fed, region, i, secure.home),
            ],
            {"FLWR_HOME": str(flwr_home)},
        )  # fmt: skip
        log = table.log_dir / f"worker-eu-{i}.log"
        specs += ["--node", f"{HOST}:{region.node_runtime_port(i)},{flwr_home},{log}"]
        keys.append(node)
    table.start("workers-eu", [sys.executable, "-m", "fedgate.clients.worker", *specs], {})
    return keys


def test_registered_supernodes_behind_the_proxy_complete_a_round(secure, tmp_path):
    table = ProcessTable(tmp_path / "devices")
    markers = [str(tmp_path)] + [
        f"--port {secure.region.node_runtime_port(i)}" for i in range(len(secure.region.nodes))
    ]
    try:
        keys = _start_device_side(secure, table)

        def all_online() -> bool:
            fps = {k.fingerprint for k in keys}
            online = {n.fingerprint for n in list_nodes(secure.operator) if n.status == "online"}
            return fps <= online

        wait_until(all_online, 120, "registered SuperNodes online")
        assert len(_our_processes(markers)) >= 3  # SuperNodes and workers, visible to the check
        out_dir = tmp_path / "run"
        out_dir.mkdir()
        config = run_config(secure.fed, secure.region, secure.home, out_dir)
        app_dir = write_app(tmp_path, config)
        (out_dir / "run-config.toml").write_text(to_toml(config))
        cli_home = tmp_path / "operator-cli"
        cli_home.mkdir()
        (cli_home / "config.toml").write_text(flwr_connection_toml("eu", secure.operator))
        log = out_dir / "flwr-run.log"
        with log.open("wb") as fh:
            proc = subprocess.Popen(
                [
                    _script("flwr"), "run", str(app_dir), "eu",
                    "--run-config", str(out_dir / "run-config.toml"), "--stream",
                ],
                stdout=fh, stderr=subprocess.STDOUT, cwd=out_dir, start_new_session=True,
                env=flower_env({"FLWR_HOME": str(cli_home)}),
            )  # fmt: skip
        sub = Submission("eu", secure.home, out_dir, log, proc)
        finished = follow([sub], lambda s, e: None, timeout=600)["eu"]
        assert finished["rounds"] == 1
        assert finished["accepted"] == 2 and finished["rejected"] == 0, finished
        access = secure.access_log.read_text()
        assert 'POST /v1/fleet/push-messages HTTP/1.1" 200' in access
        assert 'POST /v1/fleet/pull-messages HTTP/1.1" 200' in access
    finally:
        table.stop_all()
        _assert_all_gone(markers, "the SuperNodes and workers")
