"""Why a deployed ServerApp was stopped: its executor died, or its SuperLink went away.

With ``--isolation process`` Flower's executor (``flower-superexec --parent-pid SUPERLINK``)
starts each run's ServerApp as its child. Flower stops a ServerApp with a signal both when its
SuperLink goes away and when its executor dies; only the processes still alive tell the two
apart, so the ServerApp records the same end the launcher's follower would (``failed`` for a dead
executor, ``interrupted`` otherwise), whichever of the two writes first.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil


def _running(pid: int | None) -> bool:
    """``pid`` exists and is not a zombie."""
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@dataclass(frozen=True)
class ExecutorWatch:
    """This ServerApp's executor (its parent) and the SuperLink that executor serves."""

    executor_pid: int | None
    superlink_pid: int | None

    @classmethod
    def of_this_process(cls) -> ExecutorWatch:
        """Read at start: the parent, and its ``--parent-pid`` if it is a Flower executor."""
        parent = os.getppid()
        try:
            cmd = psutil.Process(parent).cmdline()
        except psutil.Error:
            return cls(None, None)
        if "--parent-pid" not in cmd[:-1]:
            return cls(None, None)  # not started by an executor (e.g. the simulation engine)
        try:
            return cls(parent, int(cmd[cmd.index("--parent-pid") + 1]))
        except ValueError:
            return cls(None, None)

    def executor_died(self) -> bool:
        """The executor is gone while its SuperLink still runs."""
        return (
            self.executor_pid is not None
            and not _running(self.executor_pid)
            and _running(self.superlink_pid)
        )
