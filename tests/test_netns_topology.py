"""Many hosts on one machine: a region run across Linux network namespaces.

The same host layout ``fedgate up`` uses (``fedgate.server.launch.hosts``), rendered as
namespaces (``fedgate.server.launch.netns``): the operator (this namespace), the EU server
host (SuperLink, executor, fleet proxy) and two EU device hosts (a SuperNode and its ClientApp
worker each), every host with its own address; devices reach the proxy as ``fleet-eu`` over
TLS. A US server host stands on its own network: the EU devices cannot reach it. Device links
are shaped like a phone's WAN where the kernel allows, and the round time is reported.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from conftest import processes_mentioning, region_toml
from cryptography import x509

from fedgate.server.launch.config import parse_federation
from fedgate.server.launch.hosts import netns_layout
from fedgate.server.launch.netns import available, build, destroy, run_in, wan
from fedgate.server.launch.processes import ProcessTable, free_port_block
from fedgate.server.launch.runner import follow, submit
from fedgate.server.launch.topology import down, up
from fedgate.server.trust.pki import region_tls

pytestmark = pytest.mark.skipif(
    bool(available()), reason=f"needs network namespaces: {available() or 'available'}"
)

CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
    "    print('connected')\n"
    "except OSError as exc:\n"
    "    print(f'refused: {exc}')\n"
)


def _federation(port: int):
    text = "[federation]\nname = 'netns'\nseed = 0\nalpha = 0.5\n\n" + "\n".join(
        [
            region_toml("eu", port, rounds=2, clients_per_round=2, min_clients=2,
                        nodes=["phone", "pi"], aggregator="mean", f=0, pre=""),
            region_toml("us", port + 100, clients_per_round=1, min_clients=1, nodes=["phone"],
                        aggregator="mean", f=0, pre=""),
        ]
    )  # fmt: skip
    return text, parse_federation(tomllib.loads(text), "netns test")


def test_a_region_run_across_network_namespaces(tmp_path: Path) -> None:
    port = free_port_block(200)
    text, both = _federation(port)
    prefix = f"fgp-{secrets.token_hex(2)}"
    layout = netns_layout(both, prefix, f"10.{200 + secrets.randbelow(50)}.0.0/16")
    eu_only = parse_federation(
        tomllib.loads(text.split("[regions.us]")[0]), "netns test, EU region"
    )
    home = tmp_path / "home"
    home.mkdir()
    (home / "federation.toml").write_text(text.split("[regions.us]")[0])
    net = build(layout)
    us_listener = None
    try:
        shaping = wan(layout, net)
        eu, us = layout.region("eu"), layout.region("us")
        # a real listener on the US fleet address: reachable by the operator, not by EU devices
        us_listener = subprocess.Popen(
            us.server.wrap([sys.executable, "-m", "http.server", str(port + 101),
                            "--bind", us.server.address]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        t0 = time.monotonic()
        up(eu_only, home, timeout=90, echo=lambda *_: None, layout=layout)
        up_s = time.monotonic() - t0

        procs = {p.name: p for p in ProcessTable(home).running()}
        node_cmd = procs["supernode-eu-0"].cmd
        assert node_cmd[:4] == ["ip", "netns", "exec", eu.device(0).namespace]
        assert f"fleet-eu:{port + 1}" in node_cmd  # the TLS name, not 127.0.0.1
        assert procs["superlink-eu"].cmd[3] == eu.server.namespace
        cert = x509.load_pem_x509_certificate(region_tls(home, "eu").server_cert.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert "fleet-eu" in names.get_values_for_type(x509.DNSName)

        events: list[dict] = []
        t1 = time.monotonic()
        sub = submit(eu_only, eu_only.region("eu"), home)
        done = follow([sub], lambda s, e: events.append(e), timeout=240)["eu"]
        run_s = time.monotonic() - t1
        rounds = [e for e in events if e["kind"] == "round"]
        assert [r["round"] for r in rounds] == [1, 2]
        assert all(r["accepted"] == 2 for r in rounds), rounds
        assert done["accepted"] == 4

        device = eu.device(0)
        own = run_in(device, [sys.executable, "-c", CONNECT, "fleet-eu", str(port + 1)])
        assert own.stdout.strip() == "connected", own
        foreign = run_in(device, [sys.executable, "-c", CONNECT, us.server.address,
                                  str(port + 101)])  # fmt: skip
        assert foreign.stdout.startswith("refused"), foreign
        wait_listening(us.server.address, port + 101)  # the operator does reach it

        ts = {r["round"]: r["ts"] for r in rounds}
        initial = next(e["ts"] for e in events if e["kind"] == "initial")
        print(
            f"\nnetns topology: up {up_s:.1f} s, run {run_s:.1f} s; round 1 "
            f"{ts[1] - initial:.1f} s, round 2 {ts[2] - ts[1]:.1f} s under WAN shaping "
            f"({shaping}); EU device -> US fleet: {foreign.stdout.strip()}"
        )
    finally:
        if us_listener is not None:
            us_listener.kill()
            us_listener.wait()
        down(home)
        destroy(net)
    assert not processes_mentioning(str(home))
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in listed


def wait_listening(address: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
