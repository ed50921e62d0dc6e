"""The crash-test hook every multi-step writer shares (the coordinator's merge, the edge node's
install): with ``FEDGATE_TEST_PAUSE_AT=<step>`` and ``FEDGATE_TEST_PAUSE_DIR=<dir>``, the
process writes ``<dir>/<step>.reached`` at that step and waits for ``<dir>/<step>.release``, so
a test can kill it exactly there. A no-op unless both variables are set."""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_AT, PAUSE_DIR = "FEDGATE_TEST_PAUSE_AT", "FEDGATE_TEST_PAUSE_DIR"


def pause(step: str) -> None:
    """Stop at ``step`` when the test hook names it (see the module docstring)."""
    if os.environ.get(PAUSE_AT) != step or not os.environ.get(PAUSE_DIR):
        return
    where = Path(os.environ[PAUSE_DIR])
    (where / f"{step}.reached").write_text(str(os.getpid()))
    release = where / f"{step}.release"
    while not release.exists():
        time.sleep(0.02)
