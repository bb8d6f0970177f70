"""Limits policy: which setting applies to a bucket, how events change it, how config is read.

Most specific scope wins field by field: bucket (ip, context) > ip > context > default > built-in.
"""

from __future__ import annotations

from typing import Any

import pytest

from domain.events import LimitsChanged
from domain.limits import DEFAULT_LIMITS, Limits, PolicyBook, settings_from_config, usd_to_micros
from domain.usage_projection import duration
from functions.admission import routing_policy

IP, OTHER_IP = "10.0.0.1", "10.0.0.2"


def book_of(doc: dict[str, Any]) -> PolicyBook:
    book = PolicyBook()
    for scope, settings in settings_from_config(doc):
        book.set(scope, settings, none_means_unlimited=True)  # as the runtime loads config files
    return book


def changed(scope: str, ip: str = "", context: str = "", **fields: Any) -> LimitsChanged:
    return LimitsChanged(event_id=f"lc-{scope}-{ip}-{context}-{sorted(fields)}", ts_us=1, scope=scope,  # type: ignore[arg-type]
                         ip=ip, context=context, **fields)


LAYERED = {
    "default": {"requests_per_min": 10, "tokens_per_min": 1000, "concurrent": 5, "budget_daily_usd": "1"},
    "contexts": {"A": {"requests_per_min": 20, "tokens_per_min": 2000}},
    "ips": {IP: {"requests_per_min": 30}},
    "buckets": {f"{IP}|A": {"concurrent": 7}},
}


# ---- precedence -------------------------------------------------------------------------------


def test_nothing_configured_gives_the_built_in_defaults() -> None:
    limits = PolicyBook().effective(IP, "A")
    assert limits == DEFAULT_LIMITS
    assert (limits.requests_per_min, limits.tokens_per_min, limits.concurrent) == (1000, 2_000_000, 100)
    assert limits.budget_daily_micros is None and limits.budget_monthly_micros is None


def test_the_most_specific_scope_wins_field_by_field() -> None:
    book = book_of(LAYERED)
    bucket = book.effective(IP, "A")
    assert bucket.concurrent == 7  # bucket
    assert bucket.requests_per_min == 30  # ip beats context and default
    assert bucket.tokens_per_min == 2000  # context beats default
    assert bucket.budget_daily_micros == 1_000_000  # default
    assert bucket.budget_monthly_micros is None  # nobody set it: no limit


def test_each_bucket_sees_only_the_scopes_that_name_it() -> None:
    book = book_of(LAYERED)
    assert book.effective(IP, "B") == Limits(requests_per_min=30, tokens_per_min=1000, concurrent=5,
                                             budget_daily_micros=1_000_000)
    assert book.effective(OTHER_IP, "A") == Limits(requests_per_min=20, tokens_per_min=2000, concurrent=5,
                                                   budget_daily_micros=1_000_000)
    assert book.effective(OTHER_IP, "B") == Limits(requests_per_min=10, tokens_per_min=1000, concurrent=5,
                                                   budget_daily_micros=1_000_000)


def test_a_bucket_override_does_not_leak_to_the_same_context_on_another_ip() -> None:
    book = book_of({"buckets": {f"{IP}|A": {"requests_per_min": 1}}})
    assert book.effective(IP, "A").requests_per_min == 1
    assert book.effective(OTHER_IP, "A").requests_per_min == 1000
    assert book.effective(IP, "B").requests_per_min == 1000


def test_a_limits_changed_event_overrides_config_at_its_scope_and_keeps_the_other_fields() -> None:
    book = book_of(LAYERED)
    version = book.version
    book.apply(changed("context", context="A", tokens_per_min=5000))
    assert book.version > version
    limits = book.effective(OTHER_IP, "A")
    assert limits.tokens_per_min == 5000
    assert limits.requests_per_min == 20  # the context's other field is kept


