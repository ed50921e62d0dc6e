"""The same region run on Flower's simulation engine (Ray): many virtual devices, one machine.

``submit_simulation`` starts ``python -m fedgate.server.launch.simulation`` in its own process group
(so every Ray process it spawns is stopped with it) and returns a ``Submission`` that
``fedgate.server.launch.runner.follow`` tracks exactly like a deployment run.

A simulated run lives in its own scope, never in the region's: its virtual devices (keys
under ``<run dir>/devices``) are enrolled in the run's own database
``<run dir>/simulation.db``, which also holds its run, rounds and audit chain; the region's
database and registry are not opened.

The child process tells the truth about how it ended: Flower's ``run_simulation`` raises
when the engine (Ray) fails, but only after it started the ServerApp in a thread that would
go on sampling devices nobody answers for (every round until its timeout, then a "finished"
run with nothing accepted). The child therefore writes a ``failed`` progress record naming
the root cause and exits non-zero at once; ``check_outcome`` turns a finished run without
a single accepted update into an error too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from fedgate.atomic_file import write_atomic
from fedgate.clients.identity import enroll_identity
from fedgate.errors import FedgateError
from fedgate.procenv import flower_env
from fedgate.server.audit.keys import ensure_region_key
from fedgate.server.audit.store import Store
from fedgate.server.db.engine import RetryPolicy, retry_policy
from fedgate.server.launch.config import FederationConfig, RegionConfig
from fedgate.server.launch.runner import RunFailedError, Submission, run_config
from fedgate.server.launch.topology import region_dir
from fedgate.server.region.progress import ProgressWriter, read_progress
from fedgate.server.trust.enrollment import ENROLL_DIR_TOKEN_TTL, region_anchor, region_registry

RUN_DB = "simulation.db"  # a simulated run's own database, in its run directory
DEVICES = "devices"  # its virtual devices' directories (signing keys), ditto
LOG = "simulation.log"
FINAL = ("finished", "failed")


def run_db_path(out_dir: Path) -> Path:
    return Path(out_dir).resolve() / RUN_DB


def run_db_url(out_dir: Path) -> str:
    """The SQLite URL of a simulated run's own database."""
    return f"sqlite:///{run_db_path(out_dir)}"


def virtual_device_dir(devices: Path, index: int) -> Path:
    """Virtual device ``index``'s directory (key, enrollment, trust anchor)."""
    return Path(devices) / f"sim-{index}"


def sim_profiles(n: int) -> tuple[str, ...]:
    """Virtual devices alternate phone and pi, like the default SuperNodes."""
    return tuple("phone" if i % 2 == 0 else "pi" for i in range(n))


def enroll_virtual_devices(
    home: Path, region: RegionConfig, out_dir: Path, num_supernodes: int
) -> list[str]:
    """Enroll ``num_supernodes`` fresh virtual devices in the run's own database (the
    region's key signs its audit heads and is the devices' trust anchor), revoking those
    the region config lists as revoked; returns their ids. Keys go under
    ``out_dir/devices``."""
    devices = Path(out_dir) / DEVICES
    ids: list[str] = []
    with region_registry(home, region.name, run_db_url(out_dir)) as registry:
        anchor = region_anchor(home, region.name)
        for index, profile in enumerate(sim_profiles(num_supernodes)):

            def register(public_key: bytes, profile: str = profile) -> str:
                token = registry.issue_token(ttl_seconds=ENROLL_DIR_TOKEN_TTL)
                return registry.enroll(token, public_key, profile=profile).device_id

            enrolled = enroll_identity(
                virtual_device_dir(devices, index), region.name, profile, anchor, register,
                force=True,
            )  # fmt: skip
            ids.append(enrolled.enrollment.device_id)
        for index in region.revoked:
            if index < num_supernodes:
                registry.revoke(ids[index], reason="revoked in the region config")
    return ids


