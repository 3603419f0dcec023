"""Tasks of the trace-propagation test: a worker with an OpenTelemetry SDK
tracer provider, whose task bodies report the trace they see."""

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from baton import Baton, current_task

trace.set_tracer_provider(TracerProvider())  # spans are made (and dropped): enough to read their parents

app = Baton()


def _seen() -> dict:
    ctx = current_task()
    span = trace.get_current_span()
    parent = getattr(span, "parent", None)
    return {
        "traceparent": ctx.traceparent,
        "trace_id": ctx.trace_id,
        "span_trace_id": format(span.get_span_context().trace_id, "032x"),
        "span_parent_id": format(parent.span_id, "016x") if parent is not None else None,
        "span_name": getattr(span, "name", None),
    }


@app.task(name="trace.sync")
def traced_sync(previous=None):
    return [*(previous or []), _seen()]


@app.task(name="trace.async")
async def traced_async(previous=None):
    return [*(previous or []), _seen()]
