"""One verification failure, named by the event at fault."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One verification failure; ``seq`` is the event at fault (None: not one event)."""

    seq: int | None
    message: str

    def __str__(self) -> str:
        return self.message if self.seq is None else f"event {self.seq}: {self.message}"