def virtual_client_app(devices: Path, data_root: Path | None = None):
    """fedgate's ClientApp, each virtual device acting as its enrolled ``sim-<i>`` device
    under ``devices`` (with ``data_root``: reading its own ``.npz`` data from
    ``data_root/<i>``)."""
    # heavy import (Flower, torch): only the simulation child needs it
    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp

    from fedgate.clients import app as real
    from fedgate.clients.device import NODE_CONFIG_KEY

    client_app = ClientApp()

    def as_device(context: Context) -> Context:
        pid = int(context.node_config["partition-id"])
        context.node_config[NODE_CONFIG_KEY] = str(virtual_device_dir(devices, pid))
        context.node_config.setdefault("profile", "phone" if pid % 2 == 0 else "pi")
        if data_root is not None:
            context.node_config["data-dir"] = str(data_root / str(pid))
        return context

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        return real.train(msg, as_device(context))

    @client_app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return real.evaluate_local(msg, as_device(context))

    return client_app


# -- the child process -------------------------------------------------------------------------


class ServerAppError(FedgateError):
    """The ServerApp raised (as opposed to the engine around it)."""


def simulate(
    config: dict[str, Any],
    num_supernodes: int,
    cpus_per_client: float = 1.0,
    data_root: Path | None = None,
) -> bool:
    """Run the region's ServerApp and ``num_supernodes`` virtual ClientApps in this process.

    Returns whether the engine started the ServerApp; an exception of the ServerApp is
    re-raised as ``ServerAppError`` from it, the engine's own failures as they come.
    """
    # heavy import (Flower, torch): only the simulation child needs it
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedgate.server.launch.indexed_linkstate import index_messages_by_node
    from fedgate.server.region.app import run_region

    server_app = ServerApp()
    seen: dict[str, Any] = {"started": False, "error": None}

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        seen["started"] = True
        try:
            run_region(grid, config, context.run_id)
        except BaseException as exc:
            seen["error"] = exc
            raise

    client_app = virtual_client_app(Path(config["out-dir"]) / DEVICES, data_root)
    index_messages_by_node()  # Flower's O(n^2) message scan per sweep -> O(n)
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=num_supernodes,
            backend_config={
                "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
                "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
            },
        )
    except BaseException as exc:
        if seen["error"] is not None and _in_chain(exc, seen["error"]):
            raise ServerAppError(describe(seen["error"])) from exc
        raise
    return bool(seen["started"])


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (``raise ... from``, else the implicit context), outermost
    first."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not e for e in out):
        out.append(current)
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return out


def _in_chain(exc: BaseException, target: BaseException) -> bool:
    return any(e is target for e in _chain(exc))


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line, at most ``limit`` characters."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, on one line."""
    message = one_line(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# Flower's wrappers around the engine's real error: never the reason to show.
FLOWER_WRAPPERS = (
    "Simulation Runtime crashed.",
    "An error was encountered. Ending simulation.",
)


def root_cause(exc: BaseException) -> BaseException:
    """The innermost cause of ``exc`` that is not one of Flower's generic wrappers."""
    chain = _chain(exc)
    real = [e for e in chain if str(e).strip() not in FLOWER_WRAPPERS]
    return (real or chain)[-1]


def engine_start_failed(exc: BaseException) -> bool:
    """Whether ``exc`` came from starting Flower's Ray backend (``ray.init``, building the
    actor pool), as opposed to a failure later in the run."""
    starting = {"init_ray", "build", "__init__"}
    for e in _chain(exc):
        tb = e.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_filename.endswith("raybackend.py") and code.co_name in starting:
                return True
            tb = tb.tb_next
    return False


def engine_failure(exc: BaseException) -> str:
    """One line naming why a simulation failed, from the exception ``simulate`` raised."""
    if isinstance(exc, ServerAppError):
        return f"the ServerApp failed: {exc}"
    if isinstance(exc, KeyboardInterrupt):
        return "the simulation was interrupted"
    what = "failed to start" if engine_start_failed(exc) else "failed"
    return f"the simulation engine (Ray) {what}: {describe(root_cause(exc))}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w]*\.)*[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b")


