"""Start, track (PID files) and stop the local processes fedgate launches."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fedgate.atomic_file import write_atomic
from fedgate.errors import UnavailableError, UsageError
from fedgate.procenv import flower_env

_TABLE_LOCK = threading.Lock()


class TopologyError(UnavailableError, RuntimeError):
    """A process could not be started or did not become healthy."""


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


def port_range(start: int, end: int) -> tuple[int, int]:
    """``start``-``end``, unless ``FEDGATE_PORT_RANGE=LOW-HIGH`` confines this process's picks
    (a machine shared by several test or benchmark sessions, each given a range)."""
    if text := os.environ.get("FEDGATE_PORT_RANGE", ""):
        low, _, high = text.partition("-")
        if not (low.isdigit() and high.isdigit() and 0 < int(low) < int(high) < 65536):
            raise UsageError(
                f"FEDGATE_PORT_RANGE must be LOW-HIGH, 0 < LOW < HIGH < 65536: {text!r}"
            )
        return int(low), int(high)
    return start, end


def ephemeral_low(default: int = 32768) -> int:
    """The lowest port the kernel hands out as an outgoing connection's source port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def free_port_block(size: int, start: int = 20000, end: int | None = None) -> int:
    """A base port with ``size`` consecutive free loopback ports after it (within
    ``port_range``). By default the block lies below the kernel's ephemeral range: a port in
    it can be free when picked and taken, before the service binds it, as the source port of
    one of the many connections a starting fleet opens (seen: a SuperNode's port lost so)."""
    if end is None:
        end = min(60000, ephemeral_low())
        if end - start - size <= 0:  # an unusual ephemeral range: the old default
            end = 60000
    start, end = port_range(start, end)
    if end - start - size <= 0:
        raise TopologyError(f"no block of {size} loopback ports fits in {start}-{end}")
    base = start + (os.getpid() * 97) % (end - start - size)
    for _ in range(2000):
        if all(port_free(p) for p in range(base, base + size)):
            return base
        base = start + (base + size * 7 - start) % (end - start - size)
    raise TopologyError(f"no block of {size} free loopback ports found")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].split()[0]
    except OSError:
        return True
    if state == "Z":
        _reap(pid)  # our own child (started in this process): reap it, so that helpers
        return False  # watching its pid (an executor's --parent-pid) see it gone
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
        write_atomic(self.path, json.dumps([asdict(p) for p in procs], indent=1))

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
            fh.write(f"{START_MARK} {time.strftime('%Y-%m-%dT%H:%M:%S')}: {name}\n".encode())
            fh.flush()
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
        with _TABLE_LOCK:  # regions come up concurrently
            self.save([*self.load(), mp])
        return mp

    def stop_all(self, grace: float = 4.0) -> list[str]:
        """Stop every recorded process and everything it started; returns the names stopped.

        Clients go first (workers, SuperNodes), while the fleet proxies they reach the
        SuperLink through still run: a SuperNode stopped gracefully deactivates its node
        there, so the next ``up`` need not wait a minute for Flower to expire the session.
        Then the proxies and enrollment services, the executors with their ServerApps, and
        last the SuperLinks the others would otherwise keep retrying: each wave gets SIGTERM
        and ``grace`` seconds, then SIGKILL. Descendants are collected before anything is
        signalled, so a helper that started its own session (Flower's SuperExec, Ray) is
        stopped too.
        """
        procs = [p for p in self.load() if alive(p.pid) and self._is_ours(p)]
        later = ("proxy-", "enroll-", "executor", "superlink")
        waves = [
            [p for p in procs if not p.name.startswith(later)],
            [p for p in procs if p.name.startswith(("proxy-", "enroll-"))],
            [p for p in procs if p.name.startswith("executor")],
            [p for p in procs if p.name.startswith("superlink")],
        ]
        for wave in waves:
            stop_trees([p.pid for p in wave], grace)
        if self.path.exists():
            self.path.unlink()
        return [p.name for p in procs]

    def status(self, tail: int = 5) -> list[ProcessStatus]:
        """Every recorded process, alive or dead; a dead one with its log's last lines."""
        rows = []
        for p in self.load():
            up = alive(p.pid) and self._is_ours(p)
            children = () if not up else tuple(_child_names(p.pid))
            rows.append(ProcessStatus(p, up, children, () if up else last_lines(p.log, tail)))
        return rows


