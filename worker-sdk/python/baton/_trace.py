"""W3C Trace Context as Baton carries it: a chain's ``traceparent`` and
``tracestate`` are two reserved keys of its context map, so every step and
callback of the chain (retries and a requeued copy too) sees them, and the
broker refuses a malformed ``traceparent``.

OpenTelemetry is optional: when ``opentelemetry-api`` is importable, a
submission made inside a span carries that span (unless the caller set a
``traceparent``), and each run's body runs in a span that is a child of the
chain's. Without it nothing is imported and nothing changes.
"""

from __future__ import annotations

import functools
import re
from contextlib import contextmanager
from typing import Any, Iterator, Mapping, MutableMapping, Optional

from . import pb

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def trace_id(traceparent: Optional[str]) -> Optional[str]:
    """The trace id (32 hex digits) of a valid ``traceparent``, else None."""
    if not traceparent:
        return None
    try:
        return check_traceparent(traceparent)
    except ValueError:
        return None


def check_traceparent(value: str) -> str:
    """Check a ``traceparent`` as the broker does; return its trace id.

    Raises ``ValueError`` naming what is wrong.
    """
    m = _TRACEPARENT.match(value)
    if m is None:
        raise ValueError(
            f'context["traceparent"] {value!r} is not a W3C traceparent: it must be '
            "version-traceid-parentid-flags in lowercase hex, "
            "like 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        )
    version, tid, pid, _flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest):
        raise ValueError(f'context["traceparent"] {value!r} has a bad version for its length')
    if set(tid) == {"0"} or set(pid) == {"0"}:
        raise ValueError(f'context["traceparent"] {value!r} has an all-zero id, which is invalid')
    return tid


@functools.lru_cache(maxsize=1)
def _otel() -> Any:
    """The OpenTelemetry API modules, or None when they are not installed
    (looked for once: a failed import costs a path scan each time)."""
    try:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        return None
    return trace, TraceContextTextMapPropagator()


def with_current_trace(context: MutableMapping[str, str]) -> None:
    """Check an explicit ``traceparent``, or add the current OpenTelemetry
    span's when there is one."""
    explicit = context.get(TRACEPARENT)
    if explicit is not None:
        check_traceparent(explicit)
        return
    otel = _otel()
    if otel is None:
        return
    _trace, propagator = otel
    carrier: dict[str, str] = {}
    propagator.inject(carrier)
    if TRACEPARENT in carrier:
        context[TRACEPARENT] = carrier[TRACEPARENT]
        if carrier.get(TRACESTATE):
            context[TRACESTATE] = carrier[TRACESTATE]


@contextmanager
def task_span(name: str, chain_id: str, task_id: str, attempt: int,
              context: Mapping[str, str]) -> Iterator["Optional[Any]"]:
    """The run's OpenTelemetry span, current inside the block, as a child of
    the chain's ``traceparent`` (yields None without OpenTelemetry)."""
    otel = _otel()
    if otel is None:
        yield None
        return
    trace, propagator = otel
    parent = propagator.extract(dict(context)) if TRACEPARENT in context else None
    tracer = trace.get_tracer("baton-worker")
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind=trace.SpanKind.CONSUMER,
        attributes={"baton.chain_id": chain_id, "baton.task_id": task_id, "baton.attempt": attempt},
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def end_span(span: Optional[Any], outcome: pb.Outcome) -> None:
    """Set the run's span status from its outcome (an error for a failure)."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    kind = outcome.WhichOneof("result")
    if kind == "failure":
        span.set_status(Status(StatusCode.ERROR, f"{outcome.failure.error_type}: {outcome.failure.message}"))
    elif kind == "success":
        span.set_status(Status(StatusCode.OK))
