"""Where fedgate keeps its state, resolved one way for every verb:
``--home`` > ``$FEDGATE_HOME`` > ``~/.fedgate``."""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    """``$FEDGATE_HOME``, else ``~/.fedgate`` (not resolved: it may not exist yet)."""
    return Path(os.environ.get("FEDGATE_HOME") or Path.home() / ".fedgate")


def resolve_home(home: Path | str | None) -> Path:
    """The home a verb works in: ``home`` when given, else ``default_home()``; absolute."""
    return (Path(home) if home else default_home()).expanduser().resolve()
