"""Per-round server nonces and replay memory for update envelopes."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field

NONCE_BYTES = 32


@dataclass
class RoundNonces:
    """A fresh random nonce per round, stable for the life of this server process.

    Call it (or ``for_round``) with a round number; the first call draws the nonce.
    """

    _nonces: dict[int, str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def for_round(self, server_round: int) -> str:
        with self._lock:
            if server_round not in self._nonces:
                self._nonces[server_round] = secrets.token_hex(NONCE_BYTES)
            return self._nonces[server_round]

    __call__ = for_round


@dataclass
class ReplayGuard:
    """Remembers which device sent which envelope digest per (run, round).

    Only the latest ``keep_rounds`` rounds of each run are kept: older rounds are refused by
    the round check before the guard is consulted.
    """

    keep_rounds: int = 2
    _seen: dict[tuple[str, int], dict[str, str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def remember(self, device_id: str, run_id: str, server_round: int, digest: str) -> str | None:
        """Store ``digest`` unless the device already sent one; return the earlier digest."""
        with self._lock:
            seen = self._seen.setdefault((run_id, server_round), {})
            if device_id in seen:
                return seen[device_id]
            seen[device_id] = digest
            oldest = server_round - self.keep_rounds
            for key in [k for k in self._seen if k[0] == run_id and k[1] <= oldest]:
                del self._seen[key]
            return None
