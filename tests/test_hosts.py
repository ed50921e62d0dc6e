"""The host layout behind every topology rendering, and how the transport follows it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fedgate.server.launch.config import parse_federation
from fedgate.server.launch.hosts import Host, Layout, local_layout, netns_layout
from fedgate.server.launch.transport import HOST, Transport, load_transport


def _fed():
    text = "[federation]\nname = 't'\n" + "".join(
        f"[regions.{r}]\nport = {port}\nnodes = {nodes!r}\nclients-per-round = 1\n"
        "min-clients = 1\naggregator = 'mean'\nf = 0\n"
        for r, port, nodes in (("eu", 30000, ["phone", "pi"]), ("us", 30100, ["phone"]))
    )
    return parse_federation(tomllib.loads(text), "t")


def test_the_local_layout_is_this_machine_for_every_host() -> None:
    layout = local_layout(_fed())
    assert {h.address for h in layout.hosts()} == {HOST}
    assert all(h.namespace is None and h.wrap(["x"]) == ["x"] for h in layout.hosts())


def test_the_netns_layout_gives_every_host_its_own_namespace_and_address() -> None:
    layout = netns_layout(_fed(), "fgp-ab12", "10.231.0.0/16")
    eu, us = layout.region("eu"), layout.region("us")
    assert (eu.server.address, eu.device(1).address, us.server.address) == (
        "10.231.1.1", "10.231.1.11", "10.231.2.1",
    )  # fmt: skip
    assert eu.device(0).namespace == "fgp-ab12-eu-d0"
    assert eu.device(0).wrap(["python"]) == ["ip", "netns", "exec", "fgp-ab12-eu-d0", "python"]
    assert eu.server.reach == "fleet-eu"
    assert set(eu.tls_names) == {"fleet-eu", "superlink-eu", "10.231.1.1"}
    assert len({h.namespace for h in layout.hosts() if h.namespace}) == 5
    with pytest.raises(ValueError, match="room for"):
        netns_layout(_fed(), "fgp", "10.231.0.0/24")


def test_the_transport_reaches_the_layout_s_addresses_and_records_them(tmp_path: Path) -> None:
    fed = _fed()
    layout = netns_layout(fed, "fgp-ab12", "10.231.0.0/16")
    transport = Transport(tmp_path, insecure=True, layout=layout)
    eu = fed.region("eu")
    assert transport.control(eu).address == f"10.231.1.1:{eu.superlink_port}"
    assert transport.supernode_flags(eu, None)[-1] == f"fleet-eu:{eu.fleet_port}"
    proxy = transport.proxy(eu)
    assert (proxy.listen_host, proxy.upstream) == ("10.231.1.1", f"10.231.1.1:{eu.port}")
    transport.save()
    assert load_transport(tmp_path) == transport  # later verbs see the same hosts
    assert Layout.from_dict(layout.to_dict()) == layout


def test_without_a_layout_the_transport_is_loopback(tmp_path: Path) -> None:
    eu = _fed().region("eu")
    transport = Transport(tmp_path, insecure=True)
    assert transport.control(eu).address == f"{HOST}:{eu.superlink_port}"
    assert transport.supernode_flags(eu, None) == ["--insecure", "--superlink",
                                                   f"{HOST}:{eu.fleet_port}"]  # fmt: skip
    assert Transport(tmp_path, insecure=True, layout=local_layout(_fed())).proxy(eu) == (
        transport.proxy(eu)
    )
    assert Host("x").reach == HOST
