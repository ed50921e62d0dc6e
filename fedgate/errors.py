"""fedgate's one error root and its exit codes.

Every failure fedgate expects is a ``FedgateError``: its message is one line naming what is wrong
and what to do, and its class says which documented exit code the command line returns:

* 1 ``UsageError``: usage or configuration (a bad option, config file, path, token, run id);
* 2 ``VerificationError``: something failed verification (a signature, digest, chain, envelope);
* 3 ``UnavailableError``: a service or process fedgate needs is unavailable (database, SuperLink,
  proxy, enrollment server).

Area errors subclass one of the three (and, where callers have always caught it so, a builtin
such as ``ValueError``); ``fedgate.server.cli.common.friendly`` is the one handler that maps them.
"""

from __future__ import annotations

EXIT_USAGE = 1
EXIT_VERIFICATION = 2
EXIT_UNAVAILABLE = 3
EXIT_INTERRUPTED = 130


class FedgateError(Exception):
    """Root of every error fedgate raises on purpose; ``exit_code`` is the CLI's exit status."""

    exit_code: int = EXIT_USAGE


class UsageError(FedgateError):
    """Usage or configuration: the input the user gave cannot be used as it is."""

    exit_code = EXIT_USAGE


class VerificationError(FedgateError):
    """Data failed verification: a signature, digest, hash chain or declared structure."""

    exit_code = EXIT_VERIFICATION


class UnavailableError(FedgateError):
    """A service or process fedgate needs cannot be reached or started."""

    exit_code = EXIT_UNAVAILABLE
