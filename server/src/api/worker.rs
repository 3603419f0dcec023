//! The worker stream: one bidirectional gRPC stream per worker process.
//!
//! The first message up must be a Hello. The edge then registers the worker
//! with the scheduler, forwards every later message, and turns the
//! scheduler's [`ToWorker`] messages into the stream down. When the stream
//! up ends without a Goodbye, the scheduler hears that the worker is gone
//! (its leases keep running until they lapse or it reconnects).
//!
//! Batches: a worker whose Hello sets `batch_bytes` gets everything that is
//! ready for it at the same moment (a round's acknowledgments and new
//! assignments, say) packed into one `BrokerBatch` frame ([`baton::batch`]); the
//! Welcome tells every worker how large a `WorkerBatch` it may send up. A
//! batch is unpacked here, at the edge: the scheduler sees the same
//! messages as if they came one by one. Acknowledgments alone wait up to
//! [`ACK_HOLD`] for other messages to share their frame (see [`frames`]).
//!
//! Silence: a worker must send something (a Heartbeat when it has nothing
//! else to say; the Welcome suggests every third of the lease) at least
//! once per lease. A stream silent for a whole lease is ended with
//! `DEADLINE_EXCEEDED` saying why, and its worker slot is freed: without
//! this, streams that sent a Hello and then nothing held every slot of
//! `--max-workers` forever (issue 19, item 11). The eviction lives here, at
//! the edge, where the messages arrive; the scheduler only hears that the
//! worker is gone, as for a broken connection.
//!
//! Limits: the hello must come within [`HELLO_WAIT`] and ask for at most
//! `--max-worker-concurrency` assignments at once; the scheduler refuses
//! workers past `--max-workers`. A worker does not set the pace: its
//! messages are forwarded one at a time (a flood waits for the scheduler),
//! and one that does not read its stream is dropped once [`OUTBOUND`]
//! messages wait for it, after which its stream up is not read either.

use std::pin::Pin;
use std::time::Duration;

use baton::pb::{self, broker_message, worker_message};
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::oversize::MessageLimit;
use crate::domain::{
    FromWorker, Leases, Options, RunOutcome, TaskRef, ToWorker, WorkerHello, WorkerId,
};
use crate::scheduler::Handle;

/// Messages buffered towards one worker before it counts as not reading.
const OUTBOUND: usize = 4096;

/// Logs an assignment going down, with its chain's trace id when it has one
/// (the line about its outcome is the scheduler's, which knows the chain).
fn log_assignment(a: &crate::domain::Assignment) {
    tracing::debug!(
        chain.id = %a.chain_id,
        task.id = %a.task.task_id,
        attempt = a.task.attempt,
        trace_id = baton::trace::trace_id_of(
            a.context.get(baton::trace::TRACEPARENT).map(String::as_str)
        )
        .map(tracing::field::display),
        "task assigned"
    );
}

/// How long a new stream may take to send its hello.
const HELLO_WAIT: Duration = Duration::from_secs(10);
/// Most messages taken off a worker's queue for one frame down.
const BATCH_MESSAGES: usize = 512;
/// Longest an outcome acknowledgment waits for company (see [`frames`]).
const ACK_HOLD: Duration = Duration::from_millis(5);

pub struct WorkerService {
    pub handle: Handle,
    pub limits: convert::Limits,
    /// The assignment lease (`--lease-ms`), which is also the longest a
    /// stream may stay silent.
    pub lease: Duration,
    /// What a message over the size limit is told.
    pub message_limit: MessageLimit,
}

type DownStream = Pin<Box<dyn Stream<Item = Result<pb::BrokerMessage, Status>> + Send>>;