@dataclass(frozen=True)
class ProcessStatus:
    """One managed process as ``fedgate status`` shows it."""

    process: ManagedProcess
    alive: bool
    children: tuple[str, ...]  # e.g. the ServerApps an executor runs
    last_log: tuple[str, ...]  # a dead process's last log lines


START_MARK = "=== fedgate started"  # a line ``start`` writes before each launch


def last_lines(path: str | Path, n: int = 5, max_bytes: int = 16384) -> tuple[str, ...]:
    """The last ``n`` non-empty lines a process logged since it was last started (ANSI
    colours removed)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - max_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ()
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    lines = text.splitlines()
    marks = [i for i, line in enumerate(lines) if line.startswith(START_MARK)]
    lines = [line for line in lines[marks[-1] + 1 if marks else 0 :] if line.strip()]
    return tuple(lines[-n:]) or ("(nothing logged since it started)",)


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first found, recursively)."""
    # heavy import (psutil): `fedgate --help` imports this module
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _child_names(pid: int) -> list[str]:
    # heavy import (psutil): `fedgate --help` imports this module
    import psutil

    names = []
    try:
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                cmd = child.cmdline()
                script = Path(cmd[1]).name if len(cmd) > 1 else child.name()
                if script.startswith(("flwr-serverapp", "flwr-clientapp")):
                    names.append(f"{script} (pid {child.pid})")
    except psutil.Error:
        pass
    return names


def stop_trees(pids: list[int], grace: float) -> None:
    """SIGTERM each process, its process group and every descendant; SIGKILL what is left
    after ``grace`` seconds; reap what are our children; return once all are gone."""
    targets = {pid for root in pids for pid in (root, *descendants(root))}
    groups = set()
    for root in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(root)
            groups.add(group)
            os.killpg(group, signal.SIGTERM)
    # one SIGTERM each: Flower's processes restore the default handler on the first, so a
    # second one kills them before their graceful exit (a SuperNode's node deactivation)
    for pid in targets:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) not in groups:
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in targets):
        for pid in targets:
            _reap(pid)
        time.sleep(0.05)
    for pid in targets:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        _reap(pid)
    # SIGKILL is asynchronous: wait until the killed are gone (and their ports free) before
    # returning, so that an `up` right after `down` never finds a port still held
    deadline = time.monotonic() + max(grace, 5.0)
    while time.monotonic() < deadline and any(alive(p) for p in targets):
        time.sleep(0.05)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


_ERROR_LINE = re.compile(r"\b(ERROR|CRITICAL|FATAL)\b|Errno|already in use|\w(Error|Exception):")


def exit_reason(log: str | Path | None) -> str:
    """The last line of a log that names an error (e.g. the SuperLink's "address already in
    use"), without its timestamp; "" when the log has none."""
    if not log:
        return ""
    try:
        lines = Path(log).read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return ""
    for line in reversed(lines):
        if _ERROR_LINE.search(line):
            return re.sub(r"^\S*\d{2}:\d{2}:\d{2}\S*\s+", "", line.strip())[:300]
    return ""


def died(what: str, log: str | None) -> TopologyError:
    """The error for a process that exited during start-up, naming why when its log says."""
    reason = exit_reason(log)
    return TopologyError(
        f"{what} exited during start-up{f': {reason}' if reason else ''}; read its log: {log}"
    )


def wait_until(
    check, timeout: float, what: str, log: str | None = None, pid: int | None = None
) -> None:
    """Poll ``check()`` until true; fail with the log path (and the error it names) if the
    process died, or when time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if pid is not None and not alive(pid):
            raise died(what, log)
        time.sleep(0.1)
    hint = f"; read its log: {log}" if log else ""
    raise TopologyError(f"{what} did not come up within {timeout:.0f} s{hint}")
