"""Prometheus metrics: names, labels, helpers and the exposition text."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from monitor import metrics
from monitor.errors import (
    BlockedURLError,
    FeedError,
    FeedGoneError,
    FetchError,
    HTTPStatusError,
    ParseError,
    RateLimitedError,
    TooLargeError,
)


def sample(name: str, **labels: str) -> float:
    """Current value of one series in the Spillover registry (0 when absent)."""
    value = metrics.REGISTRY.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_every_series_is_namespaced() -> None:
    """All our families start with spillover_ (process_/python_ come from standard collectors)."""
    text = metrics.exposition()[0].decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    ours = {n for n in names if not n.startswith(("process_", "python_"))}
    assert ours and all(n.startswith("spillover_") for n in ours), ours
    for expected in ("spillover_fetch", "spillover_articles", "spillover_verdicts",
                     "spillover_alerts", "spillover_outbox_depth", "spillover_classify_seconds",
                     "spillover_config_reloads", "spillover_ready", "spillover_fetch_seconds",
                     "spillover_dead_letters", "spillover_escalations"):
        assert expected in names


def test_fetch_outcomes_exist_before_first_event() -> None:
    """Every fetch outcome and reload result is exposed from the first scrape, at its count."""
    text = metrics.exposition()[0].decode()
    for outcome in metrics.FETCH_OUTCOMES:
        assert f'spillover_fetch_total{{outcome="{outcome}"}}' in text
    for result in metrics.RELOAD_RESULTS:
        assert f'spillover_config_reloads_total{{result="{result}"}}' in text
    assert "_created" not in text


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        (FeedGoneError("f", 410), "gone"),
        (RateLimitedError("f", 429, 30.0), "rate_limited"),
        (BlockedURLError("f", "private address"), "blocked"),
        (TooLargeError("f", "over 10 MiB"), "too_large"),
        (ParseError("f", "not a feed"), "parse_error"),
        (FetchError("f", "timeout"), "error"),
        (HTTPStatusError("f", 500), "error"),
    ],
)
def test_fetch_outcome_maps_errors(exc: FeedError, outcome: str) -> None:
    """Each feed error class maps to its outcome label; subclasses win over their parents."""
    assert metrics.fetch_outcome(exc) == outcome


def test_record_fetch_moves_counter_and_histogram() -> None:
    """record_fetch counts the outcome and the duration; an unknown outcome counts as error."""
    ok, errors = sample("spillover_fetch_total", outcome="ok"), sample(
        "spillover_fetch_total", outcome="error")
    count = sample("spillover_fetch_seconds_count")
    metrics.record_fetch("ok", 0.2)
    metrics.record_fetch("weird")  # type: ignore[arg-type]
    assert sample("spillover_fetch_total", outcome="ok") == ok + 1
    assert sample("spillover_fetch_total", outcome="error") == errors + 1
    assert sample("spillover_fetch_seconds_count") == count + 1
    assert sample("spillover_fetch_seconds_bucket", le="0.25") >= 1


def test_helpers_set_alert_reload_outbox_and_classify() -> None:
    """The helpers move the series an operator's dashboard reads."""
    before = sample("spillover_alerts_total", channel="slack", outcome="retry")
    metrics.record_alert("slack", "retry")
    assert sample("spillover_alerts_total", channel="slack", outcome="retry") == before + 1
    refused = sample("spillover_config_reloads_total", result="refused")
    metrics.record_reload("refused")
    assert sample("spillover_config_reloads_total", result="refused") == refused + 1
    metrics.set_outbox(7, -3.0, dead_letters=2)
    assert sample("spillover_outbox_depth") == 7
    assert sample("spillover_outbox_oldest_age_seconds") == 0  # clock skew never goes negative
    assert sample("spillover_dead_letters") == 2
    batches = sample("spillover_classify_batch_size_count")
    metrics.record_classify(0.04, 16)
    assert sample("spillover_classify_batch_size_count") == batches + 1
    assert sample("spillover_classify_seconds_bucket", le="0.05") >= 1
    metrics.set_feeds(active=5, inactive=1)
    assert sample("spillover_feeds", state="inactive") == 1
    metrics.set_build("9.9.9")
    assert sample("spillover_build_info", version="9.9.9") == 1


def test_arabic_label_values_round_trip() -> None:
    """Label values in Arabic (a signal name) survive the exposition format."""
    metrics.VERDICTS.labels(signal="تصعيد").inc()
    text = metrics.exposition()[0].decode("utf-8")
    verdicts = next(f for f in text_string_to_metric_families(text)
                    if f.name == "spillover_verdicts")
    assert any(s.labels.get("signal") == "تصعيد" and s.value >= 1 for s in verdicts.samples)
