"""A device's SuperNode runs in the device's own process (``clients/device_process.py``):
Flower's ``flower-supernode`` main in the main thread, stopped by SIGTERM as its own process
would be, its log in the device's file, and none of its threads left behind. A real
SuperNode, no SuperLink: the fleet address is a closed port (it keeps retrying)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fedgate.clients.device_process import run_supernode
from fedgate.procenv import flower_env, port_open
from fedgate.server.launch.processes import free_port_block

pytestmark = pytest.mark.integration

SCRIPT = """
import sys, threading
from pathlib import Path
from fedgate.clients.device_process import run_supernode
end = run_supernode(sys.argv[2:], Path(sys.argv[1]))
left = [t.name for t in threading.enumerate() if not t.daemon and t is not threading.main_thread()]
print(f"ended status={end.status} signal={end.signal and end.signal.name} left={left}", flush=True)
"""


def test_the_supernode_runs_in_the_main_thread_only() -> None:
    out: list[BaseException] = []

    def other_thread() -> None:
        try:
            run_supernode(["--insecure"], Path("unused.log"))
        except RuntimeError as exc:
            out.append(exc)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    assert out and "main thread" in str(out[0])


def test_sigterm_stops_the_in_process_supernode_cleanly(tmp_path) -> None:
    base = free_port_block(2)  # base: the closed fleet address; base + 1: the runtime API
    log = tmp_path / "supernode.log"
    args = ["--insecure", "--superlink", f"127.0.0.1:{base}", "--isolation", "process",
            "--host", "127.0.0.1", "--port", str(base + 1)]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(log), *args],
        env=flower_env({"FLWR_HOME": str(tmp_path / "flwr-home")}),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        # retrying the closed fleet address: past the runtime API's start, Flower's signal
        # handlers are installed (before them, the caller's apply: see clients/join.py)
        while "Connection attempt failed" not in (log.read_text() if log.exists() else ""):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the SuperNode never tried the fleet address"
            time.sleep(0.2)
        assert port_open(base + 1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "ended status=0 signal=SIGTERM left=[]" in output, output
    assert "Starting Flower SuperNode" in log.read_text()  # its log went to the file
    assert "Starting Flower SuperNode" not in output
    assert not port_open(base + 1)
