//! W3C trace context end to end: a chain's `traceparent` and `tracestate`
//! reach every assignment of every step and callback (retries and a
//! requeued copy too), survive a broker restart, and a malformed one is
//! refused with nothing stored.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton::{Chain, ChainOutcome, Task};
use baton_worker::{TaskContext, TaskError};
use common::*;
use serde_json::json;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";

/// What one run saw: (chain id, task name, attempt, traceparent, tracestate).
type Seen = Arc<Mutex<Vec<(String, String, u32, Option<String>, Option<String>)>>>;

fn traced(chain: Chain) -> Chain {
    chain
        .context("traceparent", TRACEPARENT)
        .context("tracestate", TRACESTATE)
}

/// A worker that notes the trace context of every run. `flaky` fails its
/// first attempt (a retry), `broken` always fails.
fn tracing_worker(addr: &str, seen: &Seen) -> TestWorker {
    let body = |seen: Seen| {
        move |ctx: TaskContext| {
            let seen = seen.clone();
            async move {
                seen.lock().unwrap().push((
                    ctx.chain_id.clone(),
                    ctx.name.clone(),
                    ctx.attempt,
                    ctx.context.get("traceparent").cloned(),
                    ctx.context.get("tracestate").cloned(),
                ));
                match ctx.name.as_str() {
                    "t.flaky" if ctx.attempt == 1 => Err(TaskError::retryable("first try fails")),
                    "t.broken" => Err(TaskError::fatal("always fails")),
                    _ => Ok(json!(ctx.name)),
                }
            }
        }
    };
    let mut builder = worker(addr, "tracer").concurrency(4);
    for name in ["t.step", "t.flaky", "t.broken", "t.ok", "t.failed"] {
        builder = builder.task(name, body(seen.clone()));
    }
    TestWorker::spawn(builder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_callback_retry_and_requeue_carries_the_trace_across_a_restart() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let (step, flaky, broken) = (
        Task::new("t.step"),
        Task::new("t.flaky"),
        Task::new("t.broken"),
    );
    let (ok, failed) = (Task::new("t.ok"), Task::new("t.failed"));
    // Submitted with no worker around, so all of it waits through the
    // restart: what reaches the worker came from the store.
    let good = client
        .submit(traced(
            Chain::new([
                step.si(()),
                flaky
                    .si(())
                    .max_retries(2)
                    .retry_backoff(Duration::from_millis(10)),
            ])
            .on_success([ok.si(())])
            .on_failure([failed.si(())]),
        ))
        .await
        .unwrap()
        .chain_id;
    let bad = client
        .submit(traced(
            Chain::new([broken.si(())])
                .on_success([ok.si(())])
                .on_failure([failed.si(())]),
        ))
        .await
        .unwrap()
        .chain_id;
    let dir = broker.dir.clone();
    broker.stop().await;

    let broker = TestBroker::start_in(dir, |_| {}).await;
    let client = broker.client().await;
    let seen = Seen::default();
    let worker = tracing_worker(&broker.addr, &seen);
    assert!(matches!(
        client.wait_timeout(&good, PATIENCE).await.unwrap(),
        ChainOutcome::Succeeded(_)
    ));
    assert!(matches!(
        client.wait_timeout(&bad, PATIENCE).await.unwrap(),
        ChainOutcome::Failed(_)
    ));
    let requeued = client.admin().requeue_chain(&bad).await.unwrap();
    assert!(matches!(
        client.wait_timeout(&requeued, PATIENCE).await.unwrap(),
        ChainOutcome::Failed(_)
    ));
    worker.stop().await;

    let mut runs: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(chain, name, attempt, ..)| {
            let which = if *chain == good {
                "good"
            } else if *chain == bad {
                "bad"
            } else if *chain == requeued {
                "requeued"
            } else {
                "other"
            };
            (which, name.clone(), *attempt)
        })
        .collect();
    runs.sort();
    let want = |which, name: &str, attempt| (which, name.to_owned(), attempt);
    assert_eq!(
        runs,
        vec![
            want("bad", "t.broken", 1),
            want("bad", "t.failed", 1),
            want("good", "t.flaky", 1),
            want("good", "t.flaky", 2),
            want("good", "t.ok", 1),
            want("good", "t.step", 1),
            want("requeued", "t.broken", 1),
            want("requeued", "t.failed", 1),
        ],
        "every step, retry and callback ran once"
    );
    for (chain, name, attempt, traceparent, tracestate) in seen.lock().unwrap().iter() {
        assert_eq!(
            traceparent.as_deref(),
            Some(TRACEPARENT),
            "{name} (attempt {attempt}) of {chain} lost its traceparent"
        );
        assert_eq!(
            tracestate.as_deref(),
            Some(TRACESTATE),
            "{name} (attempt {attempt}) of {chain} lost its tracestate"
        );
    }
    // The chain's record shows it too, so a reader can find the trace.
    let record = client.get(&good).await.unwrap();
    assert_eq!(
        record.context.get("traceparent").map(String::as_str),
        Some(TRACEPARENT)
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_trace_context_is_refused_naming_the_field_and_nothing_is_stored() {
    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let one = || Chain::new([Task::new("t.step").si(())]);
    let bad_parents = [
        "garbage",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ];
    for (i, bad) in bad_parents.iter().enumerate() {
        let err = client
            .submit(
                one()
                    .context("traceparent", *bad)
                    .idempotency_key(format!("k{i}")),
            )
            .await
            .expect_err(bad);
        let status = err.status().expect("a broker status");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
        assert!(
            status.message().contains(r#"context["traceparent"]"#),
            "{bad}: {}",
            status.message()
        );
    }
    let err = client
        .submit(
            one()
                .context("tracestate", "rojo=1")
                .idempotency_key("lonely"),
        )
        .await
        .expect_err("a tracestate alone");
    let status = err.status().expect("a broker status");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains(r#"context["tracestate"]"#));
    let err = client
        .submit(
            traced(one())
                .context("tracestate", "no members here")
                .idempotency_key("state"),
        )
        .await
        .expect_err("a malformed tracestate");
    assert!(
        err.status()
            .unwrap()
            .message()
            .contains(r#"context["tracestate"]"#)
    );

    // Nothing was stored: the same idempotency keys make new chains now,
    // and the broker holds those alone.
    for key in (0..bad_parents.len())
        .map(|i| format!("k{i}"))
        .chain(["lonely".to_owned(), "state".to_owned()])
    {
        let submitted = client
            .submit(traced(one()).idempotency_key(key.clone()))
            .await
            .unwrap();
        assert_eq!(
            submitted.dedup,
            baton::pb::Dedup::Unspecified,
            "{key} was stored by a refused submit"
        );
    }
    broker.stop().await;
}

/// The Rust SDKs with their `opentelemetry` feature: a chain submitted
/// inside a span carries it (no explicit traceparent), and the run's body
/// runs under a span of the same trace; an explicit traceparent wins over
/// the current span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdks_carry_the_current_opentelemetry_span_to_the_run() {
    use opentelemetry::context::FutureExt as _;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    };

    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let noted = seen.clone();
    let worker = TestWorker::spawn(worker(&broker.addr, "otel").task(
        "t.otel",
        move |ctx: TaskContext| {
            let noted = noted.clone();
            async move {
                let current = opentelemetry::Context::current();
                let span_trace = current.span().span_context().trace_id().to_string();
                noted.lock().unwrap().push((
                    ctx.trace_id().map(str::to_owned),
                    ctx.tracestate().map(str::to_owned),
                    span_trace,
                ));
                Ok(json!(null))
            }
        },
    ));

    let submitter = SpanContext::new(
        TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
        SpanId::from_hex("b7ad6b7169203331").unwrap(),
        TraceFlags::SAMPLED,
        false,
        "vendor=abc".parse::<TraceState>().unwrap(),
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(submitter);
    let task = Task::new("t.otel");
    let from_span = async { client.submit(Chain::new([task.si(())])).await }
        .with_context(cx.clone())
        .await
        .unwrap()
        .chain_id;
    let explicit = async {
        client
            .submit(Chain::new([task.si(())]).traceparent(TRACEPARENT))
            .await
    }
    .with_context(cx)
    .await
    .unwrap()
    .chain_id;
    for id in [&from_span, &explicit] {
        client.wait_timeout(id, PATIENCE).await.unwrap();
    }
    worker.stop().await;
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (
                Some("0af7651916cd43dd8448eb211c80319c".to_owned()),
                Some("vendor=abc".to_owned()),
                "0af7651916cd43dd8448eb211c80319c".to_owned()
            ),
            (
                Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
                None,
                "4bf92f3577b34da6a3ce929d0e0e4736".to_owned()
            ),
        ]
    );
    broker.stop().await;
}

/// With an OpenTelemetry SDK installed, each run's span is a child of the
/// submitter's span, named after the task, with an error status when the
/// run failed (and the on_failure callback's span a child too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_run_span_is_a_child_of_the_submitters_span_with_the_runs_status() {
    use opentelemetry::context::FutureExt as _;
    use opentelemetry::trace::{Status, TraceContextExt as _, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let broker = TestBroker::start().await;
    let client = broker.client().await;
    let worker = TestWorker::spawn(
        worker(&broker.addr, "otel-sdk")
            .task("t.span_ok", |_ctx: TaskContext| async { Ok(json!(1)) })
            .task("t.span_fails", |_ctx: TaskContext| async {
                Err(TaskError::fatal("broken on purpose"))
            })
            .task("t.span_cleanup", |_ctx: TaskContext| async {
                Ok(json!(null))
            }),
    );
    let submit = provider.tracer("test").start("submit");
    let submit_cx = opentelemetry::Context::new().with_span(submit);
    let parent = submit_cx.span().span_context().clone();
    let id = async {
        client
            .submit(
                Chain::new([
                    Task::new("t.span_ok").si(()),
                    Task::new("t.span_fails").si(()),
                ])
                .on_failure([Task::new("t.span_cleanup").si(())]),
            )
            .await
    }
    .with_context(submit_cx)
    .await
    .unwrap()
    .chain_id;
    assert!(matches!(
        client.wait_timeout(&id, PATIENCE).await.unwrap(),
        ChainOutcome::Failed(_)
    ));
    worker.stop().await;
    broker.stop().await;

    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    for (name, want_error) in [
        ("t.span_ok", false),
        ("t.span_fails", true),
        ("t.span_cleanup", false),
    ] {
        let span = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span for {name}: {spans:?}"));
        assert_eq!(span.span_context.trace_id(), parent.trace_id(), "{name}");
        assert_eq!(span.parent_span_id, parent.span_id(), "{name}");
        assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Consumer);
        match &span.status {
            Status::Error { description } => {
                assert!(want_error, "{name} has an error status");
                assert!(description.contains("broken on purpose"), "{description}");
            }
            Status::Ok => assert!(!want_error, "{name} has no error status"),
            Status::Unset => panic!("{name} ended with no status"),
        }
    }
}
