"""``FEDGATE_PORT_RANGE`` confines the loopback ports fedgate's launcher, tests and benchmarks
pick (a machine shared by several sessions, each given its own range)."""

from __future__ import annotations

import pytest

from fedgate.errors import FedgateError, UsageError
from fedgate.server.launch.processes import free_port_block, port_range


def test_the_range_in_the_environment_wins(monkeypatch) -> None:
    monkeypatch.setenv("FEDGATE_PORT_RANGE", "32100-32199")
    assert port_range(40000, 60000) == (32100, 32199)
    for size in (1, 5, 20):
        base = free_port_block(size, start=40000)
        assert base >= 32100 and base + size <= 32199


def test_without_it_the_callers_range_applies(monkeypatch) -> None:
    monkeypatch.delenv("FEDGATE_PORT_RANGE", raising=False)
    assert port_range(40000, 60000) == (40000, 60000)


@pytest.mark.parametrize("text", ["abc", "32100", "32199-32100", "0-100", "1000-70000", "-5-10"])
def test_a_malformed_range_is_one_clear_error(monkeypatch, text) -> None:
    monkeypatch.setenv("FEDGATE_PORT_RANGE", text)
    with pytest.raises(UsageError, match="FEDGATE_PORT_RANGE must be LOW-HIGH"):
        port_range(40000, 60000)


def test_a_block_larger_than_the_range_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("FEDGATE_PORT_RANGE", "32100-32110")
    with pytest.raises(FedgateError, match="no block of 20 loopback ports fits in 32100-32110"):
        free_port_block(20)
