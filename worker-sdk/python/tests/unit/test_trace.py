"""W3C trace context helpers, with and without OpenTelemetry installed."""

import sys

import pytest

from baton import _trace

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_traceparent_rules_match_the_brokers():
    assert _trace.check_traceparent(GOOD) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert _trace.trace_id("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more") is not None
    for bad in ["", "garbage", GOOD.upper(), GOOD + "-more", "ff" + GOOD[2:],
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"]:
        with pytest.raises(ValueError):
            _trace.check_traceparent(bad)
        assert _trace.trace_id(bad) is None


def test_without_opentelemetry_nothing_is_added_and_runs_have_no_span(monkeypatch):
    _trace._otel.cache_clear()
    for name in [m for m in sys.modules if m == "opentelemetry" or m.startswith("opentelemetry.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import fails as if not installed
    try:
        context: dict = {}
        _trace.with_current_trace(context)
        assert context == {}
        with _trace.task_span("t", "c", "k", 1, {"traceparent": GOOD}) as span:
            assert span is None
    finally:
        _trace._otel.cache_clear()
