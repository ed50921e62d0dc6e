"""A long-lived ClientApp executor for one SuperNode started with ``--isolation process``.

Flower 1.41's SuperExec starts a fresh ``flwr-clientapp`` process (Python, Flower and torch
imports: 3-5 s on a small device) for every message. This worker takes the SuperExec's place:
it asks the SuperNode's Runtime API for tasks, like SuperExec does, but runs each ClientApp
task in this process with Flower's own task functions, so imports, the FAB and the local data
are loaded once. One task at a time, as Flower's executor does.

    python -m fedgate.clients.worker --runtime-api-address 127.0.0.1:9110
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
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
            finally:
                push_task_output(client, context, status, details)
                heartbeat.stop()
                client.close()

    def serve(self) -> None:
        """Poll for tasks until SIGTERM/SIGINT."""
        log(logging.INFO, "fedgate worker serving SuperNode runtime API at %s", self.address)
        while not self.stopping:
            res = self.control.AcquireTask(
                AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
            )
            if res.HasField("task") and res.token:
                self.run_task(res.token)
                continue
            time.sleep(POLL_INTERVAL)
        self.control.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True)
    args = parser.parse_args(argv)
    worker = ClientAppWorker(args.runtime_api_address)

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        worker.stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # Import the heavy parts (torch, data) before the first task arrives.
    import fedgate.clients.app  # noqa: F401

    worker.serve()
    sys.exit(0)


if __name__ == "__main__":
    main()
