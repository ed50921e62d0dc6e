"""``fedgate --help`` stays fast: the CLI's start-up path imports no heavy module.

No timing is asserted (machines differ); what keeps start-up short is structural. Importing
``fedgate.cli``, attaching every verb and rendering help load neither torch, Flower,
SQLAlchemy nor the aggregators: each verb imports what it drives when it runs. Every check
runs in a fresh interpreter, since this test process has long imported all of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

HEAVY = (
    "torch",
    "flwr",
    "sqlalchemy",
    "fedgate.strategies.aggregators",
    # slow enough to notice as well (tenths of a second each on a loaded machine)
    "numpy",
    "cryptography",
    "httpx",
    "matplotlib",
)
MARK = "loaded heavy modules: "


def _python(code: str) -> tuple[int, str, list[str]]:
    """Run ``code`` in a fresh interpreter; its exit code, its output before the line that
    names the heavy modules it ended with, and those modules."""
    probe = f"""
import json, sys
try:
{textwrap.indent(code, "    ")}
except SystemExit as exc:
    status = exc.code or 0
else:
    status = 0
loaded = sorted(m for m in {HEAVY!r} if m in sys.modules)
print("\\n{MARK}" + json.dumps(loaded))
sys.exit(status)
"""
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120", "TERMINAL_WIDTH": "120"},
    )
    assert "Traceback" not in done.stderr, done.stderr
    out, _, loaded = done.stdout.rpartition(MARK)
    return done.returncode, out, json.loads(loaded)


def test_registering_every_verb_imports_nothing_heavy() -> None:
    code, _, loaded = _python("from fedgate import cli\ncli._register()")
    assert code == 0
    assert loaded == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["demo", "init", "up", "down", "status", "region", "client", "audit"]),
        (["region"], ["run", "init", "enroll-token", "devices", "revoke"]),
        (["region", "run"], ["--region", "--engine", "--aggregator", "--num-supernodes"]),
        (["region", "enroll-token"], ["--ttl-hours", "24.0"]),
        (["client", "enroll"], ["--token", "--profile", "--superlink"]),
        (["audit", "verify"], ["--export", "--pubkeys", "--strict"]),
    ],
    ids=["fedgate", "region", "region run", "region enroll-token", "client enroll", "audit verify"],
)
def test_help_lists_the_verbs_and_imports_nothing_heavy(
    argv: list[str], expected: list[str]
) -> None:
    """``fedgate ... --help`` as the console script runs it (``fedgate.cli:main``)."""
    args = ["fedgate", *argv, "--help"]
    code, out, loaded = _python(f"sys.argv = {args!r}\nfrom fedgate.cli import main\nmain()")
    assert code == 0, out
    assert "Usage: fedgate" in out
    missing = [name for name in expected if name not in out]
    assert not missing, out
    assert loaded == [], f"{' '.join(args)} imported {loaded}"
