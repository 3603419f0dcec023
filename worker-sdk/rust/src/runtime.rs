//! The session runtime: one task that owns the stream to the broker and
//! the [`Ledger`], and drives a worker's whole life. It connects and greets
//! (Hello, Welcome), serves (assignments, cancels, acknowledgments, grants,
//! heartbeats), reconnects with backoff when the stream breaks, and drains
//! on shutdown (Drain, wait for the runs and their acknowledgments,
//! Goodbye).
//!
//! State has one owner. Task bodies run in their own tokio tasks and reach
//! the runtime only through [`Event`]s on an unbounded channel (a slot
//! guard's `Drop` must post without waiting); the runtime is the only
//! writer of the stream. A message meant for the broker while no stream is
//! up is not queued: the ledger remembers what matters (outcomes, pending
//! throttle requests) and the next Welcome re-sends it.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use baton::pb::{self, worker_message::Msg};
use futures::FutureExt;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tonic::Streaming;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::context::TaskContext;
use crate::error::Error;
use crate::error_type::NOT_REGISTERED;
use crate::ledger::{GrantReply, Ledger, LinkId, RunId};
use crate::link::{Backoff, Broken, Disconnect, Link, goodbye, greet};
use crate::outcome::{RunEnd, TaskError, panic_message};
use crate::worker::{Config, Handler};
use baton::failover::{Brokers, Next, Refusal};

/// How long a connection may take to produce a Welcome.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat period when the broker suggests none and announces no lease.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// What task bodies and their guards tell the runtime.
#[derive(Debug)]
pub(crate) enum Event {
    /// A run's body returned, panicked or was aborted.
    Finished {
        task: pb::TaskRef,
        run: RunId,
        end: RunEnd,
    },
    /// A body asks for an in-body throttle slot.
    Acquire {
        request: pb::ThrottleAcquire,
        granted: GrantReply,
    },
    /// A slot guard was dropped (before or after its grant).
    Release { request_id: u64 },
}

/// The runtime's inbox.
pub(crate) type Events = mpsc::UnboundedSender<Event>;

/// What a connection attempt gave.
enum Connected {
    /// Welcomed; the inbound stream is boxed, being much larger than the
    /// other variants.
    Yes(Link, Box<Streaming<pb::BrokerMessage>>),
    No(Disconnect),
    /// The worker drained while connecting.
    Done,
}

/// How serving a connection ended.
enum Served {
    Broken(Disconnect),
    /// Drained and said goodbye.
    Done,
}

/// See the module documentation.
pub(crate) struct Runtime {
    config: Config,
    /// Bounds the bodies running at once to `config.concurrency`.
    semaphore: Arc<Semaphore>,
    /// Whether a welcomed stream is up. A run starts only then: one that
    /// has not started when the stream breaks (prefetched) waits, because
    /// the broker may not hold it any more (a broker killed before its
    /// assignment was durable forgets it, and the next Welcome says it is
    /// lost); run anyway, it could run twice.
    connected: watch::Sender<bool>,
    /// Cloned into every run and context; never closed while the runtime
    /// lives, since it holds this sender.
    events_tx: Events,
    events: mpsc::UnboundedReceiver<Event>,
    ledger: Ledger,
    /// Lease length from the last Welcome; `None` when the broker gave none.
    lease: Option<Duration>,
    /// Heartbeat period from the last Welcome.
    heartbeat_every: Duration,
    /// Set once shutdown fired: runs still going then are aborted.
    drain_deadline: Option<Instant>,
    /// Id of the last link opened.
    last_link: LinkId,
    /// Which broker to try next: the leader among several
    /// ([`baton::failover`]).
    brokers: Brokers,
}