/// The hello, checked, and the largest batch the worker reads (0: none).
fn hello(h: pb::Hello, limits: &convert::Limits) -> Result<(WorkerHello, usize), Status> {
    let max = limits.max_worker_concurrency;
    if h.concurrency == 0 || h.concurrency > max {
        return Err(Status::invalid_argument(format!(
            "hello.concurrency is {}: it must be between 1 and {max} (--max-worker-concurrency)",
            h.concurrency
        )));
    }
    if u64::from(h.concurrency) + u64::from(h.prefetch) > u64::from(max) {
        return Err(Status::invalid_argument(format!(
            "hello.prefetch is {}: with hello.concurrency {} it makes more than {max} assignments \
             at once (--max-worker-concurrency)",
            h.prefetch, h.concurrency
        )));
    }
    let queues = if h.queues.is_empty() {
        vec![crate::domain::GENERAL_QUEUE.to_owned()]
    } else {
        h.queues
    };
    for (i, q) in queues.iter().enumerate() {
        convert::check_queue(&format!("hello.queues[{i}]"), q)?;
    }
    if h.tasks.is_empty() {
        return Err(Status::invalid_argument(
            "hello.tasks is empty: register at least one task name",
        ));
    }
    let mut tasks = Vec::with_capacity(h.tasks.len());
    for (i, t) in h.tasks.into_iter().enumerate() {
        convert::check_name(&format!("hello.tasks[{i}].name"), &t.name)?;
        let defaults = t.defaults.unwrap_or_default();
        convert::check_options(&format!("hello.tasks[{i}].defaults"), &defaults)?;
        tasks.push((t.name, Options::from(defaults)));
    }
    let held = h
        .held
        .into_iter()
        .map(|t| convert::task_ref(Some(t)))
        .collect::<Result<_, _>>()?;
    let held_slots = h
        .held_slots
        .into_iter()
        .map(|s| Ok((convert::task_ref(s.task)?, s.request_id)))
        .collect::<Result<_, Status>>()?;
    let batch_bytes = usize::try_from(h.batch_bytes).unwrap_or(usize::MAX);
    Ok((
        WorkerHello {
            held_slots,
            name: h.worker_name,
            queues,
            tasks,
            concurrency: h.concurrency,
            prefetch: h.prefetch,
            held,
        },
        batch_bytes,
    ))
}

/// Decodes a message after the hello. A batch is unpacked by the caller,
/// so here it is one nested too deep.
/// `max_prefetch`: the most a Window may set, given the stream's concurrency.
fn from_worker(msg: worker_message::Msg, max_prefetch: u32) -> Result<FromWorker, Status> {
    Ok(match msg {
        worker_message::Msg::Hello(_) => {
            return Err(Status::invalid_argument(
                "hello: a stream takes one hello, its first message; this one changed nothing \
                 (open a new stream to change queues, tasks or concurrency)",
            ));
        }
        worker_message::Msg::Batch(_) => {
            return Err(Status::invalid_argument(
                "batch.messages holds a batch: batches do not nest",
            ));
        }
        worker_message::Msg::Outcome(o) => {
            let task = convert::task_ref(o.task)?;
            let outcome = match o.result {
                Some(pb::outcome::Result::Success(s)) => {
                    RunOutcome::Success(convert::check_result(&s.result)?)
                }
                Some(pb::outcome::Result::Failure(f)) => RunOutcome::Failure {
                    error_type: if f.error_type.is_empty() {
                        "Error".into()
                    } else {
                        f.error_type
                    },
                    message: f.message,
                    traceback: f.traceback,
                    retryable: f.retryable,
                },
                Some(pb::outcome::Result::RetryLater(r)) => {
                    convert::check_ms("outcome.retry_later.delay_ms", r.delay_ms)?;
                    RunOutcome::RetryLater {
                        delay_ms: r.delay_ms,
                        message: r.message,
                    }
                }
                None => return Err(Status::invalid_argument("outcome.result is missing")),
            };
            FromWorker::Outcome { task, outcome }
        }
        // A heartbeat is never refused: a run it names that this broker
        // never issued (not even a UUID) has no lease to extend, and a
        // heartbeat that names only such runs extends nothing (not all).
        worker_message::Msg::Heartbeat(h) if h.tasks.is_empty() => FromWorker::Heartbeat {
            leases: Leases::All,
        },
        worker_message::Msg::Heartbeat(h) => FromWorker::Heartbeat {
            leases: Leases::Listed(
                h.tasks
                    .into_iter()
                    .filter_map(|t| convert::task_ref(Some(t)).ok())
                    .collect(),
            ),
        },
        worker_message::Msg::ThrottleAcquire(a) => {
            let throttle = a.throttle.unwrap_or_default();
            convert::check_throttle("throttle_acquire.throttle", &throttle)?;
            FromWorker::Acquire {
                request_id: a.request_id,
                task: convert::task_ref(a.task)?,
                throttle: throttle.into(),
            }
        }
        worker_message::Msg::ThrottleRelease(r) => FromWorker::Release {
            request_id: r.request_id,
            task: convert::task_ref(r.task)?,
        },
        worker_message::Msg::Drain(_) => FromWorker::Drain,
        worker_message::Msg::Goodbye(_) => FromWorker::Goodbye,
        worker_message::Msg::Window(w) => {
            if w.prefetch > max_prefetch {
                return Err(Status::invalid_argument(format!(
                    "window.prefetch is {}: with hello.concurrency it makes more than \
                     --max-worker-concurrency assignments at once (at most {max_prefetch} here); \
                     the window is unchanged",
                    w.prefetch
                )));
            }
            let give_back = w
                .give_back
                .into_iter()
                .enumerate()
                .map(|(i, t)| {
                    convert::task_ref(Some(t)).map_err(|e| {
                        Status::invalid_argument(format!("window.give_back[{i}]: {}", e.message()))
                    })
                })
                .collect::<Result<_, _>>()?;
            FromWorker::Window {
                prefetch: w.prefetch,
                give_back,
            }
        }
    })
}

