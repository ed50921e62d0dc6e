"""Fuzz the enrollment service against its own OpenAPI schema (schemathesis, in-process ASGI,
a bounded number of examples per operation): no server error, no hang, and nothing is
recorded for the refused calls but their refusals (no device, no spent token)."""

from __future__ import annotations

import pytest
import schemathesis
from enroll_kit import setup_region
from hypothesis import HealthCheck, given, settings
from sqlalchemy import func, select

from fedgate.server.db.models import Device as DeviceRow
from fedgate.server.db.models import EnrollmentToken
from fedgate.server.trust.enroll_run import service_settings
from fedgate.server.trust.enroll_service import create_app

EXAMPLES = 30  # per operation: the whole module stays within a few seconds


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz-home")
    setup_region(home, "eu")
    s = service_settings(home, "eu", fleet_address="127.0.0.1:1", public_url="https://x:1",
                         superlink=None, rate=1e6, burst=10**6)  # fmt: skip
    s.registry.issue_token(600)  # a live token the fuzzer must not be able to spend
    yield create_app(s), s
    s.registry.close()


def test_no_input_makes_the_service_fail(fuzzed) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzzed[0])
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/enroll", "/v1/status", "/v1/challenge"}
    calls: list[int] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def check(case) -> None:
            response = case.call(timeout=10)
            calls.append(response.status_code)
            assert response.status_code < 500, response.text
            if response.status_code >= 400 and response.status_code != 404:
                body = response.json()
                assert body.get("reason") and body.get("detail"), body

        check()
    assert len(calls) >= len(operations) and any(code >= 400 for code in calls)


def test_the_fuzzing_left_only_refusals(fuzzed) -> None:
    """Runs after the fuzz cases (file order): the registry is as it was, the log holds
    refusals only."""
    s = fuzzed[1]
    with s.registry.store.engine.connect() as conn:
        devices = conn.execute(select(func.count()).select_from(DeviceRow.__table__)).scalar()
        tokens = EnrollmentToken.__table__
        spent = conn.execute(select(func.count()).where(tokens.c.used_at.is_not(None))).scalar()
    assert devices == 0 and spent == 0
    kinds = {e.kind for e in s.registry.store.audit.events()}
    assert kinds <= {"actor.added", "device.token_issued", "enrollment.refused",
                     "region.operator", "actor.registered"}, kinds  # fmt: skip
    assert "enrollment.refused" in kinds
