"""compose.yaml is generated from the host layout (``server/launch/compose.py``), not kept by
hand: the committed file is the rendering, and any federation renders to a consistent file."""

from __future__ import annotations

import collections
import re
from pathlib import Path

import yaml
from conftest import fedgate_cli
from typer.testing import CliRunner

from fedgate import cli
from fedgate.server.launch.compose import COMPOSE_FEDERATION, render_compose
from fedgate.server.launch.config import parse_federation
from fedgate.server.launch.hosts import compose_layout, compose_networks, fleet_name

ROOT = Path(__file__).resolve().parent.parent
THREE_REGIONS = """
[federation]
name = "three"
[regions.eu]
clients-per-round = 3
min-clients = 1
aggregator = "mean"
f = 0
port = 30000
nodes = ["phone", "pi", "phone"]
[regions.us]
port = 30100
clients-per-round = 1
min-clients = 1
aggregator = "mean"
f = 0
nodes = ["pi"]
[regions.apac]
port = 30200
clients-per-round = 2
min-clients = 1
aggregator = "mean"
f = 0
nodes = ["phone", "phone"]
"""


def _services_in_order(text: str) -> list[str]:
    """Service keys as written (YAML loaders silently keep only the last of duplicates)."""
    body = text.split("\nservices:\n", 1)[1].split("\nnetworks:\n", 1)[0]
    return re.findall(r"^  ([a-z0-9-]+):", body, flags=re.MULTILINE)


def test_the_committed_compose_file_is_the_rendering_of_the_layout():
    assert (ROOT / "compose.yaml").read_text() == render_compose(COMPOSE_FEDERATION), (
        "compose.yaml drifted from its template/layout: run `fedgate deploy compose --out "
        "compose.yaml`"
    )


def test_any_federation_renders_unique_services_on_the_layouts_networks(tmp_path):
    import tomllib

    fed = parse_federation(tomllib.loads(THREE_REGIONS), "three")
    text = render_compose(fed)
    names = _services_in_order(text)
    assert [n for n, c in collections.Counter(names).items() if c > 1] == []
    doc = yaml.safe_load(text)
    services = doc["services"]
    layout = compose_layout(fed)
    for service, networks in compose_networks(layout).items():
        assert set(services[service]["networks"]) == networks, service
    for region in fed.regions:
        devices = layout.region(region.name).devices
        assert len(devices) == len(region.nodes)
        for i, device in enumerate(devices):
            cmd = services[device.address]["command"]
            assert cmd[cmd.index("--superlink") + 1] == f"{fleet_name(region.name)}:8443"
            config = cmd[cmd.index("--node-config") + 1]
            assert f"partition-id={i} num-partitions={len(region.nodes)}" in config
            assert f"profile='{region.nodes[i]}'" in config
        assert f"{region.name}-region" in doc["networks"]
        assert f"fleet-{region.name}-conf" in doc["configs"]
    assert {"supernode-eu-phone", "supernode-eu-phone-2", "supernode-apac-phone-2"} <= set(names)
    published = [p for s in services.values() for p in s.get("ports", [])]
    host_ports = [re.sub(r"\$\{[A-Z_]+:-(\d+)\}", r"\1", p).rsplit(":", 1)[0] for p in published]
    assert len(host_ports) == len(set(host_ports)), f"host ports collide: {host_ports}"


def test_cli_writes_checks_and_reports_drift(tmp_path):
    cfg = tmp_path / "three.toml"
    cfg.write_text(THREE_REGIONS)
    out = tmp_path / "compose.yaml"
    wrote = fedgate_cli("deploy", "compose", "--config", cfg, "--out", out)  # registers verbs
    assert "3 region(s), 6 device host(s)" in wrote
    check = ["deploy", "compose", "--config", str(cfg), "--out", str(out), "--check"]
    assert "is the rendering of the layout" in fedgate_cli(*check)
    out.write_text(out.read_text().replace("fleet-us:8443", "superlink-us:9093"))
    res = CliRunner().invoke(cli.app, check)
    assert res.exit_code == 1
    assert "is not the rendering of the layout" in res.output
    assert "superlink-us:9093" in res.output  # the diff shows the hand edit
