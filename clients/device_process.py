"""A device's SuperNode in the device's own process: Flower's ``flower-supernode`` main.

A device used to run two Python processes: ``flower-supernode`` (Flower's runtime, gRPC,
protobuf, FastAPI/uvicorn: about 138 MiB) and the ClientApp worker (the same runtime again
plus torch: about 297 MiB). ``run_supernode`` runs Flower's SuperNode main in the calling
(main) thread instead, so the ClientApp worker (``clients/worker.py``), in a thread of the
same process, shares the interpreter and Flower's imports: they are paid once. The worker
still reaches the SuperNode through its runtime API on loopback, as Flower's SuperExec does.

Flower's SuperNode installs its own SIGINT/SIGTERM handlers (it must run in the main thread
for that) and ends with ``sys.exit`` from them. The signal that stopped it is read from a
wake-up socket (``signal.set_wakeup_fd``), so the caller can say which one it was. What the
SuperNode writes to stderr (Flower's log, uvicorn, gRPC) goes to its log file, as the
separate process's did; stderr is restored when it ends. Its registered exit handlers (the
runtime API's server thread) run on every exit, so no SuperNode thread outlives it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class SupernodeEnd:
    """How the in-process SuperNode ended: its exit status and the signal that ended it."""

    status: int
    signal: signal.Signals | None = None


def _status(code: object) -> int:
    """``sys.exit``'s argument as a process exit status."""
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


def _first_stop_signal(wakeup: socket.socket) -> signal.Signals | None:
    """The first SIGINT/SIGTERM the wake-up socket recorded (None if neither)."""
    got = b""
    with contextlib.suppress(BlockingIOError, InterruptedError):
        while chunk := wakeup.recv(256):
            got += chunk
    return next((signal.Signals(b) for b in got if b in STOP_SIGNALS), None)


@contextlib.contextmanager
def _stderr_to(log: Path):
    """File descriptor 2 appended to ``log`` (gRPC's C core writes there too), then back."""
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 2)
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(fd)


def _run_exit_handlers() -> None:
    """Flower's registered exit handlers (stop the runtime API server; no-op once run)."""
    from flwr.supercore.exit.exit_handler import trigger_exit_handlers

    for before_force_exit in (True, False):
        trigger_exit_handlers(run_before_force_exit=before_force_exit)


def run_supernode(args: list[str], log: Path) -> SupernodeEnd:
    """Run ``flower-supernode ARGS`` in this thread (the main thread) until it exits.

    The caller's environment must already hold the SuperNode's (``FLWR_HOME``, Flower's
    quiet settings). To stop it from another thread, signal this process (SIGTERM). Flower
    installs its handlers once its runtime API is up; a signal before that meets the
    caller's handlers (``clients/join.py`` records it and signals again until it ends)."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("the SuperNode installs signal handlers: run it in the main thread")
    from flwr.supernode.cli import flower_supernode

    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    previous_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    argv, sys.argv = sys.argv, ["flower-supernode", *args]
    status = 0
    try:
        with _stderr_to(log):
            try:
                flower_supernode()
            except SystemExit as exc:
                status = _status(exc.code)
            except Exception:  # e.g. its runtime API could not bind: say why, in its log
                traceback.print_exc()
                status = 1
            finally:
                _run_exit_handlers()
    finally:
        sys.argv = argv
        signal.set_wakeup_fd(previous_wakeup)
        stopped_by = _first_stop_signal(reader)
        reader.close()
        writer.close()
    return SupernodeEnd(status, stopped_by)