def test_an_event_at_a_broad_scope_still_loses_to_a_more_specific_one() -> None:
    book = book_of(LAYERED)
    book.apply(changed("default", requests_per_min=99, concurrent=1))
    assert book.effective(IP, "A").requests_per_min == 30  # the ip override still wins
    assert book.effective(IP, "A").concurrent == 7  # the bucket override still wins
    assert book.effective(OTHER_IP, "B").requests_per_min == 99
    assert book.effective(OTHER_IP, "B").concurrent == 1


def test_cleared_removes_one_override_and_the_next_scope_shows_through() -> None:
    book = book_of(LAYERED)
    book.apply(changed("ip", ip=IP, cleared=["requests_per_min"]))
    assert book.effective(IP, "A").requests_per_min == 20  # context now
    book.apply(changed("context", context="A", cleared=["requests_per_min"]))
    assert book.effective(IP, "A").requests_per_min == 10  # default now
    assert book.effective(IP, "A").tokens_per_min == 2000  # not cleared


def test_clearing_every_field_of_a_scope_forgets_the_scope() -> None:
    book = book_of({"buckets": {f"{IP}|A": {"concurrent": 7}}})
    book.apply(changed("bucket", ip=IP, context="A", cleared=["concurrent"]))
    assert ("bucket", IP, "A") not in book.overrides
    assert book.effective(IP, "A") == DEFAULT_LIMITS


def test_reset_drops_every_override_of_the_scope_before_applying_the_event() -> None:
    book = book_of(LAYERED)
    book.apply(changed("context", context="A", reset=True, concurrent=3))
    limits = book.effective(OTHER_IP, "A")
    assert limits.concurrent == 3
    assert limits.requests_per_min == 10 and limits.tokens_per_min == 1000  # context's old fields gone
    assert book.overrides[("context", "", "A")] == {"concurrent": 3}


def test_reset_without_fields_removes_the_scope() -> None:
    book = book_of(LAYERED)
    book.apply(changed("ip", ip=IP, reset=True))
    assert ("ip", IP, "") not in book.overrides
    assert book.effective(IP, "B").requests_per_min == 10


def test_an_event_field_left_none_changes_nothing() -> None:
    book = book_of(LAYERED)
    before = book.effective(IP, "A")
    book.apply(changed("bucket", ip=IP, context="A"))
    assert book.effective(IP, "A") == before


def test_an_event_ignores_the_target_fields_its_scope_does_not_use() -> None:
    book = PolicyBook()
    book.apply(changed("context", ip="9.9.9.9", context="A", requests_per_min=4))
    assert book.effective(OTHER_IP, "A").requests_per_min == 4  # not only for 9.9.9.9


def test_policy_lists_become_tuples_and_reach_the_routing_policy() -> None:
    book = book_of({"contexts": {"A": {"allowed_providers": ["fakeai"], "denied_models": ["fake-large"],
                                       "pinned_model": "fake-small", "strategy": "fastest"}}})
    limits = book.effective(IP, "A")
    assert limits.allowed_providers == ("fakeai",)
    policy = routing_policy(limits)
    assert policy.allowed_providers == frozenset({"fakeai"})
    assert policy.denied_models == frozenset({"fake-large"})
    assert policy.pinned_model == "fake-small" and policy.strategy == "fastest"
    assert routing_policy(book.effective(IP, "B")).allowed_providers is None


# ---- settings_from_config ------------------------------------------------------------------


def test_config_budgets_in_usd_become_exact_micros() -> None:
    pairs = settings_from_config({"default": {"budget_daily_usd": "0.000001", "budget_monthly_usd": 12.5},
                                  "contexts": {"A": {"budget_daily_micros": 42}}})
    assert pairs == [(("default", "", ""), {"budget_daily_micros": 1, "budget_monthly_micros": 12_500_000}),
                     (("context", "", "A"), {"budget_daily_micros": 42})]


