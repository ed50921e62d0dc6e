"""Start, track (PID files) and stop the local processes fedgate launches."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path


class TopologyError(RuntimeError):
    """A process could not be started or did not become healthy."""


# Quiet, offline, never installing dependencies at run time.
FLOWER_ENV = {
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25",
    "RAY_DISABLE_USAGE_STATS": "1",
    "PYTHONUNBUFFERED": "1",
}


def flower_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment plus ``FLOWER_ENV``, with this interpreter's scripts first
    on PATH (Flower starts helpers such as ``flower-superexec`` by name)."""
    scripts = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {**os.environ, **FLOWER_ENV, "PATH": f"{scripts}{os.pathsep}{path}", **(extra or {})}


@dataclass
class ManagedProcess:
    """A process fedgate started: enough to find it again and stop only it."""

    name: str
    pid: int
    pgid: int
    cmd: list[str]
    log: str
    started: float


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port_block(size: int, start: int = 20000, end: int = 60000) -> int:
    """A base port with ``size`` consecutive free loopback ports after it."""
    base = start + (os.getpid() * 97) % (end - start - size)
    for _ in range(2000):
        if all(port_free(p) for p in range(base, base + size)):
            return base
        base = start + (base + size * 7 - start) % (end - start - size)
    raise TopologyError(f"no block of {size} free loopback ports found")


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].split()[0]
        return state != "Z"
    except OSError:
        return True


class ProcessTable:
    """PID file of everything started under one home (``<home>/run/processes.json``)."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.path = self.home / "run" / "processes.json"
        self.log_dir = self.home / "logs"

    def load(self) -> list[ManagedProcess]:
        if not self.path.exists():
            return []
        return [ManagedProcess(**p) for p in json.loads(self.path.read_text())]

    def save(self, procs: list[ManagedProcess]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(p) for p in procs], indent=1))
        os.replace(tmp, self.path)

    def running(self) -> list[ManagedProcess]:
        return [p for p in self.load() if alive(p.pid) and self._is_ours(p)]

    @staticmethod
    def _is_ours(p: ManagedProcess) -> bool:
        """Guard against PID reuse: the command line must still match."""
        try:
            cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return any(p.cmd[-1].encode() in part for part in cmdline) or p.cmd[
            0
        ].encode() in b" ".join(cmdline)

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> ManagedProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as fh:
            try:
                proc = subprocess.Popen(
                    cmd,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=flower_env(env),
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise TopologyError(f"cannot start {name}: {exc}") from None
        mp = ManagedProcess(name, proc.pid, os.getpgid(proc.pid), cmd, str(log), time.time())
        self.save([*self.load(), mp])
        return mp

    def stop_all(self, grace: float = 4.0) -> list[str]:
        """Stop every recorded process group; returns the names stopped.

        Clients go first (workers, SuperNodes), then the SuperLinks they would otherwise keep
        retrying: each wave gets SIGTERM and ``grace`` seconds, then SIGKILL.
        """
        procs = [p for p in self.load() if alive(p.pid) and self._is_ours(p)]
        waves = [
            [p for p in procs if not p.name.startswith("superlink")],
            [p for p in procs if p.name.startswith("superlink")],
        ]
        for wave in waves:
            _stop_wave(wave, grace)
        if self.path.exists():
            self.path.unlink()
        return [p.name for p in procs]


def _stop_wave(procs: list[ManagedProcess], grace: float) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        while alive(p.pid) and time.monotonic() < deadline:
            _reap(p.pid)
            time.sleep(0.05)
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pgid, signal.SIGKILL)
        _reap(p.pid)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def wait_until(
    check, timeout: float, what: str, log: str | None = None, pid: int | None = None
) -> None:
    """Poll ``check()`` until true; fail with the log path if the process died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not alive(pid):
            raise TopologyError(f"{what} exited during start-up; read its log: {log}")
        time.sleep(0.1)
    hint = f"; read its log: {log}" if log else ""
    raise TopologyError(f"{what} did not come up within {timeout:.0f} s{hint}")