impl Runtime {
    pub(crate) fn new(config: Config) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        let brokers = Brokers::new(config.addresses.clone())
            .unwrap_or_else(|| unreachable!("the builder checks for one address at least"));
        Self {
            brokers,
            semaphore: Arc::new(Semaphore::new(permits(config.concurrency))),
            connected: watch::Sender::new(false),
            config,
            events_tx,
            events,
            ledger: Ledger::default(),
            lease: None,
            heartbeat_every: DEFAULT_HEARTBEAT,
            drain_deadline: None,
            last_link: 0,
        }
    }

    /// Connects, serves and reconnects until drained (see
    /// [`Worker::run_until`](crate::Worker::run_until)).
    pub(crate) async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let mut shutdown = pin!(shutdown);
        let mut backoff = Backoff::default();
        // Before a first Welcome, a failure is not a lost connection: say
        // so, with the address, so that a wrong one is told from a restart.
        let mut ever_connected = false;
        // The first pause of an outage is logged as a warning; later short
        // ones (a standby polled during a failover) are not.
        let mut first_pause = true;
        let result = loop {
            let cause = match self.connect(shutdown.as_mut()).await {
                Ok(Connected::Yes(link, inbound)) => {
                    ever_connected = true;
                    backoff.reset();
                    self.brokers.succeeded();
                    first_pause = true;
                    let served = self.serve(link, *inbound, shutdown.as_mut()).await;
                    self.connected.send_replace(false);
                    match served {
                        Ok(Served::Done) => break Ok(()),
                        Ok(Served::Broken(cause)) => cause,
                        Err(error) => break Err(error),
                    }
                }
                Ok(Connected::No(cause)) => cause,
                Ok(Connected::Done) => break Ok(()),
                Err(error) => break Err(error),
            };
            let broker = self.brokers.current().to_owned();
            let refusal = match &cause {
                Disconnect::Status(status) => Refusal::of(status),
                _ => Refusal::default(),
            };
            let delay = match self.brokers.failed(&refusal) {
                Next::Now => {
                    debug!(
                        %broker,
                        cause = %error_chain(&cause),
                        next = %self.brokers.current(),
                        "broker unavailable; trying the next one"
                    );
                    continue;
                }
                // A standby takes over within its lease: ask again soon.
                Next::Pause { standby: true } => {
                    debug!(
                        %broker,
                        cause = %error_chain(&cause),
                        "no leader yet, a standby answered; asking again soon"
                    );
                    crate::link::BACKOFF_FIRST
                }
                Next::Pause { standby: false } => backoff.next(),
            };
            if delay == crate::link::BACKOFF_FIRST && !first_pause {
                // Said already, in this outage.
            } else if ever_connected {
                warn!(
                    %broker,
                    cause = %error_chain(&cause),
                    retry_in_ms = delay.as_millis(),
                    runs = self.ledger.len(),
                    "connection to the broker lost; reconnecting"
                );
            } else {
                warn!(
                    %broker,
                    cause = %error_chain(&cause),
                    retry_in_ms = delay.as_millis(),
                    "could not connect to the broker, never connected; retrying"
                );
            }
            first_pause = false;
            if self
                .alongside(sleep(delay), None, shutdown.as_mut())
                .await
                .is_none()
            {
                break Ok(());
            }
        };
        let aborted = self.ledger.abort_all();
        if aborted > 0 {
            warn!(
                aborted,
                "worker stopped with runs still held; they were aborted"
            );
        }
        result
    }

    /// Opens a stream, sends Hello and waits for Welcome, while keeping the
    /// ledger current.
    async fn connect<S: Future<Output = ()>>(
        &mut self,
        mut shutdown: Pin<&mut S>,
    ) -> Result<Connected, Error> {
        let endpoint = match self.config.endpoint(self.brokers.current()) {
            Ok(endpoint) => endpoint,
            // A leader's address, named by a standby, that is no endpoint.
            Err(cause) => return Ok(Connected::No(Disconnect::Connect(cause))),
        };
        let connecting = async move { endpoint.connect().await };
        let channel = match self.alongside(connecting, None, shutdown.as_mut()).await {
            None => return Ok(Connected::Done),
            Some(Err(cause)) => return Ok(Connected::No(Disconnect::Connect(cause))),
            Some(Ok(channel)) => channel,
        };
        // Record every run that ended meanwhile before describing them.
        while let Ok(event) = self.events.try_recv() {
            self.on_event(event, None);
        }
        self.expire_leases();
        if self.drained() {
            return Ok(Connected::Done);
        }
        self.last_link += 1;
        let (link, outbound) = Link::new(self.last_link);
        link.send(Msg::Hello(self.hello()));
        // Once the Hello is out the handshake is completed even if the
        // drain ends meanwhile, so the session closes with a Goodbye (which
        // hands back at once whatever the broker assigned before our Drain).
        let greeting = timeout(
            HANDSHAKE_TIMEOUT,
            greet(channel, self.config.authorization.clone(), outbound),
        );
        match self.alongside(greeting, Some(&link), shutdown).await {
            None => Ok(Connected::Done),
            Some(Err(_elapsed)) => Ok(Connected::No(Disconnect::Timeout(HANDSHAKE_TIMEOUT))),
            Some(Ok(Err(Broken::Transient(cause)))) => Ok(Connected::No(cause)),
            Some(Ok(Err(Broken::Fatal(error)))) => Err(error),
            Some(Ok(Ok((welcome, inbound)))) => {
                self.welcome(&link, welcome);
                Ok(Connected::Yes(link, Box::new(inbound)))
            }
        }
    }

    /// The Hello describing this worker and what it still holds.
    fn hello(&self) -> pb::Hello {
        let (held, held_slots) = self.ledger.held();
        pb::Hello {
            worker_name: self.config.name.clone(),
            queues: self.config.queues.clone(),
            tasks: self
                .config
                .tasks
                .iter()
                .map(|(name, registered)| pb::TaskDefinition {
                    name: name.clone(),
                    defaults: registered.defaults.clone(),
                })
                .collect(),
            concurrency: self.config.concurrency,
            prefetch: self.config.prefetch,
            held,
            held_slots,
            batch_bytes: crate::link::BATCH_BYTES_DOWN,
        }
    }

    /// Applies a Welcome: lease and heartbeat period, kept and lost runs,
    /// and what the new link must carry.
    fn welcome(&mut self, link: &Link, welcome: pb::Welcome) {
        self.lease = (welcome.lease_ms > 0).then(|| Duration::from_millis(welcome.lease_ms));
        self.heartbeat_every = heartbeat_period(welcome.heartbeat_interval_ms, self.lease);
        let leased_until = self.lease.map(|lease| Instant::now() + lease);
        link.allow_batches(welcome.batch_bytes);
        let reconciled = self.ledger.reconcile(&welcome.kept, link.id, leased_until);
        info!(
            worker.id = %welcome.worker_id,
            lease_ms = welcome.lease_ms,
            heartbeat_ms = self.heartbeat_every.as_millis(),
            kept = welcome.kept.len(),
            lost = reconciled.lost.len(),
            "connected to the broker"
        );
        for task in &reconciled.lost {
            warn!(
                task.id = %task.task_id,
                task.attempt = task.attempt,
                "run lost across the reconnect; aborted"
            );
        }
        for msg in reconciled.resend {
            link.send(msg);
        }
        // The lost runs are aborted: the kept ones that wait may start.
        self.connected.send_replace(true);
        if self.drain_deadline.is_some() {
            link.send(Msg::Drain(pb::Drain {}));
        }
    }

    /// Serves one welcomed connection until it breaks or the worker drained.
    async fn serve<S: Future<Output = ()>>(
        &mut self,
        link: Link,
        mut inbound: Streaming<pb::BrokerMessage>,
        mut shutdown: Pin<&mut S>,
    ) -> Result<Served, Error> {
        let mut heartbeat = tokio::time::interval(self.heartbeat_every);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if self.drained() {
                goodbye(link, inbound).await;
                return Ok(Served::Done);
            }
            let drain_deadline = self.drain_deadline;
            tokio::select! {
                message = inbound.message() => match message {
                    Ok(Some(message)) => self.on_broker_message(message, &link),
                    Ok(None) => return Ok(Served::Broken(Disconnect::Closed)),
                    Err(status) => match Broken::from(status) {
                        Broken::Transient(cause) => return Ok(Served::Broken(cause)),
                        Broken::Fatal(error) => return Err(error),
                    },
                },
                Some(event) = self.events.recv() => self.on_event(event, Some(&link)),
                _ = heartbeat.tick() => self.heartbeat(&link),
                () = shutdown.as_mut(), if drain_deadline.is_none() => {
                    self.begin_drain(Some(&link));
                }
                () = sleep_until(drain_deadline.unwrap_or_else(Instant::now)),
                    if drain_deadline.is_some() => self.drain_timed_out(),
            }
        }
    }

    /// Drives `work` (connecting, greeting, a backoff pause) while no
    /// welcomed stream is being served: events are handled (and sent on
    /// `link`, the connection being greeted, if any), shutdown starts the
    /// drain and the drain deadline is enforced. With no link, leases
    /// expire, and `None` is returned as soon as the worker has drained.
    async fn alongside<T, S: Future<Output = ()>>(
        &mut self,
        work: impl Future<Output = T>,
        link: Option<&Link>,
        mut shutdown: Pin<&mut S>,
    ) -> Option<T> {
        let mut work = pin!(work);
        loop {
            if link.is_none() && self.drained() {
                return None;
            }
            let drain_deadline = self.drain_deadline;
            let expiry = if link.is_none() {
                self.ledger.next_expiry()
            } else {
                None
            };
            tokio::select! {
                out = &mut work => return Some(out),
                Some(event) = self.events.recv() => self.on_event(event, link),
                // The link is not welcomed yet: Welcome sends the Drain.
                () = shutdown.as_mut(), if drain_deadline.is_none() => self.begin_drain(None),
                () = sleep_until(drain_deadline.unwrap_or_else(Instant::now)),
                    if drain_deadline.is_some() => self.drain_timed_out(),
                () = sleep_until(expiry.unwrap_or_else(Instant::now)),
                    if expiry.is_some() => self.expire_leases(),
            }
        }
    }

    fn on_broker_message(&mut self, message: pb::BrokerMessage, link: &Link) {
        use pb::broker_message::Msg as Down;
        match message.msg {
            Some(Down::Batch(batch)) => {
                for message in batch.messages {
                    if matches!(message.msg, Some(Down::Batch(_) | Down::Welcome(_))) {
                        warn!("a batch nested in a batch, or a Welcome in one, ignored");
                        continue;
                    }
                    self.on_broker_message(message, link);
                }
            }
            Some(Down::Assignment(assignment)) => self.start_run(assignment),
            Some(Down::Cancel(cancel)) => {
                let task = cancel.task.unwrap_or_default();
                if self.ledger.cancel(&task, cancel.reason.clone()) {
                    info!(
                        task.id = %task.task_id,
                        task.attempt = task.attempt,
                        reason = %cancel.reason,
                        "cancelling run"
                    );
                } else {
                    debug!(
                        task.id = %task.task_id,
                        task.attempt = task.attempt,
                        "cancel for a run not running here"
                    );
                }
            }
            Some(Down::OutcomeAck(ack)) => {
                let task = ack.task.unwrap_or_default();
                if !ack.accepted {
                    warn!(
                        task.id = %task.task_id,
                        task.attempt = task.attempt,
                        reason = %ack.reason,
                        "outcome rejected by the broker"
                    );
                }
                if !self.ledger.acknowledged(&task) {
                    debug!(
                        task.id = %task.task_id,
                        task.attempt = task.attempt,
                        "acknowledgment of no pending outcome"
                    );
                }
            }
            Some(Down::ThrottleGranted(grant)) => {
                if let Some(release) = self.ledger.granted(grant.request_id, link.id) {
                    debug!(
                        request_id = grant.request_id,
                        "slot granted after its request was abandoned; releasing"
                    );
                    link.send(Msg::ThrottleRelease(release));
                }
            }
            Some(Down::Error(error)) => {
                let task = error.task.unwrap_or_default();
                warn!(
                    request_id = error.request_id,
                    task.id = %task.task_id,
                    task.attempt = task.attempt,
                    message = %error.message,
                    "the broker refused a request"
                );
                self.ledger.refused(error.request_id, &error.message);
            }
            Some(Down::Welcome(_)) => warn!("unexpected second Welcome ignored"),
            None => warn!("empty or unknown broker message ignored"),
        }
    }

    /// Records an assignment and starts its body in a task of its own.
    fn start_run(&mut self, assignment: pb::Assignment) {
        let Some(task) = assignment.task.clone() else {
            warn!(name = %assignment.name, "assignment without a task ref ignored");
            return;
        };
        let cancel = CancellationToken::new();
        let leased_until = self.lease.map(|lease| Instant::now() + lease);
        let Some(run) = self
            .ledger
            .start(task.clone(), cancel.clone(), leased_until)
        else {
            warn!(
                task.id = %task.task_id,
                task.attempt = task.attempt,
                "duplicate assignment ignored"
            );
            return;
        };
        if self.drain_deadline.is_some() {
            // The broker sent it before it saw our Drain: it is ours to run.
            info!(task.id = %task.task_id, "assignment arrived while draining; running it");
        }
        let window = self
            .semaphore_size()
            .saturating_add(permits(self.config.prefetch));
        if self.ledger.running() > window {
            // The broker should never do this; the semaphore still holds.
            warn!(
                task.id = %task.task_id,
                "assignment beyond the free concurrency and prefetch; it waits for a slot"
            );
        }
        let span = info_span!(
            "run",
            task.id = %task.task_id,
            task.attempt = task.attempt,
            task.name = %assignment.name
        );
        let prepared = match self.config.tasks.get(&assignment.name) {
            None => Err(TaskError::fatal_of(
                NOT_REGISTERED,
                format!("no task body registered as {:?}", assignment.name),
            )),
            Some(registered) => {
                TaskContext::from_assignment(assignment, task.clone(), self.events_tx.clone())
                    .map(|ctx| (Arc::clone(&registered.handler), ctx))
            }
        };
        match prepared {
            Ok((handler, ctx)) => {
                let gate = Gate {
                    slots: Arc::clone(&self.semaphore),
                    connected: self.connected.subscribe(),
                };
                let body = drive(handler, ctx, cancel, gate);
                let events = self.events_tx.clone();
                tokio::spawn(
                    async move {
                        let end = body.await;
                        // The runtime outlives every run it tracks; once it
                        // is gone nobody wants the end.
                        let _ = events.send(Event::Finished { task, run, end });
                    }
                    .instrument(span),
                );
            }
            Err(error) => {
                let _ = self.events_tx.send(Event::Finished {
                    task,
                    run,
                    end: RunEnd::Returned(Err(error)),
                });
            }
        }
    }

    /// Handles what runs and guards report; messages go on `link` if any.
    fn on_event(&mut self, event: Event, link: Option<&Link>) {
        let link_id = link.map(|link| link.id);
        match event {
            Event::Finished { task, run, end } => {
                match self.ledger.finish(&task, run, end, link_id) {
                    Some(outcome) => {
                        info!(
                            task.id = %task.task_id,
                            task.attempt = task.attempt,
                            outcome = describe(&outcome),
                            "run ended"
                        );
                        if let Some(link) = link {
                            link.send(Msg::Outcome(outcome));
                        }
                    }
                    None => {
                        debug!(
                            task.id = %task.task_id,
                            "run ended but is no longer ours; outcome dropped"
                        )
                    }
                }
            }
            Event::Acquire { request, granted } => {
                if let Some(request) = self.ledger.request(request, granted, link_id)
                    && let Some(link) = link
                {
                    link.send(Msg::ThrottleAcquire(request));
                }
            }
            Event::Release { request_id } => {
                if let Some(release) = self.ledger.release(request_id, link_id)
                    && let Some(link) = link
                {
                    link.send(Msg::ThrottleRelease(release));
                }
            }
        }
    }

    /// Extends every lease: an empty Heartbeat covers all of the stream's
    /// assignments.
    fn heartbeat(&mut self, link: &Link) {
        link.send(Msg::Heartbeat(pb::Heartbeat { tasks: Vec::new() }));
        if let Some(lease) = self.lease {
            self.ledger.extend_leases(Instant::now() + lease);
        }
    }

    fn begin_drain(&mut self, link: Option<&Link>) {
        self.drain_deadline = Some(Instant::now() + self.config.drain_timeout);
        info!(
            runs = self.ledger.len(),
            timeout_ms = self.config.drain_timeout.as_millis(),
            "draining"
        );
        if let Some(link) = link {
            link.send(Msg::Drain(pb::Drain {}));
        }
    }

    fn drain_timed_out(&mut self) {
        let aborted = self.ledger.abort_all();
        warn!(aborted, "drain timeout passed; remaining runs aborted");
    }

    /// How many bodies may run at once.
    fn semaphore_size(&self) -> usize {
        permits(self.config.concurrency)
    }

    /// Whether the worker is draining and holds nothing any more.
    fn drained(&self) -> bool {
        self.drain_deadline.is_some() && self.ledger.is_empty()
    }

    /// Aborts the runs whose local lease lapsed (while disconnected, the
    /// broker has taken them back).
    fn expire_leases(&mut self) {
        for task in self.ledger.expire(Instant::now()) {
            warn!(
                task.id = %task.task_id,
                task.attempt = task.attempt,
                "lease lapsed while disconnected; run aborted"
            );
        }
    }
}

