"""What a device owner sees while ``fedgate client join`` runs: one line per thing that happened.

Three sources feed the view: the ClientApp (``emit`` from ``clients/app.py`` and the worker:
a round trained, an update signed and sent), the SuperNode's log (connected, cannot reach
the region), and the region itself (``device_status`` through the enrollment service: the
verdict on each update, revoked). Nothing here decides anything; it reports. ``emit`` is a
no-op unless a view listens (the local topology's workers run without one).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_listeners: list[Callable[[str, dict[str, Any]], None]] = []


def emit(kind: str, **facts: Any) -> None:
    """Report a device event to whoever listens (nobody, outside ``client join``)."""
    for listener in list(_listeners):
        listener(kind, facts)


def listening() -> bool:
    """Whether anyone listens: a caller may skip computing facts nobody would see."""
    return bool(_listeners)


def listen(callback: Callable[[str, dict[str, Any]], None]) -> Callable[[], None]:
    """Add a listener; returns the function that removes it."""
    _listeners.append(callback)
    return lambda: _listeners.remove(callback) if callback in _listeners else None


def round_line(facts: dict[str, Any]) -> str:
    """``round N: trained on K examples …, loss L`` with the cap and why, when one applied."""
    used, available, cap = facts["examples"], facts["available"], facts["cap"]
    why = ""
    if used < available:
        why = f" of {available} (the {facts['profile']} profile caps a round at {cap})"
    return (
        f"run {facts['run']} round {facts['round']}: trained on {used} examples{why}, "
        f"loss {facts['loss']:.4f}"
    )


class DeviceView:
    """Prints the device's events, each once, with the time; thread-safe."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self._lock = threading.Lock()
        self._last = ""
        self.connected = threading.Event()
        self.unreachable = threading.Event()  # set on a failed connection, cleared by status
        self.sent: list[tuple[str, int]] = []  # (run, round) of updates sent, verdict pending

    def say(self, line: str) -> None:
        with self._lock:
            if line == self._last:
                return
            self._last = line
            self.echo(f"[{time.strftime('%H:%M:%S')}] {line}")

    def on_event(self, kind: str, facts: dict[str, Any]) -> None:
        if kind == "round":
            self.say(round_line(facts))
        elif kind == "signed":
            self.say(f"run {facts['run']} round {facts['round']}: update signed "
                     f"(digest {facts['digest'][:12]})")  # fmt: skip
        elif kind == "sent":
            with self._lock:
                self.sent.append((str(facts["run"]), int(facts["round"])))
            self.say(f"run {facts['run']} round {facts['round']}: update sent; waiting for "
                     "the region's verdict")  # fmt: skip
        elif kind == "failed":
            self.say(f"a task failed on this device: {facts['detail']}")

    def on_log_line(self, line: str) -> None:
        if "SuperNode ID:" in line:
            self.connected.set()
            self.unreachable.clear()
            self.say(f"connected to the region (node {line.rsplit(':', 1)[-1].strip()}); "
                     "waiting for a round")  # fmt: skip
        elif "Connection attempt failed" in line:
            self.unreachable.set()
            self.say("cannot reach the region's fleet address; retrying")
        elif "Received successfully" in line and self.connected.is_set():
            self.say("the region sent work; training")

    def on_status(self, answer: dict[str, Any]) -> None:
        """A status answer: report verdicts on the updates this session sent."""
        with self._lock:
            pending = list(self.sent)
        for u in answer.get("updates", []):
            key = (str(u["run"]), int(u["round"]))
            if key in pending:
                with self._lock:
                    self.sent.remove(key)
                if u["verdict"] == "accepted":
                    self.say(f"run {key[0]} round {key[1]}: update accepted by the region")
                else:
                    self.say(f"run {key[0]} round {key[1]}: update REFUSED by the region "
                             f"({u.get('reason') or 'no reason given'})")  # fmt: skip


def follow_log(path: Path, on_line: Callable[[str], None], stop: threading.Event) -> None:
    """Call ``on_line`` for each new line of ``path`` (from its current end) until ``stop``."""
    while not path.exists() and not stop.is_set():
        stop.wait(0.2)
    with path.open("r", errors="replace") as fh:
        fh.seek(0, 2)
        buffer = ""
        while not stop.is_set():
            chunk = fh.readline()
            if not chunk:
                stop.wait(0.2)
                continue
            buffer += chunk
            if buffer.endswith("\n"):
                on_line(buffer.rstrip("\n"))
                buffer = ""