def cause_from_log(text: str) -> str | None:
    """The last exception line in a log (``Type: message``) that is not one of Flower's
    generic wrappers, else ``None``."""
    found = None
    for raw in text.splitlines():
        line = _ANSI.sub("", raw).strip()
        if _EXCEPTION_LINE.match(line):
            message = line.split(":", 1)[1].strip() if ":" in line else ""
            if message not in FLOWER_WRAPPERS:
                found = line
    return one_line(found) if found else None


def _final_record(out_dir: Path) -> dict[str, Any] | None:
    records, _ = read_progress(out_dir)
    return next((r for r in reversed(records) if r["kind"] in FINAL), None)


def _mark_run_failed(config: dict[str, Any], error: str) -> None:
    """Best effort: mark the run failed in its own database, if the ServerApp recorded it."""
    try:
        with retry_policy(RetryPolicy(budget=3.0)):
            key = ensure_region_key(Path(config["home"]), str(config["region"]))
            store = Store.open(str(config["db"]), signer=key)
            for run in store.runs():
                if run.status == "running":
                    store.finish_run(run.id, status="failed", note=error[:500])
    except Exception as exc:  # the progress record is what the CLI reads; this is extra
        print(f"fedgate: could not mark the run failed in {config['db']}: {exc}", flush=True)


def run_child(
    config: dict[str, Any],
    num_supernodes: int,
    cpus_per_client: float = 1.0,
    data_root: Path | None = None,
) -> int:
    """The child process: simulate, and make sure the run ends with a final progress record.

    On failure it writes a ``failed`` record naming the root cause and leaves with
    ``os._exit(1)``: the ServerApp thread Flower started may still be waiting for devices
    the dead engine will never run, and must not keep the process (and the CLI) waiting.
    """
    out_dir = Path(config["out-dir"])
    progress = ProgressWriter(out_dir)
    error: str | None = None
    try:
        if not simulate(config, num_supernodes, cpus_per_client, data_root):
            error = "the simulation engine ended without starting the ServerApp"
    except BaseException as exc:
        error = engine_failure(exc)

        traceback.print_exc()
    final = _final_record(out_dir)
    if error is None and final is None:
        error = "the simulation engine ended before the ServerApp recorded a result"
    if final is not None and final["kind"] == "finished":
        if error:  # the run is complete; an error while shutting the engine down is not fatal
            print(f"fedgate: after the run finished: {error}", flush=True)
        return 0
    if final is None:
        print(f"fedgate: simulated run failed: {error}", flush=True)
        if config.get("db"):
            _mark_run_failed(config, str(error))
        progress.write("failed", status="failed", error=error, engine="simulation")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


# -- the CLI side --------------------------------------------------------------------------


def _note_records(out_dir: Path) -> None:
    """Say in ``summary.json`` (written before the ``finished`` record) where the run's
    records are."""
    path = Path(out_dir) / "summary.json"
    with contextlib.suppress(OSError, ValueError):
        summary = json.loads(path.read_text())
        summary["records"] = str(run_db_path(out_dir))
        write_atomic(path, json.dumps(summary, indent=2))


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


class SimSubmission(Submission):
    """A simulated run in flight: its summary says where its records are, and it says why
    it failed in simulation terms."""

    def poll(self) -> list[dict[str, Any]]:
        new = super().poll()
        for event in new:
            if event["kind"] == "finished":
                event["records"] = str(run_db_path(self.out_dir))
                _note_records(self.out_dir)
        return new

    def records_url(self) -> str | None:
        return run_db_url(self.out_dir)

    def no_result(self) -> str:
        ended = self.ended
        if ended is not None:
            why = str(ended.get("error", "failed"))
        else:
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            cause = cause_from_log(text) or f"no error in {self.log.name}"
            why = f"the simulation process {_exit_text(self.proc.returncode)} ({cause})"
        return f"region {self.region}: simulated run failed: {one_line(why)}; read {self.log}"