/// What a run waits for before its body starts.
struct Gate {
    /// A concurrency slot.
    slots: Arc<Semaphore>,
    /// A welcomed stream (see [`Runtime::connected`]).
    connected: watch::Receiver<bool>,
}

/// Runs a body once a concurrency slot is free and the worker is
/// connected, turning a panic into [`RunEnd::Panicked`]; cancelling
/// `cancel` drops the body at its next await point. The slot is freed
/// before this returns.
async fn drive(
    handler: Handler,
    ctx: TaskContext,
    cancel: CancellationToken,
    gate: Gate,
) -> RunEnd {
    let Gate {
        slots,
        mut connected,
    } = gate;
    let body = async move {
        let Ok(_permit) = slots.acquire_owned().await else {
            return RunEnd::Aborted; // the semaphore is never closed
        };
        if connected.wait_for(|up| *up).await.is_err() {
            return RunEnd::Aborted; // the runtime is gone
        }
        debug!("run started");
        let span = crate::trace::TaskSpan::start(&ctx);
        let run = span.attach(async move { handler(ctx).await });
        let end = match AssertUnwindSafe(run).catch_unwind().await {
            Ok(result) => RunEnd::Returned(result),
            Err(payload) => RunEnd::Panicked(panic_message(payload.as_ref())),
        };
        span.end(&end);
        end
    };
    tokio::select! {
        biased;
        () = cancel.cancelled() => RunEnd::Aborted,
        end = body => end,
    }
}

