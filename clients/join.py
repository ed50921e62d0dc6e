"""``fedgate client join``: one device's SuperNode and its warm ClientApp executor, together.

The SuperNode (Flower's ``flower-supernode`` main, process isolation) connects to the
region's fleet address with TLS and the device's registered node key; a thread of the same
process serves the SuperNode's runtime API with fedgate's long-lived ClientApp worker
(``clients/worker.py``), so torch is imported once, not per message, and Python, gRPC and
Flower's modules are loaded once for both (``clients/device_process.py``): one process per
device.

The owner sees a live view (``clients/device_view.py``): connected, waiting, each round's
training (examples used, the profile's cap, loss), the update signed and sent, and the
region's verdict on it. A device enrolled over the network asks its region about itself
(``device_status``) at start, every ``status_every`` seconds, after each update and when
the fleet cannot be reached: a revoked device is told so and stops (exit 2). Ctrl-C and
SIGTERM stop it within a few seconds: Flower's SuperNode ends on them as its own process
would, and the ClientApp worker with it. Everything it writes stays under the device directory
(``FLWR_HOME`` there, ``supernode.log``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from fedgate.clients.device_process import run_supernode
from fedgate.clients.device_view import DeviceView, follow_log, listen
from fedgate.clients.identity import read_enrollment
from fedgate.clients.node_key import NODE_KEY_FILE, NODE_PUB_FILE, NodeKey, supernode_flags
from fedgate.errors import EXIT_UNAVAILABLE, EXIT_VERIFICATION, FedgateError, UnavailableError
from fedgate.procenv import flower_env, port_open

STOP_GRACE = 2.0  # seconds between SIGTERMs while the SuperNode has not ended
THREADS_GRACE = 0.5  # seconds the view, watcher and worker threads get, all together
SIGNAL_CHECK = 3.0  # seconds a SIGINT waits for the region's word on this device


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

    def supernode_args(self) -> list[str]:
        """``flower-supernode``'s arguments for this device (process isolation: the ClientApp
        runs in this process's worker thread, through the runtime API on loopback)."""
        if self.root_certificates is None:
            transport = ["--insecure"]
        else:
            node = NodeKey(self.device_dir / NODE_KEY_FILE, self.device_dir / NODE_PUB_FILE)
            if not node.private_path.is_file():
                raise JoinError(
                    f"no node key at {node.private_path}; enroll with `fedgate client enroll`"
                )
            transport = supernode_flags(self.root_certificates, node)
        return [
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


def _serve(spec: JoinSpec, outcome: _Outcome, view: DeviceView, timeout: float) -> None:
    """The worker thread: the ClientApp's imports, then, once the SuperNode's runtime API
    answers, ClientApp tasks until the session ends. No training warm-up (the shared
    worker's, done once before it forks): on one device it would only raise the peak
    memory (by about 10 MiB); the first round pays torch's lazy start instead."""
    from fedgate.clients.worker import ClientAppWorker, prepare

    try:
        prepare()
        waited = 0.0
        while not port_open(spec.runtime_port):
            if waited > timeout:
                log = spec.device_dir / "supernode.log"
                outcome.end(EXIT_UNAVAILABLE, "the SuperNode's runtime API did not open within "
                            f"{timeout:.0f} s; read {log}")  # fmt: skip
            if outcome.stop.wait(0.2):
                return
            waited += 0.2
        worker = ClientAppWorker(f"127.0.0.1:{spec.runtime_port}")
        view.say("ready to train")
        while not outcome.stop.is_set():
            worker.serve_once()
    except Exception as exc:  # the SuperNode went away mid-call, or a real bug: stop, say
        if not outcome.stop.is_set():
            outcome.end(1, f"the ClientApp worker stopped: {type(exc).__name__}: {exc}")


def _stop_supernode(outcome: _Outcome, supernode_done: threading.Event) -> None:
    """Once the session ends for a reason of its own (revoked, the worker failed), stop the
    SuperNode in the main thread the way an owner would: SIGTERM to this process, repeated
    until it has ended (one that comes before Flower installs its handlers meets ``join``'s,
    which only record why the session ends)."""
    outcome.stop.wait()
    while not supernode_done.is_set():
        os.kill(os.getpid(), signal.SIGTERM)
        supernode_done.wait(STOP_GRACE)


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
    (0 after Ctrl-C/SIGTERM, 2 when revoked or unknown to the region, else the SuperNode's).

    One process: the SuperNode runs in this (the main) thread, the ClientApp worker, the log
    view and the region watcher in threads of their own (``clients/device_process.py``)."""
    enrollment = read_enrollment(spec.device_dir)
    if enrollment is None:
        raise JoinError(f"{spec.device_dir} is not enrolled; run `fedgate client enroll`")
    args = spec.supernode_args()
    view = DeviceView(echo)
    outcome = _Outcome()
    networked = bool(enrollment.service)
    if networked:
        _ask_region(spec, view, outcome)
        if outcome.stop.is_set():
            echo(outcome.message)
            return outcome.code
    # the SuperNode and the in-process ClientApp keep their state under the device's FLWR_HOME
    os.environ.update(flower_env({"FLWR_HOME": str(spec.flwr_home)}))
    log = spec.device_dir / "supernode.log"
    log.touch()

    def _stop(sig: int, _frame: FrameType | None) -> None:  # until Flower installs its own
        outcome.end(0, f"stopped by {signal.Signals(sig).name}; this device left the region")

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGTERM, signal.SIGINT)}
    unlisten = listen(view.on_event)
    supernode_done = threading.Event()
    threads = [
        _thread(follow_log, log, view.on_log_line, outcome.stop),
        _thread(_serve, spec, outcome, view, startup_timeout),
        _thread(_stop_supernode, outcome, supernode_done),
    ]
    if networked:
        threads.append(_thread(_watch_region, spec, view, outcome, status_every))
    try:
        for t in threads:
            t.start()
        view.say(f"device {enrollment.device_id[:16]} ({enrollment.profile or 'phone'}) joining "
                 f"region {enrollment.region} at {spec.superlink}; log: {log}")  # fmt: skip
        if not outcome.stop.is_set():
            end = run_supernode(args, log)
            if end.signal == signal.SIGINT and networked and not outcome.stop.is_set():
                # Flower's SuperNode sends itself SIGINT when the SuperLink refuses its
                # authentication (a revoked node): ask the region, briefly, before taking it
                # for the owner's Ctrl-C
                asker = _thread(_ask_region, spec, view, outcome)
                asker.start()
                asker.join(SIGNAL_CHECK)
            if end.signal is not None:
                _stop(end.signal, None)
            elif not outcome.stop.is_set():
                if networked:
                    _ask_region(spec, view, outcome)
                why = f"the SuperNode exited with status {end.status}; read {log}"
                outcome.end(end.status or 1, why)
    finally:
        supernode_done.set()
        outcome.stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        unlisten()
        deadline = time.monotonic() + THREADS_GRACE
        for t in threads:  # a worker thread still importing torch is left to exit_now
            t.join(max(0.0, deadline - time.monotonic()))
    if outcome.message:
        echo(outcome.message)
    return outcome.code