/// What a message up is about, as the worker sent it: its request id (a
/// throttle request's; 0 for the others) and the run it names, if any.
/// A refusal carries both back, whatever else is wrong with the message,
/// so the worker knows which of its requests or runs was refused (a run
/// named by something that is not a task id is not named back).
fn subject(msg: &worker_message::Msg) -> (u64, Option<TaskRef>) {
    let named = |t: &Option<pb::TaskRef>| convert::task_ref(t.clone()).ok();
    match msg {
        worker_message::Msg::Outcome(o) => (0, named(&o.task)),
        worker_message::Msg::ThrottleAcquire(a) => (a.request_id, named(&a.task)),
        worker_message::Msg::ThrottleRelease(r) => (r.request_id, named(&r.task)),
        // A heartbeat names many runs (and is never refused).
        worker_message::Msg::Heartbeat(_)
        | worker_message::Msg::Hello(_)
        | worker_message::Msg::Batch(_)
        | worker_message::Msg::Drain(_)
        | worker_message::Msg::Goodbye(_)
        | worker_message::Msg::Window(_) => (0, None),
    }
}

/// The messages for a worker that reads batches, grouped into what goes down
/// together: everything waiting when the stream is polled, except that
/// outcome acknowledgments alone wait up to [`ACK_HOLD`] for company.
///
/// Why: a worker that turns over short tasks reports a group of outcomes,
/// and the broker answers with the next assignments at once (early
/// assignments, see the scheduler's `Unsettled`) but with the
/// acknowledgments only once the outcomes are durable, a flush later. Sent
/// as they come, that is two frames per group where one used to do, and a
/// frame read costs a Python worker far more than the messages in it. An
/// acknowledgment has no hurry (the worker only forgets its copy of the
/// outcome), so it rides with the next group of assignments, or leaves when
/// the hold is up.
fn frames(rx: mpsc::Receiver<ToWorker>) -> impl Stream<Item = Vec<ToWorker>> {
    futures::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        let mut chunk = vec![rx.recv().await?];
        let hold = tokio::time::Instant::now() + ACK_HOLD;
        loop {
            while chunk.len() < BATCH_MESSAGES {
                match rx.try_recv() {
                    Ok(m) => chunk.push(m),
                    Err(_) => break,
                }
            }
            let only_acks = chunk.iter().all(|m| matches!(m, ToWorker::Ack { .. }));
            if !only_acks || chunk.len() >= BATCH_MESSAGES {
                return Some((chunk, Some(rx)));
            }
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => chunk.push(m),
                    // The scheduler let go: what is held still goes.
                    None => return Some((chunk, None)),
                },
                () = tokio::time::sleep_until(hold) => return Some((chunk, Some(rx))),
            }
        }
    })
}

