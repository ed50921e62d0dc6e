"""Region config -> aggregator: names, defaults, and configuration-time checks."""

from __future__ import annotations

import pytest

from fedgate.strategies.aggregators import AGGREGATORS, AggregatorConfigError
from fedgate.strategies.rules import (
    REGION_DEFAULT,
    RULE_DEFAULTS,
    RuleConfig,
    build_rule,
    check_rule,
)


def test_region_default_is_buildable_for_the_demo_and_the_benchmark():
    assert isinstance(REGION_DEFAULT, RuleConfig)
    rule = build_rule(REGION_DEFAULT.aggregator, REGION_DEFAULT.f, REGION_DEFAULT.pre)
    assert rule.f == REGION_DEFAULT.f
    # the demo's regions: 4-6 clients per round, min 3, f = 1
    check_rule(REGION_DEFAULT.aggregator, 1, REGION_DEFAULT.pre, 4, 3)
    check_rule(REGION_DEFAULT.aggregator, 1, REGION_DEFAULT.pre, 6, 3)
    # the benchmark's settings
    for f in (4, 6):
        check_rule(REGION_DEFAULT.aggregator, f, REGION_DEFAULT.pre, 20, 20)


def test_rule_defaults_reach_a_bare_config():
    for name, params in RULE_DEFAULTS.items():
        rule = build_rule(name, 1)
        for key, value in params.items():
            assert getattr(rule, key) == value, (name, key)


def test_rule_defaults_reach_ensemble_members_and_wrapped_rules():
    ensemble = build_rule("ensemble", 1)
    for member in ensemble.rules:
        inner = getattr(member, "inner", member)  # nnm+cc: the cc behind the mixing
        for key, value in RULE_DEFAULTS.get(inner.name, {}).items():
            assert getattr(inner, key) == value, (member.name, key)
    assert [m.name for m in ensemble.rules] == ["cc", "nnm+cc", "zeno"]


def test_explicit_parameters_override_the_defaults():
    rule = build_rule("cc", 1, tau=0.5, iterations=2)
    assert (rule.tau, rule.iterations) == (0.5, 2)


def test_every_registered_rule_builds_by_name():
    for name in AGGREGATORS:
        assert build_rule(name, 1).name == name


def test_pre_aggregator_wraps_the_rule():
    rule = build_rule("trimmed-mean", 2, "nnm")
    assert rule.name == "nnm+trimmed-mean" and rule.f == 2
    assert build_rule("trimmed-mean", 2, "").name == "trimmed-mean"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("krumm", 1, None, 5, 5), "unknown aggregator 'krumm'"),
        (("bulyan", 2, None, 12, 10), r"bulyan needs n >= 4f\+3 \(f=2\) = 11 updates, got n=10"),
        (("krum", 1, None, 4, 4), r"krum needs n >= 2f\+3"),
        (("median", 1, "mix", 5, 5), "unknown pre-aggregator 'mix'"),
        (("median", -1, None, 5, 5), "f must be"),
        (("median", 1, None, 4, 6), "min-clients=6 exceeds clients-per-round=4"),
    ],
)
def test_check_rule_fails_at_configuration_time(args, message):
    with pytest.raises(ValueError, match=message):
        check_rule(*args)


def test_config_errors_are_value_errors_for_the_config_layer():
    assert issubclass(AggregatorConfigError, ValueError)


def test_fltrust_is_refused_for_regions_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"fltrust.*root data"):
        check_rule("fltrust", 1, None, 5, 5)