/// Semaphore permits for a concurrency (a u32 always fits on 32- and 64-bit
/// targets; saturate elsewhere).
fn permits(concurrency: u32) -> usize {
    usize::try_from(concurrency)
        .unwrap_or(Semaphore::MAX_PERMITS)
        .min(Semaphore::MAX_PERMITS)
}

/// The heartbeat period: the broker's suggestion, else a third of the
/// lease, else [`DEFAULT_HEARTBEAT`]; never zero.
fn heartbeat_period(suggested_ms: u64, lease: Option<Duration>) -> Duration {
    let period = if suggested_ms > 0 {
        Duration::from_millis(suggested_ms)
    } else {
        lease.map_or(DEFAULT_HEARTBEAT, |lease| lease / 3)
    };
    period.max(Duration::from_millis(1))
}

/// An error with its sources, "outer: inner: innermost", for logs (tonic's
/// transport errors say little more than "transport error" on their own).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A short word for an outcome, for logs.
fn describe(outcome: &pb::Outcome) -> &'static str {
    match &outcome.result {
        Some(pb::outcome::Result::Success(_)) => "success",
        Some(pb::outcome::Result::Failure(f)) if f.retryable => "retryable failure",
        Some(pb::outcome::Result::Failure(_)) => "fatal failure",
        Some(pb::outcome::Result::RetryLater(_)) => "retry later",
        None => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_period_falls_back_to_a_third_of_the_lease() {
        assert_eq!(heartbeat_period(250, None), Duration::from_millis(250));
        assert_eq!(
            heartbeat_period(0, Some(Duration::from_secs(30))),
            Duration::from_secs(10)
        );
        assert_eq!(heartbeat_period(0, None), DEFAULT_HEARTBEAT);
        assert_eq!(
            heartbeat_period(0, Some(Duration::ZERO)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn error_chains_name_every_source() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot connect")]
        struct Outer(#[source] std::io::Error);
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(error_chain(&Outer(refused)), "cannot connect: refused");
    }

    #[tokio::test]
    async fn drive_reports_returns_panics_and_aborts() {
        let semaphore = Arc::new(Semaphore::new(1));
        let (_up, connected) = watch::channel(true);
        let gate = || Gate {
            slots: Arc::clone(&semaphore),
            connected: connected.clone(),
        };
        let (events, _rx) = mpsc::unbounded_channel();
        let assignment = pb::Assignment {
            name: "t".into(),
            ..Default::default()
        };
        let ctx = TaskContext::from_assignment(assignment, pb::TaskRef::default(), events).unwrap();

        let ok: Handler = Arc::new(|_| Box::pin(async { Ok(serde_json::json!(1)) }));
        let end = drive(ok, ctx.clone(), CancellationToken::new(), gate()).await;
        assert!(matches!(end, RunEnd::Returned(Ok(_))));

        let panics: Handler = Arc::new(|_| Box::pin(async { panic!("boom") }));
        let end = drive(panics, ctx.clone(), CancellationToken::new(), gate()).await;
        assert!(matches!(end, RunEnd::Panicked(ref m) if m == "boom"));

        let forever: Handler = Arc::new(|_| Box::pin(std::future::pending()));
        let cancel = CancellationToken::new();
        cancel.cancel();
        let end = drive(forever, ctx.clone(), cancel, gate()).await;
        assert!(matches!(end, RunEnd::Aborted));
        assert_eq!(
            semaphore.available_permits(),
            1,
            "every slot was given back"
        );
    }

    #[tokio::test]
    async fn a_run_starts_only_while_connected() {
        let slots = Arc::new(Semaphore::new(1));
        let (up, connected) = watch::channel(false);
        let (events, _rx) = mpsc::unbounded_channel();
        let assignment = pb::Assignment {
            name: "t".into(),
            ..Default::default()
        };
        let ctx = TaskContext::from_assignment(assignment, pb::TaskRef::default(), events).unwrap();
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mark = Arc::clone(&started);
        let body: Handler = Arc::new(move |_| {
            mark.store(true, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Ok(serde_json::json!(1)) })
        });
        let gate = Gate {
            slots: Arc::clone(&slots),
            connected,
        };
        let run = tokio::spawn(drive(body, ctx, CancellationToken::new(), gate));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!started.load(std::sync::atomic::Ordering::SeqCst));
        up.send_replace(true);
        assert!(matches!(run.await.unwrap(), RunEnd::Returned(Ok(_))));
        assert!(started.load(std::sync::atomic::Ordering::SeqCst));
    }
}