/// The message down; `batch_bytes` is the largest batch this broker reads
/// up, told in the Welcome.
fn to_pb(msg: ToWorker, batch_bytes: u64) -> pb::BrokerMessage {
    let msg = match msg {
        ToWorker::Welcome {
            worker_id,
            lease_ms,
            kept,
            lost,
        } => broker_message::Msg::Welcome(pb::Welcome {
            worker_id: worker_id.to_string(),
            lease_ms,
            heartbeat_interval_ms: (lease_ms / 3).max(1),
            kept: kept.into_iter().map(convert::pb_task_ref).collect(),
            lost: lost.into_iter().map(convert::pb_task_ref).collect(),
            batch_bytes,
        }),
        ToWorker::Assign(a) => {
            log_assignment(&a);
            broker_message::Msg::Assignment(pb::Assignment {
                task: Some(convert::pb_task_ref(a.task)),
                chain_id: a.chain_id.to_string(),
                phase: a.at.phase as i32,
                step_index: u32::try_from(a.at.index).unwrap_or(u32::MAX),
                name: a.name,
                args: a.args,
                kwargs: a.kwargs,
                context: a.context.into_iter().collect(),
                queue: a.queue,
                lease_deadline_unix_ms: a.lease_deadline_ms,
                timeout_ms: a.timeout_ms,
                polls: a.polls,
                retries: a.retries,
            })
        }
        ToWorker::Cancel { task, reason } => broker_message::Msg::Cancel(pb::Cancel {
            task: Some(convert::pb_task_ref(task)),
            reason,
        }),
        ToWorker::Ack {
            task,
            accepted,
            reason,
        } => broker_message::Msg::OutcomeAck(pb::OutcomeAck {
            task: Some(convert::pb_task_ref(task)),
            accepted,
            reason,
        }),
        ToWorker::Granted { request_id } => {
            broker_message::Msg::ThrottleGranted(pb::ThrottleGranted { request_id })
        }
        ToWorker::Error {
            request_id,
            task,
            message,
        } => broker_message::Msg::Error(pb::WorkerError {
            request_id,
            task: task.map(convert::pb_task_ref),
            message,
        }),
    };
    pb::BrokerMessage { msg: Some(msg) }
}

/// The stream up's side of a session: hands the worker's messages to the
/// scheduler and answers a malformed one with a `WorkerError`.
struct UpLink {
    handle: Handle,
    worker_id: WorkerId,
    tx: mpsc::WeakSender<ToWorker>,
    /// The most prefetch a Window may set: --max-worker-concurrency less
    /// the stream's concurrency.
    max_prefetch: u32,
}

impl UpLink {
    /// Forwards one message.
    async fn forward(&self, msg: worker_message::Msg) -> Next {
        let (request_id, task) = subject(&msg);
        match from_worker(msg, self.max_prefetch) {
            Ok(m) => {
                let goodbye = m == FromWorker::Goodbye;
                match self.handle.from_worker(self.worker_id, m).await {
                    Err(_) => Next::Stop,
                    Ok(()) if goodbye => Next::Goodbye,
                    Ok(()) => Next::Continue,
                }
            }
            Err(status) => {
                // A malformed message is refused, naming the request and the
                // run it was about, so the worker can fail what waits for
                // it; the stream stays.
                let error = ToWorker::Error {
                    request_id,
                    task,
                    message: status.message().to_owned(),
                };
                match self.tx.upgrade() {
                    Some(tx) if tx.try_send(error).is_ok() => Next::Continue,
                    _ => Next::Stop,
                }
            }
        }
    }

    /// Forwards a batch's messages in order, as if they came one by one.
    async fn forward_all(&self, messages: Vec<pb::WorkerMessage>) -> Next {
        for msg in messages.into_iter().filter_map(|m| m.msg) {
            let next = self.forward(msg).await;
            if !matches!(next, Next::Continue) {
                return next;
            }
        }
        Next::Continue
    }
}

