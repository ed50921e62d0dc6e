"""A ServerApp stopped by a signal tells a dead executor from a SuperLink that went away."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from fedgate.server.region.executor_watch import ExecutorWatch

SLEEPER = [sys.executable, "-c", "import sys; sys.stdin.read()"]


def _sleeper(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*SLEEPER, *args], stdin=subprocess.PIPE)


def _end(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()  # reaped: gone, not a zombie


def test_a_dead_executor_beside_a_live_superlink_is_told_apart() -> None:
    superlink = _sleeper()
    executor = _sleeper("--parent-pid", str(superlink.pid))
    try:
        watch = ExecutorWatch(executor.pid, superlink.pid)
        assert not watch.executor_died()
        _end(executor)
        assert watch.executor_died()
        _end(superlink)  # the SuperLink went away too: not the executor's failure alone
        assert not watch.executor_died()
    finally:
        for proc in (executor, superlink):
            if proc.poll() is None:
                _end(proc)


def test_the_watch_reads_its_executor_and_superlink_from_the_parent() -> None:
    superlink = _sleeper()
    child = textwrap.dedent(
        """
        import subprocess, sys
        code = "from fedgate.server.region.executor_watch import ExecutorWatch as W; "
        code += "w = W.of_this_process(); print(w.executor_pid, w.superlink_pid)"
        print(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.strip())
        """
    )
    try:
        done = subprocess.run([sys.executable, "-c", child, "--parent-pid", str(superlink.pid)],
                              capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
        executor_pid, superlink_pid = done.stdout.split()
        assert int(superlink_pid) == superlink.pid and int(executor_pid) > 0
    finally:
        _end(superlink)


def test_a_process_not_started_by_an_executor_watches_nothing() -> None:
    assert ExecutorWatch.of_this_process() == ExecutorWatch(None, None)
    assert not ExecutorWatch(None, None).executor_died()
