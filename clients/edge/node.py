"""The edge node: provision, sync the newest release for its region and profile, roll back,
predict.

An install never interrupts the model that serves: the new release is downloaded into memory
(TUF checks length and digest), those verified bytes are loaded in onnxruntime and made to
answer the release's probe, then written into their own ``models/`` directory; the commit
fsyncs that directory's files, the directory and ``models/`` together with the new
``state.json``, and only then does one atomic replace of ``state.json`` make it current. A
failure or a kill at any step (``INSTALL_STEPS``) leaves the old one current; the next sync
sweeps what was left half-done. ``rollback`` makes the previous install current again (after
the same load and probe), records it locally and keeps ``sync`` from re-installing the version
rolled back from; the next sync reports it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from fedgate.atomic_file import PUBLIC, fsync_together, written_dir
from fedgate.crash_points import pause
from fedgate.crypto import sha256_hex
from fedgate.errors import FedgateError, UnavailableError, UsageError, VerificationError
from fedgate.release_targets import Probe, ReleaseTarget, check_name

from .channel import NodeUpdater, ReleaseRefused, download, newest_release, open_updater
from .runtime import Prediction, Student
from .state import EdgeConfig, EdgeHome, EdgeState, EdgeStateError, Installed, now_iso

INSTALL_STEPS = ("downloaded", "loaded", "probed", "unpacked", "committed")
KEEP_PREVIOUS = 2  # earlier installs kept on disk for rollback


class InstallFailed(UnavailableError):
    """An install stopped on a local failure (disk full, I/O); the old model still serves."""


@dataclass(frozen=True)
class SyncResult:
    """What a sync did: ``installed``, ``up-to-date``, ``skipped`` (a version this node rolled
    back from) or ``kept`` (the channel is pinned below what is installed)."""

    action: str
    current: Installed | None
    previous: Installed | None
    available: int
    channel: str
    reported: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action, "available": self.available, "channel": self.channel,
            "current": asdict(self.current) if self.current else None,
            "previous": asdict(self.previous) if self.previous else None,
            "reported": self.reported,
        }  # fmt: skip


@dataclass(frozen=True)
class Status:
    config: EdgeConfig
    state: EdgeState
    available: int | None
    channel: str | None
    server: str  # "ok" or the one-line reason the server could not be asked

    def to_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            "region": self.config.region, "profile": self.config.profile, "url": self.config.url,
            "installed": asdict(s.current) if s.current else None,
            "previous": [h.global_version for h in s.history],
            "rolled_back_from": s.rolled_back_from, "available": self.available,
            "channel": self.channel, "server": self.server,
            "unreported": [e for e in s.events if not e.get("reported")],
        }  # fmt: skip


def _keeps(serving: Installed | None) -> str:
    return f"v{serving.global_version} keeps serving" if serving else "nothing was installed"


def _empty(directory: Path) -> None:
    """Make ``directory`` an empty directory; it is kept (no rmdir and mkdir on every sync)."""
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _check_root(data: bytes, where: str) -> None:
    from tuf.api.metadata import Metadata, Root  # tuf: only when provisioning

    try:
        md = Metadata.from_bytes(data)
        if not isinstance(md.signed, Root):
            raise ValueError(f"it is {md.signed.type} metadata")
        md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    except Exception as exc:
        raise UsageError(f"{where}: not a self-signed TUF root metadata file ({exc})") from None


class EdgeNode:
    """One edge node living in ``edge_home``; ``on_step`` is called at each install step (tests
    inject failures there; ``FEDGATE_TEST_PAUSE_AT`` pauses there, ``fedgate.crash_points``)."""

    def __init__(self, edge_home: Path, *, on_step: Callable[[str], None] | None = None) -> None:
        self.home = EdgeHome(Path(edge_home))
        self.on_step = on_step
        self._student: tuple[str, Student] | None = None
        # the current install as last read, with the state file's identity when read
        self._current: tuple[tuple[int, int, int] | None, Installed | None] | None = None

    @classmethod
    def init(
        cls, edge_home: Path, root_json: Path | bytes, url: str, region: str, profile: str
    ) -> EdgeNode:
        """Provision a node: its trust anchor (a TUF root metadata file), server, region and
        profile; refuses a home that is already a node."""
        node = cls(edge_home)
        if node.home.config_path.exists():
            raise UsageError(f"{node.home.root} is already an edge node ({node.home.config_path})")
        try:
            check_name("region", region)
            check_name("profile", profile)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise UsageError(f"--url must be an http(s) URL of a release server, got {url!r}")
        if isinstance(root_json, bytes):
            data, where = root_json, "root metadata"
        else:
            data, where = Path(root_json).read_bytes(), str(root_json)
        _check_root(data, where)
        node.home.write_config(EdgeConfig(url.rstrip("/"), region, profile), data)
        return node

    # ------------------------------------------------------------------ sync
    def _step(self, name: str) -> None:
        pause(name)
        if self.on_step is not None:
            self.on_step(name)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.home.root.mkdir(parents=True, exist_ok=True)
        with open(self.home.root / ".lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(
                    f"another sync or rollback is running in {self.home.root}"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _sweep(self) -> None:
        """Remove what an interrupted install left: half-written model directories (and
        downloads in ``staging/``, where an earlier version of the node kept them)."""
        if self.home.staging.is_dir():
            _empty(self.home.staging)
        if self.home.models.is_dir():
            for tmp in self.home.models.glob(".*.tmp"):
                shutil.rmtree(tmp, ignore_errors=True)

    def sync(self) -> SyncResult:
        """Fetch and verify the newest release for this node; install it if it is new."""
        config = self.home.config()
        with self._locked():
            self._sweep()
            state = self.home.state()
            with open_updater(self.home, config) as updater:
                target, release = newest_release(updater, config)
                digest = target.hashes.get("sha256", "")
                current = state.current
                reported = [
                    {k: v for k, v in e.items() if k != "reported"}
                    for e in state.events
                    if not e.get("reported")
                ]
                for e in state.events:
                    e["reported"] = True
                action = self._decide(current, release, digest, state)
                if action != "install":
                    changed = bool(reported)
                    if (
                        current is not None
                        and current.channel != release.channel
                        and (current.global_version == release.global_version)
                    ):
                        state.current = replace(current, channel=release.channel)
                        changed = True
                    if changed:  # an unchanged release costs no disk write
                        self.home.save_state(state)
                    return SyncResult(action, state.current, None, release.global_version,
                                      release.channel, reported)  # fmt: skip
                with self._install(updater, target, release, config, current) as (new, fsync):
                    if current is not None:
                        state.history.append(current)
                    state.current = new
                    previous = current.global_version if current else None
                    state.add_event("installed", version=new.global_version, previous=previous)
                    state.events[-1]["reported"] = True
                    del state.history[:-KEEP_PREVIOUS]
                    try:  # the model and state.json's new content made durable together
                        self.home.save_state(state, fsync=fsync)
                    except OSError as exc:
                        raise InstallFailed(
                            f"install of v{new.global_version} failed at commit: "
                            f"{exc.strerror or exc}; {_keeps(current)}"
                        ) from None
                self._step("committed")
                self._prune(state)
                return SyncResult("installed", new, current, release.global_version,
                                  release.channel, reported)  # fmt: skip

    def _decide(
        self, current: Installed | None, release: ReleaseTarget, digest: str, state: EdgeState
    ) -> str:
        if current is None:
            return "install"
        offered, installed = release.global_version, current.global_version
        if offered < installed:
            if release.channel == "pinned":
                return "kept"  # an operator's pin never downgrades a node; `edge rollback` does
            raise ReleaseRefused(
                "rollback",
                f"the channel offers global version {offered}, older than installed "
                f"{installed}; v{installed} keeps serving",
            )
        if offered == installed and digest == current.sha256:
            return "up-to-date"
        if offered in state.rolled_back_from:
            return "skipped"
        return "install"

    @contextmanager
    def _install(
        self,
        updater: NodeUpdater,
        target: Any,
        release: ReleaseTarget,
        config: EdgeConfig,
        serving: Installed | None,
    ) -> Iterator[tuple[Installed, Callable[[int], None]]]:
        """Download, load, probe and write the release; yields its record and the ``fsync``
        for the new ``state.json`` that makes the model's files and directory durable with it
        (``fsync_together``), so that the commit waits on one round of device flushes, not
        one after another. Nothing names the new directory before that fsync returns."""
        digest = target.hashes["sha256"]
        name = f"v{release.global_version}-{digest[:16]}"
        keeps = _keeps(serving)
        step = "download"
        try:
            data = download(updater, target, config.url)  # in memory, length and digest checked
            self._step("downloaded")
            step = "load"
            student = Student(data, release.input_name, release.input_shape)  # the verified bytes
            self._step("loaded")
            step = "probe"
            student.answer_probe(release.probe)
            self._step("probed")
            step = "unpack"
            with self._model_dir(name, data, digest, release) as fds:
                self._step("unpacked")
                final = self.home.models / name

                def fsync(fd: int) -> None:
                    fsync_together([fd, *fds], [final, self.home.models])

                step = "commit"
                yield Installed(
                    release.global_version, digest, target.length, release.lineage_digest,
                    name, release.input_name, tuple(release.input_shape), release.channel,
                    now_iso(),
                ), fsync  # fmt: skip
        except ReleaseRefused:
            raise
        except VerificationError as exc:
            raise type(exc)(f"v{release.global_version} not installed: {exc}; {keeps}") from None
        except OSError as exc:
            raise InstallFailed(
                f"install of v{release.global_version} failed at {step}: "
                f"{exc.strerror or exc}; {keeps}"
            ) from None

    @contextmanager
    def _model_dir(
        self, name: str, data: bytes, digest: str, release: ReleaseTarget
    ) -> Iterator[list[int]]:
        """``models/<name>/`` holding ``model.onnx`` and ``release.json`` (``written_dir``);
        yields their open descriptors, for the commit to fsync. One already there from a sync
        that stopped before its commit is kept if both files are exactly what would be
        written (and is fsynced all the same: it may never have been)."""
        final = self.home.models / name
        release_json = json.dumps(release.to_custom(), indent=2)
        files = (final / "model.onnx", final / "release.json")
        try:
            intact = (
                sha256_hex(files[0].read_bytes()) == digest and files[1].read_text() == release_json
            )
        except (OSError, UnicodeDecodeError):
            intact = False
        if intact:
            fds = [os.open(f, os.O_RDONLY) for f in files]
            try:
                yield fds
            finally:
                for fd in fds:
                    os.close(fd)
            return
        shutil.rmtree(final, ignore_errors=True)
        shutil.rmtree(self.home.models / f".{name}.tmp", ignore_errors=True)
        files_data = {"model.onnx": data, "release.json": release_json}
        with written_dir(final, files_data, mode=PUBLIC) as fds:
            yield fds

    def _prune(self, state: EdgeState) -> None:
        """Drop model directories no longer current nor among the last ``KEEP_PREVIOUS``."""
        keep = {i.model_dir for i in [state.current, *state.history] if i is not None}
        for d in self.home.models.iterdir():
            if d.is_dir() and not d.name.startswith(".") and d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    # ------------------------------------------------------------------ rollback
    def rollback(self) -> tuple[Installed, Installed]:
        """Make the previous install current again (loaded and probed first); returns
        (from, to). Recorded locally; the version rolled back from is not re-installed."""
        self.home.config()
        with self._locked():
            state = self.home.state()
            if state.current is None:
                raise UsageError("nothing is installed: nothing to roll back")
            if not state.history:
                raise UsageError(
                    f"v{state.current.global_version} is the only install here: no previous "
                    "version to roll back to"
                )
            previous, current = state.history[-1], state.current
            self._check_installed(previous).answer_probe(self._probe_of(previous))
            state.history.pop()
            state.current = previous
            if current.global_version not in state.rolled_back_from:
                state.rolled_back_from.append(current.global_version)
            state.add_event("rolled-back", version=previous.global_version,
                            previous=current.global_version)  # fmt: skip
            self.home.save_state(state)
            self._student = None
            return current, previous

    def _probe_of(self, installed: Installed) -> Probe:
        path = self.home.models / installed.model_dir / "release.json"
        try:
            return ReleaseTarget.from_custom(json.loads(path.read_text())).probe
        except (OSError, ValueError) as exc:
            raise EdgeStateError(f"{path}: unreadable ({exc})") from None

    def _check_installed(self, installed: Installed) -> Student:
        path = self.home.model_path(installed)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise EdgeStateError(f"installed model v{installed.global_version} is missing: "
                                 f"{path} ({exc.strerror})") from None  # fmt: skip
        if sha256_hex(data) != installed.sha256:
            raise VerificationError(
                f"installed model v{installed.global_version} at {path} changed since it was "
                "installed (digest differs)"
            )
        return Student(path, installed.input_name, installed.input_shape)

    # ------------------------------------------------------------------ use
    def predict(self, x: np.ndarray) -> list[Prediction]:
        """Classes and probabilities of samples ``x`` (n, 64) with the current student."""
        stamp = self.home.state_stamp()
        if self._current is None or self._current[0] != stamp:
            self._current = (stamp, self.home.state().current)
        current = self._current[1]
        if current is None:
            raise UsageError("no model installed here yet: run `fedgate edge sync`")
        if self._student is None or self._student[0] != current.sha256:
            self._student = (current.sha256, self._check_installed(current))
        return self._student[1].predict(x)

    def status(self, *, ask_server: bool = True) -> Status:
        """What is installed and, when the server answers, what the channel offers."""
        config = self.home.config()
        state = self.home.state()
        available = channel = None
        server = "not asked"
        if ask_server:
            try:
                with self._locked(), open_updater(self.home, config) as updater:
                    _, release = newest_release(updater, config)
                available, channel, server = release.global_version, release.channel, "ok"
            except FedgateError as exc:
                server = str(exc)
        return Status(config, state, available, channel, server)
