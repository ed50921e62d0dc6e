"""A process that dies during start-up is reported with the error its log names."""

from __future__ import annotations

import socket

import pytest

from fedgate.server.launch.processes import (
    ProcessTable,
    TopologyError,
    exit_reason,
    wait_until,
)
from fedgate.server.launch.topology import SUPERLINK_LAUNCHER


def test_exit_reason_is_the_last_error_line_without_timestamp(tmp_path):
    log = tmp_path / "superlink.log"
    log.write_text(
        "2026-12-02T18:09:18.315Z INFO [uvicorn.error] Started server process [5062]\n"
        "2026-12-02T18:09:18.316Z ERROR [uvicorn.error] [Errno 98] error while attempting to "
        "bind on address ('127.0.0.1', 30555): address already in use\n"
        "2026-12-02T18:09:18.316Z INFO [uvicorn.error] Waiting for application shutdown.\n"
    )
    assert exit_reason(log) == (
        "ERROR [uvicorn.error] [Errno 98] error while attempting to bind on address "
        "('127.0.0.1', 30555): address already in use"
    )
    assert exit_reason(tmp_path / "missing.log") == ""
    (tmp_path / "quiet.log").write_text("started\nstopped\n")
    assert exit_reason(tmp_path / "quiet.log") == ""


def test_superlink_on_a_taken_port_is_reported_as_such(tmp_path):
    """The race `fedgate up` can lose on a busy machine: another process binds the SuperLink's
    port after the port check. The error names the bind failure, not an unreachable API."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        table = ProcessTable(tmp_path)
        state = tmp_path / "superlink"
        state.mkdir()
        cmd = [
            *SUPERLINK_LAUNCHER, "--insecure", "--isolation", "process",
            "--database", str(state / "state.db"), "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        proc = table.start("superlink-eu", cmd, {"FLWR_HOME": str(state / "flwr-home")})
        try:
            with pytest.raises(TopologyError) as err:
                # never true: the process's death is what ends the wait
                wait_until(lambda: False, 300, "SuperLink eu", proc.log, proc.pid)
        finally:
            table.stop_all()
    message = str(err.value)
    assert "SuperLink eu exited during start-up" in message
    assert "address already in use" in message
    assert proc.log in message
