"""One error root: every exception class fedgate defines is a ``FedgateError`` of one of the
three kinds whose exit codes the README documents."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import fedgate
from fedgate.errors import (
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    EXIT_VERIFICATION,
    FedgateError,
    UnavailableError,
    UsageError,
    VerificationError,
)

SKIP = ("fedgate.server.db.migrations",)  # Alembic scripts run only inside Alembic


def _defined_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(fedgate.__path__, "fedgate."):
        if info.name.startswith(SKIP):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found.append(obj)
    return found


def test_every_fedgate_exception_is_under_the_one_root() -> None:
    classes = _defined_exceptions()
    assert len(classes) >= 25, classes
    outside = [c.__qualname__ for c in classes if not issubclass(c, FedgateError)]
    assert not outside, f"not under FedgateError: {outside}"
    kinds = (UsageError, VerificationError, UnavailableError)
    loose = [c.__qualname__ for c in classes if c not in kinds and c is not FedgateError
             and not issubclass(c, kinds) and c.exit_code != EXIT_USAGE]  # fmt: skip
    assert not loose, loose
    assert {c.exit_code for c in classes} <= {EXIT_USAGE, EXIT_VERIFICATION, EXIT_UNAVAILABLE}
