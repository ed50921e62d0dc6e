"""``fedgate client join``: one device's SuperNode and its warm ClientApp executor, together.

The SuperNode (Flower's ``flower-supernode``, process isolation) connects to the region's
fleet address with TLS and the device's registered node key; this process then serves the
SuperNode's runtime API with fedgate's long-lived ClientApp worker (``clients/worker.py``),
so torch is imported once, not per message.

The owner sees a live view (``clients/device_view.py``): connected, waiting, each round's
training (examples used, the profile's cap, loss), the update signed and sent, and the
region's verdict on it. A device enrolled over the network asks its region about itself
(``device_status``) at start, every ``status_every`` seconds, after each update and when
the fleet cannot be reached: a revoked device is told so and stops (exit 2). Ctrl-C and
SIGTERM stop it within a few seconds: the SuperNode's whole process group is terminated
(then killed) and reaped. Everything it writes stays under the device directory
(``FLWR_HOME`` there, ``supernode.log``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from fedgate.clients.device_view import DeviceView, follow_log, listen
from fedgate.clients.identity import read_enrollment
from fedgate.clients.node_key import NODE_KEY_FILE, NODE_PUB_FILE, NodeKey, supernode_flags
from fedgate.errors import EXIT_VERIFICATION, FedgateError, UnavailableError
from fedgate.procenv import flower_env, port_open

STOP_GRACE = 2.0  # seconds the SuperNode gets after SIGTERM before SIGKILL
THREADS_GRACE = 0.5  # seconds the view, watcher and worker threads get, all together


class JoinError(UnavailableError, RuntimeError):
    """The device cannot join: not enrolled, no node key, or its SuperNode did not start."""


@dataclass(frozen=True)
class JoinSpec:
    """Everything one device needs to take part in its region's training."""

    device_dir: Path
    superlink: str  # the region's fleet (device-facing) address HOST:PORT
    root_certificates: Path | None  # region CA; None only with --insecure
    runtime_port: int = 9094
    data_dir: Path | None = None
    partition_id: int = 0
    num_partitions: int = 1

    @property
    def flwr_home(self) -> Path:
        return self.device_dir / "flwr-home"

    def node_config(self) -> str:
        enrollment = read_enrollment(self.device_dir)
        if enrollment is None:
            raise JoinError(f"{self.device_dir} is not enrolled; run `fedgate client enroll`")
        items = {
            "device-dir": str(self.device_dir.resolve()),
            "region": enrollment.region,
            "profile": enrollment.profile or "phone",
            "partition-id": self.partition_id,
            "num-partitions": self.num_partitions,
        }
        if self.data_dir is not None:
            items["data-dir"] = str(self.data_dir.resolve())
        return " ".join(
            f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in items.items()
        )

    def supernode_command(self) -> list[str]:
        if self.root_certificates is None:
            transport = ["--insecure"]
        else:
            node = NodeKey(self.device_dir / NODE_KEY_FILE, self.device_dir / NODE_PUB_FILE)
            if not node.private_path.is_file():
                raise JoinError(
                    f"no node key at {node.private_path}; enroll with `fedgate client enroll`"
                )
            transport = supernode_flags(self.root_certificates, node)
        script = Path(sys.executable).parent / "flower-supernode"
        return [
            str(script) if script.exists() else "flower-supernode",
            *transport,
            "--superlink", self.superlink,
            "--isolation", "process",
            "--host", "127.0.0.1",
            "--port", str(self.runtime_port),
            "--node-config", self.node_config(),
        ]  # fmt: skip


@dataclass
class _Outcome:
    """Why the device stopped: the first reason wins."""

    stop: threading.Event = field(default_factory=threading.Event)
    code: int = 0
    message: str = ""

    def end(self, code: int, message: str) -> None:
        if not self.stop.is_set():
            self.code, self.message = code, message
            self.stop.set()


def _ask_region(spec: JoinSpec, view: DeviceView, outcome: _Outcome) -> dict[str, Any] | None:
    """The region's answer about this device (None if it cannot be asked); ends the session
    when the device is revoked or unknown."""
    from fedgate.clients.enroll_client import device_status

    try:
        answer = device_status(spec.device_dir)
    except FedgateError as exc:
        view.say(f"could not ask the region about this device: {exc}")
        return None
    view.on_status(answer)
    if answer["status"] == "revoked":
        outcome.end(EXIT_VERIFICATION, f"this device ({answer['device_id'][:16]}) was REVOKED by "
                    f"region {answer['region']}; it cannot take part any more. Ask the region "
                    "operator for a new token to enroll again.")  # fmt: skip
    elif answer["status"] == "unknown":
        outcome.end(EXIT_VERIFICATION, f"region {answer['region']} does not know this device; "
                    "enroll it again with a new token")  # fmt: skip
    return answer