def check_outcome(summary: dict[str, Any]) -> str | None:
    """Why a finished simulated run is no result (``None`` if it is one): not a single
    update accepted in any round, with the rejection reasons counted."""
    if int(summary.get("accepted") or 0) > 0:
        return None
    reasons = summary.get("rejected_by_reason") or {}
    rejected = int(summary.get("rejected") or sum(reasons.values()))
    rounds = summary.get("rounds", "?")
    head = f"no update was accepted in any of the {rounds} round(s)"
    if not rejected:
        return f"{head}: no device took part"
    counted = ", ".join(
        f"{reason} x{n}" for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    return f"{head}: 0 of {rejected} updates accepted (rejected: {counted or 'unknown'})"


def finish(sub: Submission, summary: dict[str, Any], echo: Any = print) -> None:
    """After a simulated run finished: say where its records are; raise ``RunFailedError``
    when it is no result (see ``check_outcome``)."""
    echo(
        f"records of this simulated run (virtual devices, run, rounds, audit chain): "
        f"{run_db_path(sub.out_dir)}; the region's database was not touched"
    )
    problem = check_outcome(summary)
    if problem:
        raise RunFailedError(f"region {sub.region}: simulated run failed: {problem}")


def submit_simulation(
    fed: FederationConfig,
    region: RegionConfig,
    home: Path,
    num_supernodes: int,
    cpus_per_client: float = 1.0,
) -> Submission:
    """Start a simulated run of ``region`` with ``num_supernodes`` virtual devices."""
    out_dir = (
        region_dir(home, region.name)
        / "runs"
        / (time.strftime("%Y%m%d-%H%M%S") + f"-sim-{time.monotonic_ns() % 10**6}")
    )
    out_dir.mkdir(parents=True)
    enroll_virtual_devices(home, region, out_dir, num_supernodes)
    config_path = write_run_config(fed, region, home, out_dir)
    child = ["-m", "fedgate.server.launch.simulation", "--config", str(config_path),
             "--num-supernodes", str(num_supernodes),
             "--cpus-per-client", str(cpus_per_client)]  # fmt: skip
    return start_simulation(region, home, out_dir, child)


def write_run_config(
    fed: FederationConfig, region: RegionConfig, home: Path, out_dir: Path
) -> Path:
    """The run config a simulated run's child process reads, as ``out_dir/run-config.json``;
    its database is the run's own (``out_dir/simulation.db``), never the region's."""
    path = out_dir / "run-config.json"
    config = run_config(fed, region, home, out_dir.resolve())
    config["db"] = run_db_url(out_dir)
    write_atomic(path, json.dumps(config, indent=2))
    return path


def start_simulation(
    region: RegionConfig, home: Path, out_dir: Path, child_args: list[str]
) -> Submission:
    """Run ``python <child_args>`` (a simulation) in its own session, logging to
    ``out_dir/simulation.log``; ``follow`` tracks it like any run."""
    log = out_dir / LOG
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, *child_args], stdout=fh, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=flower_env({"RAY_DEDUP_LOGS": "0"}), cwd=out_dir,
            start_new_session=True,
        )  # fmt: skip
    return SimSubmission(region.name, Path(home), out_dir, log, proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one region on Flower's simulation engine")
    parser.add_argument("--config", required=True, help="run config JSON written by fedgate")
    parser.add_argument("--num-supernodes", type=int, required=True)
    parser.add_argument("--cpus-per-client", type=float, default=1.0)
    args = parser.parse_args(argv)
    config = json.loads(Path(args.config).read_text())
    return run_child(config, args.num_supernodes, args.cpus_per_client)


if __name__ == "__main__":
    sys.exit(main())
