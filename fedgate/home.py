"""Where fedgate keeps its state: ``$FEDGATE_HOME``, else ``~/.fedgate``."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    return Path(os.environ.get("FEDGATE_HOME") or Path.home() / ".fedgate")