def _watch_region(spec: JoinSpec, view: DeviceView, outcome: _Outcome, every: float) -> None:
    """Ask the region now and then: every ``every`` s, every 2 s while a verdict is pending
    or the fleet is unreachable."""
    waited = 0.0
    while not outcome.stop.wait(1.0):
        waited += 1.0
        urgent = bool(view.sent) or view.unreachable.is_set()
        if waited >= every or (urgent and waited >= 2.0):
            waited = 0.0
            _ask_region(spec, view, outcome)


def _serve(worker: Any, outcome: _Outcome, view: DeviceView) -> None:
    """The worker thread: warm up, then run ClientApp tasks until the session ends."""
    from fedgate.clients.worker import warm_up

    try:
        warm_up()
        view.say("ready to train")
        while not outcome.stop.is_set():
            worker.serve_once()
    except Exception as exc:  # the SuperNode went away mid-call, or a real bug: stop, say
        if not outcome.stop.is_set():
            outcome.end(1, f"the ClientApp worker stopped: {type(exc).__name__}: {exc}")


def _stop_group(node: subprocess.Popen) -> None:
    """Terminate the SuperNode's process group, kill it after ``STOP_GRACE``, reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGTERM)
    try:
        node.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGKILL)
        node.wait()
    with contextlib.suppress(ProcessLookupError):  # grandchildren left in the group
        os.killpg(node.pid, signal.SIGKILL)


def exit_now(code: int) -> None:
    """End the ``client join`` process at once with ``code``, output flushed.

    The ClientApp worker thread may sit in Flower's retrying runtime-API client (its
    SuperNode is gone); a normal interpreter exit would wait for Flower's and torch's
    executor threads for many seconds. Everything the device keeps was written atomically
    before this point, so nothing is lost."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _thread(target: Any, *args: Any) -> threading.Thread:
    return threading.Thread(target=target, args=args, daemon=True)


def join(
    spec: JoinSpec, echo=print, startup_timeout: float = 60.0, status_every: float = 10.0
) -> int:
    """Run the device until interrupted, revoked or its SuperNode ends; returns an exit code
    (0 after Ctrl-C/SIGTERM, 2 when revoked or unknown to the region, else the SuperNode's)."""
    enrollment = read_enrollment(spec.device_dir)
    if enrollment is None:
        raise JoinError(f"{spec.device_dir} is not enrolled; run `fedgate client enroll`")
    command = spec.supernode_command()
    view = DeviceView(echo)
    outcome = _Outcome()
    networked = bool(enrollment.service)
    if networked:
        _ask_region(spec, view, outcome)
        if outcome.stop.is_set():
            echo(outcome.message)
            return outcome.code
    # the in-process ClientApp installs its app bundle under FLWR_HOME: keep it here
    os.environ["FLWR_HOME"] = str(spec.flwr_home)
    log = spec.device_dir / "supernode.log"
    with log.open("ab") as fh:
        node = subprocess.Popen(
            command, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=flower_env({"FLWR_HOME": str(spec.flwr_home)}), start_new_session=True,
        )  # fmt: skip

    def _stop(sig: int, _frame: FrameType | None) -> None:
        outcome.end(0, f"stopped by {signal.Signals(sig).name}; this device left the region")

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    unlisten = listen(view.on_event)
    threads = [_thread(follow_log, log, view.on_log_line, outcome.stop)]
    if networked:
        threads.append(_thread(_watch_region, spec, view, outcome, status_every))
    try:
        for t in threads:
            t.start()
        view.say(f"device {enrollment.device_id[:16]} ({enrollment.profile or 'phone'}) joining "
                 f"region {enrollment.region} at {spec.superlink}; log: {log}")  # fmt: skip
        waited = 0.0
        while not port_open(spec.runtime_port):
            if node.poll() is not None or waited > startup_timeout:
                raise JoinError(f"the SuperNode did not start (exit {node.poll()}); read {log}")
            if outcome.stop.wait(0.2):
                break
            waited += 0.2
        if not outcome.stop.is_set():
            from fedgate.clients.worker import ClientAppWorker

            worker = ClientAppWorker(f"127.0.0.1:{spec.runtime_port}")
            threads.append(_thread(_serve, worker, outcome, view))
            threads[-1].start()
        while not outcome.stop.wait(0.5):
            if node.poll() is not None:
                if networked:
                    _ask_region(spec, view, outcome)
                why = f"the SuperNode exited with status {node.returncode}; read {log}"
                outcome.end(node.returncode or 1, why)
    finally:
        outcome.stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        unlisten()
        _stop_group(node)
        deadline = time.monotonic() + THREADS_GRACE
        for t in threads:  # a worker thread still importing torch is left to exit_now
            t.join(max(0.0, deadline - time.monotonic()))
    if outcome.message:
        echo(outcome.message)
    return outcome.code
