//! A run's OpenTelemetry span (feature `opentelemetry`): started as a
//! child of the chain's W3C `traceparent`, current while the body runs (so
//! the body's own spans and the chains it submits hang under it), and ended
//! with the run's outcome. Without the feature, nothing at all.

use std::future::Future;

use crate::context::TaskContext;
use crate::outcome::RunEnd;

/// The span of one run.
pub(crate) struct TaskSpan {
    #[cfg(feature = "opentelemetry")]
    cx: opentelemetry::Context,
}

#[cfg(feature = "opentelemetry")]
impl TaskSpan {
    /// Starts the run's span (kind consumer, named after the task) under the
    /// chain's trace, or as a root when the chain carries none.
    pub(crate) fn start(ctx: &TaskContext) -> Self {
        use opentelemetry::KeyValue;
        use opentelemetry::trace::{SpanKind, TraceContextExt as _, Tracer as _};
        let parent = ctx
            .traceparent()
            .and_then(|tp| baton::trace::otel::extract(tp, ctx.tracestate()))
            .unwrap_or_default();
        let tracer = opentelemetry::global::tracer("baton-worker");
        let span = tracer
            .span_builder(ctx.name.clone())
            .with_kind(SpanKind::Consumer)
            .with_attributes([
                KeyValue::new("baton.chain_id", ctx.chain_id.clone()),
                KeyValue::new("baton.task_id", ctx.task_id.clone()),
                KeyValue::new("baton.attempt", i64::from(ctx.attempt)),
            ])
            .start_with_context(&tracer, &parent);
        Self {
            cx: parent.with_span(span),
        }
    }

    /// The body, with the run's span current whenever it is polled.
    pub(crate) fn attach<F: Future>(&self, body: F) -> impl Future<Output = F::Output> {
        opentelemetry::context::FutureExt::with_context(body, self.cx.clone())
    }

    /// Ends the span: an error status for a failure or a panic.
    pub(crate) fn end(self, end: &RunEnd) {
        use opentelemetry::trace::{Status, TraceContextExt as _};
        let span = self.cx.span();
        match end {
            RunEnd::Returned(Ok(_)) => span.set_status(Status::Ok),
            RunEnd::Returned(Err(e)) => span.set_status(Status::error(e.to_string())),
            RunEnd::Panicked(message) => {
                span.set_status(Status::error(format!("panicked: {message}")))
            }
            RunEnd::Aborted => span.set_status(Status::error("stopped before the body returned")),
        }
        span.end();
    }
}

#[cfg(not(feature = "opentelemetry"))]
impl TaskSpan {
    pub(crate) fn start(_: &TaskContext) -> Self {
        Self {}
    }

    pub(crate) fn attach<F: Future>(&self, body: F) -> F {
        body
    }

    pub(crate) fn end(self, _: &RunEnd) {}
}
