"""``fedgate client join`` stops cleanly on Ctrl-C and SIGTERM within seconds, even while its
SuperNode retries an unreachable region, and leaves no process behind (the SuperNode's whole
process group is ended and reaped). A real SuperNode, no SuperLink: the region's fleet
address is a closed port."""

from __future__ import annotations

import signal
import time

import pytest
from conftest import processes_mentioning
from enroll_kit import serving, setup_region
from test_net_enroll_live import Joined

from fedgate.clients.enroll_client import enroll_over_network
from fedgate.procenv import flower_env
from fedgate.server.launch.processes import free_port_block

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_join_stops_within_seconds_and_leaves_nothing(sig, tmp_path) -> None:
    home = tmp_path / "region"
    setup_region(home, "eu")
    closed = free_port_block(2)  # closed: nothing listens; closed + 1: the service
    device = tmp_path / "pi"
    with serving(home, "eu", fleet=f"127.0.0.1:{closed}", port=closed + 1) as served:
        enroll_over_network(served.token(), "pi", device)
        env = flower_env({"FEDGATE_HOME": str(tmp_path / "device-home"),
                          "HOME": str(tmp_path)})  # fmt: skip
        joined = Joined(env, device)
        try:
            joined.wait_for("joining region eu", timeout=90)
            assert processes_mentioning(str(device)), "no SuperNode was running"
            t0 = time.monotonic()
            joined.proc.send_signal(sig)
            assert joined.ended(20) == 0, joined.output
            took = time.monotonic() - t0
        finally:
            if joined.proc.poll() is None:
                joined.proc.kill()
    assert f"stopped by {sig.name}" in joined.output
    assert took < 10, f"took {took:.1f} s to stop"
    assert not processes_mentioning(str(device)), "the device left a process behind"