def test_config_scopes_name_their_targets() -> None:
    pairs = dict(settings_from_config({"ips": {IP: {"concurrent": 1}}, "buckets": {f"{IP}|A": {"concurrent": 2}},
                                       "contexts": {7: {"concurrent": 3}}}))
    assert pairs == {("ip", IP, ""): {"concurrent": 1}, ("bucket", IP, "A"): {"concurrent": 2},
                     ("context", "", "7"): {"concurrent": 3}}


@pytest.mark.parametrize(("doc", "says"), [
    pytest.param({"defaults": {}}, "unknown keys ['defaults']", id="unknown-section"),
    pytest.param({"default": {"requests_per_minute": 5}}, "limits.default: unknown setting 'requests_per_minute'",
                 id="unknown-setting"),
    pytest.param({"contexts": {"A": {"requests_per_min": "5"}}},
                 "limits.contexts['A'].requests_per_min must be an integer >= 0 or null, got '5'", id="string-limit"),
    pytest.param({"ips": {IP: {"concurrent": -1}}}, f"limits.ips['{IP}'].concurrent must be an integer >= 0",
                 id="negative-limit"),
    pytest.param({"buckets": {f"{IP}|A": {"tokens_per_min": True}}},
                 f"limits.buckets['{IP}|A'].tokens_per_min must be an integer >= 0", id="bool-limit"),
    pytest.param({"default": {"budget_daily_usd": "ten"}}, "limits.default.budget_daily_usd: 'ten' is not an amount",
                 id="usd-not-a-number"),
    pytest.param({"default": {"budget_monthly_usd": "0.0000001"}},
                 "limits.default.budget_monthly_usd: '0.0000001' must be >= 0 with at most 6 decimals",
                 id="usd-too-precise"),
    pytest.param({"default": {"budget_daily_usd": "-1"}}, "limits.default.budget_daily_usd: '-1' must be >= 0",
                 id="usd-negative"),
    pytest.param({"contexts": {"A": 5}}, "limits.contexts['A'] must be a mapping", id="not-a-mapping"),
])
def test_config_errors_name_the_key_and_the_rule(doc: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError) as info:
        settings_from_config(doc)
    assert says in str(info.value)


def test_usd_to_micros_is_exact() -> None:
    assert usd_to_micros("0.1", "x") == 100_000
    assert usd_to_micros(0.1, "x") == 100_000  # a YAML float goes through its shortest repr
    assert usd_to_micros("1234.567891", "x") == 1_234_567_891


def test_a_null_limit_in_config_lifts_the_default_limit() -> None:
    book = book_of({"default": {"requests_per_min": 10}, "contexts": {"vip": {"requests_per_min": None}}})
    assert book.effective(IP, "vip").requests_per_min is None


def test_config_refuses_a_provider_list_given_as_one_string() -> None:
    with pytest.raises(ValueError, match="allowed_providers"):
        settings_from_config({"contexts": {"A": {"allowed_providers": "fakeai"}}})


def test_config_refuses_an_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="bogus"):
        settings_from_config({"contexts": {"A": {"strategy": "bogus"}}})


def test_config_refuses_a_bucket_key_without_a_separator() -> None:
    with pytest.raises(ValueError, match="10.0.0.1"):
        settings_from_config({"buckets": {IP: {"concurrent": 1}}})


# ---- duration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("us", "text"), [
    (360_000_000, "6m0s"),
    (1_000_000, "1s"),
    (250_000, "250ms"),
    (0, "0s"),
    (-5, "0s"),
    (1, "1ms"),
    (999_999, "1000ms"),
    (1_000_001, "2s"),  # rounded up: a client waiting that long is never early
    (59_000_000, "59s"),
    (60_000_000, "1m0s"),
    (61_500_000, "1m2s"),
    (3_600_000_000, "1h0m0s"),
    (86_399_000_000, "23h59m59s"),
])
def test_duration_is_openai_reset_format(us: int, text: str) -> None:
    assert duration(us) == text
