"""A long-lived ClientApp executor for one SuperNode started with ``--isolation process``.

Flower 1.41's SuperExec starts a fresh ``flwr-clientapp`` process (Python, Flower and torch
imports: 3-5 s on a small device) for every message. This worker takes the SuperExec's place:
it asks the SuperNode's Runtime API for tasks, like SuperExec does, but runs each ClientApp
task in this process with Flower's own task functions, so imports, the FAB and the local data
are loaded once. One task at a time, as Flower's executor does.

One parent process imports torch and warms it up once, then forks one child per SuperNode
(``--node`` repeated), so a region's workers share the import and first-call costs:

    python -m fedgate.clients.worker --node 127.0.0.1:9110,FLWR_HOME,LOG [--node ...]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from types import FrameType

from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # type: ignore[attr-defined]
from flwr.supercore import log
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from fedgate.clients.device_view import emit

POLL_INTERVAL = float(os.environ.get("FEDGATE_WORKER_POLL_INTERVAL", "0.1"))


def _client(address: str, component: str, token: str | None = None) -> RuntimeHttpClient:
    interceptors = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


class ClientAppWorker:
    """Acquire ClientApp tasks from a SuperNode and run them in this process."""

    def __init__(self, runtime_api_address: str) -> None:
        self.address = runtime_api_address
        self.control = _client(runtime_api_address, "SuperExec")
        self._apps: dict[str, ClientApp] = {}
        self._load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        self.stopping = False

    def _app_for(self, run, fab) -> ClientApp:
        if fab.hash_str not in self._apps:
            install_from_fab(fab.content, skip_prompt=True)
            self._apps[fab.hash_str] = self._load(run.fab_id, run.fab_version, fab.hash_str)
        return self._apps[fab.hash_str]

    def run_task(self, token: str) -> None:
        """Run one task exactly as ``flwr-clientapp`` would, without exiting the process."""
        client = _client(self.address, "flwr-clientapp", token)
        heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
        heartbeat.start()
        message = reply = context = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        try:
            message, context, run, fab = pull_task_input(client)
            reply = self._app_for(run, fab)(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
            if reply.has_error():
                emit("failed", detail=reply.error.reason)
        except Exception as ex:
            log(logging.ERROR, "ClientApp raised an exception", exc_info=ex)
            details = f"{type(ex)}:<'{ex}'>"
            if message is not None:
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details),
                    reply_to=message,
                )
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
                    if message is not None and message.metadata.message_type == "train":
                        emit("sent", **_round_of(message))
            finally:
                push_task_output(client, context, status, details)
                heartbeat.stop()
                client.close()

    def serve_once(self) -> bool:
        """Run the next task if there is one (else sleep one poll interval); True if it ran."""
        res = self.control.AcquireTask(
            AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        )
        if res.HasField("task") and res.token:
            self.run_task(res.token)
            return True
        time.sleep(POLL_INTERVAL)
        return False

    def serve(self) -> None:
        """Poll for tasks until SIGTERM/SIGINT."""
        log(logging.INFO, "fedgate worker serving SuperNode runtime API at %s", self.address)
        while not self.stopping:
            self.serve_once()
        self.control.close()


def _round_of(message: Message) -> dict[str, str | int]:
    """The region run and round a train message belongs to (its instruction names them)."""
    try:
        config = message.content["config"]
        return {"run": str(config["run-id"]), "round": int(config["server-round"])}
    except (KeyError, TypeError, ValueError):
        return {"run": "?", "round": 0}


def prepare() -> None:
    """The ClientApp's imports, and torch on one intra-op thread (workers and a device's
    SuperNode share few cores; it also keeps ``fork`` safe)."""
    import torch

    import fedgate.clients.app  # noqa: F401  (the ClientApp and its imports)

    torch.set_num_threads(1)


def warm_up() -> None:
    """Import and exercise the training code once, so forked workers start hot.

    torch initialises lazily on the first forward/backward pass (about a second per process
    on a small CPU); doing it here, before ``fork``, pays that cost once per machine.
    """
    import numpy as np

    from fedgate.models.data import Dataset, load_digits_dataset
    from fedgate.models.nets import MODELS, build_model
    from fedgate.models.train import evaluate, train_local

    prepare()
    load_digits_dataset()
    rng = np.random.default_rng(0)
    tiny = Dataset(rng.random((8, 64), dtype=np.float32), np.arange(8) % 10)
    for model_id in MODELS:
        model = build_model(model_id, seed=0)
        train_local(model, tiny, epochs=1, batch_size=4, lr=0.01, max_examples=8, seed=0)
        evaluate(model, tiny)


@dataclass(frozen=True)
class NodeSpec:
    """One SuperNode a forked worker serves: its Runtime API, Flower home and log file."""

    address: str
    flwr_home: str
    log: str

    @classmethod
    def parse(cls, text: str) -> NodeSpec:
        parts = text.split(",")
        if len(parts) != 3 or not all(parts):
            raise argparse.ArgumentTypeError(f"--node expects ADDRESS,FLWR_HOME,LOG (got {text!r})")
        return cls(*parts)


def _serve_node(spec: NodeSpec) -> None:
    """Child process body: own log, own Flower home, serve until SIGTERM."""
    fd = os.open(spec.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.environ["FLWR_HOME"] = spec.flwr_home
    worker = ClientAppWorker(spec.address)

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker.serve()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--node",
        action="append",
        type=NodeSpec.parse,
        required=True,
        help="ADDRESS,FLWR_HOME,LOG of a SuperNode's Runtime API; repeat for several nodes",
    )
    args = parser.parse_args(argv)
    warm_up()
    children: dict[int, NodeSpec] = {}
    for spec in args.node:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _serve_node(spec)
            except BaseException as exc:  # report, never fall back into the parent's loop
                print(f"fedgate worker for {spec.address} failed: {exc!r}", file=sys.stderr)
                code = 1
            finally:
                os._exit(code)
        children[pid] = spec

    def _forward(sig: int, _frame: FrameType | None) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)
    while children:
        with contextlib.suppress(ChildProcessError):
            pid, status = os.wait()
            spec = children.pop(pid, None)
            if spec is not None and os.waitstatus_to_exitcode(status) not in (0, -signal.SIGTERM):
                print(f"worker for {spec.address} exited with status {status}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
