"""A throwaway PostgreSQL cluster from the server binaries, for tests and benchmarks.

Binaries (``initdb``, ``pg_ctl``, ``postgres``) are looked up on ``PATH``, in
``/usr/local/bin`` and in ``/usr/lib/postgresql/*/bin`` (``.ci/postgres.sh`` installs
them). initdb refuses to run as root, so under root the cluster runs as the ``postgres``
system user via ``runuser`` with its data and socket directories handed to that user.
The server listens on 127.0.0.1 at a free port, trusts local connections for the
superuser ``fedgate``, and is stopped (``-m immediate``) and deleted by ``stop``;
``stop_server``/``start_server`` take it down and bring it back on the same data and port
(for fault tests: a database that is unavailable for a moment).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fedgate.errors import UnavailableError

BINARIES = ("initdb", "pg_ctl", "postgres")
SUPERUSER = "fedgate"
RUN_AS = "postgres"


class PgClusterError(UnavailableError, RuntimeError):
    """The PostgreSQL binaries are missing or the cluster would not start."""


def find_bindir() -> Path:
    """The directory holding initdb, pg_ctl and postgres; raises with a clear message."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates.append(Path("/usr/local/bin"))
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    versions.sort(key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    candidates += [Path(p) for p in reversed(versions)]
    for cand in candidates:
        if all(os.access(cand / b, os.X_OK) for b in BINARIES):
            return cand
    raise PgClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH, in "
        "/usr/local/bin or /usr/lib/postgresql/*/bin; install them with .ci/postgres.sh"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgCluster:
    """One running cluster; use as a context manager or call ``start``/``stop``."""

    fast: bool = True  # fsync off: for tests; benchmarks pass False
    bindir: Path = field(default_factory=find_bindir)
    port: int = 0
    root: Path | None = None
    _as_root: bool = field(default_factory=lambda: os.geteuid() == 0)

    @property
    def data(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", RUN_AS, "--", *cmd]
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.root / "server.log" if self.root else None
            tail = log.read_text()[-2000:] if log and log.exists() else ""
            raise PgClusterError(
                f"{args[0]} failed ({proc.returncode}): "
                f"{proc.stderr.strip() or proc.stdout.strip()}\n{tail}"
            )
        return proc

    def start(self) -> PgCluster:
        self.root = Path(tempfile.mkdtemp(prefix="fedgate-pg-"))
        (self.root / "sock").mkdir()
        if self._as_root:
            try:
                user = pwd.getpwnam(RUN_AS)
            except KeyError:
                raise PgClusterError(f"running as root needs the {RUN_AS!r} system user") from None
            for path in (self.root, self.root / "sock"):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            SUPERUSER,
            "-E",
            "UTF8",
            "--no-locale",
        )
        self.port = self.port or free_port()
        self.start_server()
        return self

    def start_server(self) -> None:
        """(Re)start the server process on the existing data directory and port."""
        assert self.root is not None, "start() creates the cluster first"
        opts = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-k {self.root / 'sock'}",
            "-c max_connections=200",
        ]
        if self.fast:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            " ".join(opts),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server process but keep its data (``start_server`` brings it back).

        ``fast`` ends every session (clients see "terminating connection due to
        administrator command"); ``immediate`` is a crash without shutdown checkpoint, which
        on a ``fast`` (asynchronous-commit) cluster may lose the last commits.
        """
        if mode not in ("smart", "fast", "immediate"):
            raise PgClusterError(f"unknown pg_ctl stop mode {mode!r}")
        assert self.root is not None, "no cluster to stop"
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def stop(self) -> None:
        if self.root is None:
            return
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database; returns its SQLAlchemy URL."""
        # heavy import (psycopg): only for PostgreSQL
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def create_schema(self, name: str | None = None) -> str:
        """Create a fresh schema (much faster than a database); returns a URL that uses it."""
        # heavy import (psycopg): only for PostgreSQL
        import psycopg

        name = name or f"s_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return f"{self.url()}?options=-csearch_path%3D{name}"

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