/// The stream down, ended early with the session's reason when the stream
/// up's task sends one (a silent worker, a message over the limit). It
/// still ends as soon as the scheduler lets go of the worker, whatever the
/// stream up does.
fn ending_with(down: DownStream, end: tokio::sync::oneshot::Receiver<Status>) -> DownStream {
    /// What the stream does next: with `end` gone, it is the stream down
    /// alone; `done` once the reason was sent.
    struct State {
        down: DownStream,
        end: Option<tokio::sync::oneshot::Receiver<Status>>,
        done: bool,
    }
    let state = State {
        down,
        end: Some(end),
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        if state.done {
            return None;
        }
        while let Some(why) = state.end.as_mut() {
            tokio::select! {
                biased;
                why = why => match why {
                    Ok(status) => {
                        state.done = true;
                        return Some((Err(status), state));
                    }
                    // The stream up ended without a reason.
                    Err(_) => state.end = None,
                },
                item = state.down.next() => return item.map(|item| (item, state)),
            }
        }
        let item = state.down.next().await;
        item.map(|item| (item, state))
    }))
}

/// How long a worker stream has been silent. A message up resets it; a
/// whole lease without one ends the stream (see the module doc).
///
/// One timer per lease, not one per message: a message only notes the
/// time, and the timer, when it fires early, waits again for the rest.
struct Silence {
    lease: Duration,
    last_heard: tokio::time::Instant,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Silence {
    fn new(lease: Duration) -> Self {
        let now = tokio::time::Instant::now();
        Silence {
            lease,
            last_heard: now,
            timer: Box::pin(tokio::time::sleep_until(now + lease)),
        }
    }

    fn heard(&mut self) {
        self.last_heard = tokio::time::Instant::now();
    }

    /// Completes once a whole lease passed without a message.
    async fn lasted(&mut self) {
        loop {
            self.timer.as_mut().await;
            let deadline = self.last_heard + self.lease;
            if deadline <= tokio::time::Instant::now() {
                return;
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    /// What the worker is told.
    fn status(&self) -> Status {
        Status::deadline_exceeded(format!(
            "this worker stream sent nothing for {} ms, the broker's lease (--lease-ms): a worker \
             must send a message, a Heartbeat when idle, at least every \
             Welcome.heartbeat_interval_ms; the stream is ended and its worker slot freed \
             (reconnect to go on)",
            self.lease.as_millis()
        ))
    }
}

/// What the session does after a message up.
enum Next {
    Continue,
    /// The scheduler is gone, or the worker cannot be answered.
    Stop,
    /// The worker said Goodbye: it leaves cleanly, its runs released.
    Goodbye,
}

#[tonic::async_trait]
impl pb::worker_server::Worker for WorkerService {
    type SessionStream = DownStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = crate::auth::Caller::of(&request)?;
        let mut up = request.into_inner();
        let first = tokio::time::timeout(HELLO_WAIT, up.message())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "no hello within {} s: a worker stream must open with one",
                    HELLO_WAIT.as_secs()
                ))
            })??
            .and_then(|m| m.msg)
            .ok_or_else(|| Status::invalid_argument("the stream ended before a hello"))?;
        let worker_message::Msg::Hello(h) = first else {
            return Err(Status::invalid_argument(
                "the first message must be a hello",
            ));
        };
        let (hello, batch_down) = hello(h, &self.limits)?;
        caller.check_queues(&hello.queues)?;
        let max_prefetch = self.limits.max_worker_concurrency - hello.concurrency;
        let batch_up = u64::try_from(self.limits.max_payload_bytes).unwrap_or(u64::MAX);
        let (tx, rx) = mpsc::channel(OUTBOUND);
        let worker_id = self.handle.connect(hello, tx.clone()).await?;
        let up_link = UpLink {
            handle: self.handle.clone(),
            worker_id,
            // Weak, so that the stream down ends as soon as the scheduler
            // lets go of the worker (shutdown, or a worker that does not read).
            tx: tx.downgrade(),
            max_prefetch,
        };
        // And once the stream down is gone (ended, or its client went
        // away), the stream up is read no more: a worker the scheduler
        // dropped cannot keep a session open by writing only.
        let down_gone = tokio_util::sync::CancellationToken::new();
        let down_guard = down_gone.clone().drop_guard();
        // Why the session ended, when the worker should hear it: the stream
        // down ends with this status.
        let (end_tx, end_rx) = tokio::sync::oneshot::channel::<Status>();
        let lease = self.lease;
        let message_limit = self.message_limit.clone();
        let span = tracing::info_span!("worker", worker.id = %worker_id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let mut clean = false;
                let mut silence = Silence::new(lease);
                loop {
                    // Biased: a message that waits wins over the timer, so
                    // a worker is never evicted while the broker was busy
                    // forwarding what it sent before.
                    let next = tokio::select! {
                        biased;
                        next = up.message() => next,
                        () = down_gone.cancelled() => break,
                        () = silence.lasted() => {
                            tracing::info!(lease_ms = lease.as_millis(), "silent worker stream ended");
                            let _ = end_tx.send(silence.status());
                            break;
                        }
                    };
                    let msg = match next {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(cause = %e, "worker stream broke");
                            // A message over the limit: say which limit.
                            if let Some(status) = message_limit.rewrite_status(&e) {
                                let _ = end_tx.send(status);
                            }
                            break;
                        }
                    };
                    let flow = match msg.msg {
                        None => Next::Continue,
                        Some(worker_message::Msg::Batch(batch)) => {
                            up_link.forward_all(batch.messages).await
                        }
                        Some(msg) => up_link.forward(msg).await,
                    };
                    // Silence counts from here: the time spent forwarding
                    // (a busy scheduler) is not the worker's.
                    silence.heard();
                    match flow {
                        Next::Continue => {}
                        Next::Stop => break,
                        Next::Goodbye => {
                            clean = true;
                            break;
                        }
                    }
                }
                if !clean {
                    up_link.handle.disconnected(up_link.worker_id).await;
                }
            },
            span,
        ));
        let down: DownStream = if batch_down == 0 {
            Box::pin(ReceiverStream::new(rx).map(move |m| {
                let _alive = &down_guard;
                Ok(to_pb(m, batch_up))
            }))
        } else {
            // Whatever waits for the worker when the stream is polled goes
            // down in as few frames as its size allows.
            Box::pin(
                frames(rx)
                    .flat_map(move |chunk| {
                        let _alive = &down_guard;
                        let chunk = chunk.into_iter().map(|m| to_pb(m, batch_up)).collect();
                        futures::stream::iter(baton::batch::pack(chunk, batch_down))
                    })
                    .map(Ok),
            )
        };
        // It ends with the session's reason, if it has one.
        Ok(Response::new(ending_with(down, end_rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(n: u32) -> ToWorker {
        ToWorker::Ack {
            task: TaskRef {
                task_id: crate::domain::TaskId::from_u128(7),
                attempt: n,
            },
            accepted: true,
            reason: String::new(),
        }
    }

    fn granted(request_id: u64) -> ToWorker {
        ToWorker::Granted { request_id }
    }

    /// What a chunk holds, in order: "ack" or "grant".
    fn kinds(chunk: &[ToWorker]) -> Vec<&'static str> {
        chunk
            .iter()
            .map(|m| match m {
                ToWorker::Ack { .. } => "ack",
                _ => "grant",
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn acknowledgments_wait_for_company_or_for_the_hold() {
        let (tx, rx) = mpsc::channel(16);
        let mut frames = Box::pin(frames(rx));

        // Acknowledgments alone are held; the next message takes them along.
        tx.send(ack(1)).await.unwrap();
        tx.send(ack(2)).await.unwrap();
        let next = tokio::time::timeout(ACK_HOLD / 2, frames.next()).await;
        assert!(next.is_err(), "held");
        tx.send(granted(7)).await.unwrap();
        let chunk = frames.next().await.expect("a chunk");
        assert_eq!(kinds(&chunk), ["ack", "ack", "grant"]);

        // With nothing else coming, they leave when the hold is up.
        tx.send(ack(3)).await.unwrap();
        let started = tokio::time::Instant::now();
        let chunk = frames.next().await.expect("a chunk");
        assert_eq!(kinds(&chunk), ["ack"]);
        assert_eq!(started.elapsed(), ACK_HOLD);

        // Anything else goes at once, and so does what is held when the
        // scheduler lets go of the worker.
        tx.send(granted(8)).await.unwrap();
        assert_eq!(kinds(&frames.next().await.expect("a chunk")), ["grant"]);
        tx.send(ack(4)).await.unwrap();
        drop(tx);
        assert_eq!(kinds(&frames.next().await.expect("a chunk")), ["ack"]);
        assert!(frames.next().await.is_none());
    }
}
