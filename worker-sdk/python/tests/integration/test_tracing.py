"""Trace propagation: the worker sees the submitter's W3C trace, and with
OpenTelemetry each run's span is a child of the submitter's span."""

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

from baton import chain  # noqa: E402

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def trace_app(broker):
    import trace_app

    trace_app.app.address = broker.address
    yield trace_app
    trace_app.app.close()


def test_every_step_runs_in_a_child_of_the_submitters_span(trace_app, start_worker):
    start_worker(app="trace_app", concurrency=2)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("submit") as submit:
        r = chain(trace_app.traced_sync.s(), trace_app.traced_async.s()).apply_async()
    want_trace = format(submit.get_span_context().trace_id, "032x")
    want_parent = format(submit.get_span_context().span_id, "016x")
    seen = r.get(timeout=30)
    assert len(seen) == 2
    for step, name in zip(seen, ["trace.sync", "trace.async"]):
        assert step["trace_id"] == want_trace
        assert step["traceparent"].startswith(f"00-{want_trace}-{want_parent}-")
        assert step["span_trace_id"] == want_trace
        assert step["span_parent_id"] == want_parent
        assert step["span_name"] == name


def test_an_explicit_traceparent_wins(trace_app, start_worker):
    start_worker(app="trace_app")
    r = trace_app.traced_sync.apply_async(context={"traceparent": TRACEPARENT})
    [step] = r.get(timeout=30)
    assert step["traceparent"] == TRACEPARENT
    assert step["span_trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert step["span_parent_id"] == "00f067aa0ba902b7"


def test_a_malformed_traceparent_is_refused_before_sending(trace_app):
    with pytest.raises(ValueError, match=r'context\["traceparent"\]'):
        trace_app.traced_sync.apply_async(
            context={"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"})
