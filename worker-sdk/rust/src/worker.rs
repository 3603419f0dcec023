//! The public face of the SDK: [`Worker::builder`] collects what a worker
//! offers (task bodies with their default options, queues, concurrency) and
//! checks it once; [`Worker::run_until`] hands the result to the session
//! runtime, which speaks the protocol.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use baton::{ClientOptions, TlsOptions, pb};
use futures::future::BoxFuture;
use serde_json::Value;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Endpoint;

use crate::context::TaskContext;
use crate::error::Error;
use crate::outcome::TaskError;
use crate::runtime::Runtime;

/// How long a drain may take by default before running work is aborted.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The queue a worker takes tasks from when none is given.
pub const DEFAULT_QUEUE: &str = "general";

/// How long one TCP/HTTP2 connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings, so a broker that vanished without closing the connection
/// (power cut, network partition) is noticed and the worker reconnects.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A registered task body: boxed so bodies of different types share one map.
pub(crate) type Handler =
    Arc<dyn Fn(TaskContext) -> BoxFuture<'static, Result<Value, TaskError>> + Send + Sync>;

/// A task name this worker runs.
pub(crate) struct Registered {
    /// Default options sent in Hello.tasks; `None` leaves all to the broker.
    pub(crate) defaults: Option<pb::Options>,
    pub(crate) handler: Handler,
}

/// A validated worker configuration.
pub(crate) struct Config {
    /// The brokers' addresses, in order (at least one, each a valid
    /// endpoint); the runtime follows the leader among them
    /// ([`baton::failover`]).
    pub(crate) addresses: Vec<String>,
    /// TLS settings for every address.
    pub(crate) options: ClientOptions,
    /// `Bearer <token>`, sent when the session opens.
    pub(crate) authorization: Option<AsciiMetadataValue>,
    pub(crate) name: String,
    /// Queues to take tasks from; empty means the broker's default.
    pub(crate) queues: Vec<String>,
    /// At least 1.
    pub(crate) concurrency: u32,
    /// Assignments held beyond `concurrency`, waiting for a slot.
    pub(crate) prefetch: u32,
    /// At least one; sorted by name so Hello is stable.
    pub(crate) tasks: BTreeMap<String, Registered>,
    pub(crate) drain_timeout: Duration,
}

/// A worker process: task bodies by name, ready to serve a broker.
///
/// Build one with [`Worker::builder`], then call [`Worker::run`] or
/// [`Worker::run_until`].
pub struct Worker {
    config: Config,
}

impl Config {
    /// The endpoint of a broker address (one of `addresses`, or a leader a
    /// standby named), with connection timeouts, keep-alive and TLS set.
    pub(crate) fn endpoint(&self, address: &str) -> Result<Endpoint, tonic::transport::Error> {
        endpoint(&self.options, address)
    }
}

fn endpoint(options: &ClientOptions, address: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(options
        .endpoint(address)?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

impl Worker {
    /// Starts describing a worker for the broker at `endpoint`
    /// (e.g. `"http://127.0.0.1:7070"`), or for several brokers sharing one
    /// database, comma-separated (`"h1:7070,h2:7070"`): the worker finds
    /// the leader among them and follows it on failover
    /// (docs/deployment.md, "How clients find the leader").
    pub fn builder(endpoint: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            endpoint: endpoint.into(),
            name: None,
            queues: vec![DEFAULT_QUEUE.to_owned()],
            concurrency: 1,
            prefetch: 0,
            tasks: Vec::new(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            options: ClientOptions::new(),
        }
    }

    /// Serves the broker until `shutdown` completes, then drains: sends
    /// Drain, lets running bodies finish and their outcomes be acknowledged
    /// (at most the drain timeout; what still runs then is aborted), sends
    /// Goodbye and closes the stream.
    ///
    /// A broken connection is not an error: the worker reconnects with
    /// exponential backoff (100 ms doubling to 2 s) until `shutdown`,
    /// keeping its runs and reporting their outcomes on the new stream.
    ///
    /// # Errors
    ///
    /// [`Error::Rejected`] when the broker refuses the session for a reason
    /// retrying cannot fix, [`Error::Protocol`] when it breaks the protocol.
    /// Running bodies are aborted then.
    pub async fn run_until<F>(self, shutdown: F) -> Result<(), Error>
    where
        F: Future<Output = ()>,
    {
        Runtime::new(self.config).run(shutdown).await
    }

    /// [`Worker::run_until`] ctrl-c or, on Unix, SIGTERM.
    ///
    /// # Errors
    ///
    /// As [`Worker::run_until`].
    pub async fn run(self) -> Result<(), Error> {
        self.run_until(shutdown_signal()).await
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("endpoints", &self.config.addresses)
            .field("name", &self.config.name)
            .field("queues", &self.config.queues)
            .field("concurrency", &self.config.concurrency)
            .field("prefetch", &self.config.prefetch)
            .field("tasks", &self.config.tasks.keys().collect::<Vec<_>>())
            .field("drain_timeout", &self.config.drain_timeout)
            .finish()
    }
}

/// Describes a [`Worker`]; from [`Worker::builder`].
#[must_use = "a builder does nothing until .build()"]
pub struct WorkerBuilder {
    endpoint: String,
    name: Option<String>,
    queues: Vec<String>,
    concurrency: u32,
    prefetch: u32,
    tasks: Vec<(String, Registered)>,
    drain_timeout: Duration,
    options: ClientOptions,
}

impl WorkerBuilder {
    /// The secret of a broker token with role `worker` whose queues cover
    /// this worker's.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.options = self.options.token(token);
        self
    }

    /// TLS settings (the CA to trust, the broker's name, and the client
    /// certificate a broker with mutual TLS requires of workers). The
    /// connection uses `https` whatever scheme the endpoint names.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.options = self.options.tls(tls);
        self
    }

    /// The name shown in inspection; defaults to `"<host>:<pid>"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The queues to take tasks from; defaults to `["general"]`. Subscribe
    /// to `"heavy"` to run heavy tasks.
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// How many task bodies may run at once; defaults to 1.
    pub fn concurrency(mut self, concurrency: u32) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// How many assignments the broker may send beyond `concurrency`;
    /// defaults to 0. They wait here until a body ends, so a worker of
    /// many short tasks never idles for the round trip and durable commit
    /// that bring the next one. They are this worker's from assignment:
    /// their leases and timeouts run, and a drain runs them too. While
    /// the worker is disconnected they wait; the next Welcome says which
    /// are still its own. The broker never prefetches a task that holds a
    /// throttle slot. Keep it for short tasks (Celery's
    /// `worker_prefetch_multiplier` 4 is a prefetch of 3 × concurrency).
    pub fn prefetch(mut self, prefetch: u32) -> Self {
        self.prefetch = prefetch;
        self
    }

    /// How long a drain may wait for running bodies; defaults to 30 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Registers the body of task `name`, with no default options.
    ///
    /// The body is an async function or closure taking the run's
    /// [`TaskContext`] and returning its JSON result or a [`TaskError`].
    pub fn task<F, Fut>(self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
    {
        self.register(name.into(), None, handler)
    }

    /// Registers the body of task `name` with default options (queue,
    /// heavy, declared throttle, retries, ...). The broker keeps them and
    /// applies them to every signature of this name that leaves a field
    /// unset, even from submitters who do not know them.
    pub fn task_with<F, Fut>(
        self,
        name: impl Into<String>,
        defaults: pb::Options,
        handler: F,
    ) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
    {
        self.register(name.into(), Some(defaults), handler)
    }

    fn register<F, Fut>(mut self, name: String, defaults: Option<pb::Options>, handler: F) -> Self
    where
        F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, TaskError>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |ctx| Box::pin(handler(ctx)));
        self.tasks.push((name, Registered { defaults, handler }));
        self
    }

    /// Checks the description and builds the worker. Connects to nothing
    /// yet.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidEndpoint`] for an endpoint that is not a URI (or
    /// TLS settings with an unusable PEM), [`Error::InvalidToken`],
    /// [`Error::NoTasks`], [`Error::EmptyTaskName`] or
    /// [`Error::DuplicateTask`] for a bad set of tasks, and
    /// [`Error::ZeroConcurrency`].
    pub fn build(self) -> Result<Worker, Error> {
        let authorization = self
            .options
            .authorization()
            .map_err(|_| Error::InvalidToken)?;
        let addresses = baton::failover::split_addrs(&self.endpoint);
        if addresses.is_empty() {
            return Err(Error::NoEndpoint);
        }
        for address in &addresses {
            endpoint(&self.options, address).map_err(|source| Error::InvalidEndpoint {
                endpoint: address.clone(),
                source,
            })?;
        }
        if self.concurrency == 0 {
            return Err(Error::ZeroConcurrency);
        }
        if self.tasks.is_empty() {
            return Err(Error::NoTasks);
        }
        let mut tasks = BTreeMap::new();
        for (name, registered) in self.tasks {
            if name.is_empty() {
                return Err(Error::EmptyTaskName);
            }
            if tasks.contains_key(&name) {
                return Err(Error::DuplicateTask(name));
            }
            tasks.insert(name, registered);
        }
        let config = Config {
            addresses,
            options: self.options,
            authorization,
            name: self.name.unwrap_or_else(default_name),
            queues: self.queues,
            concurrency: self.concurrency,
            prefetch: self.prefetch,
            tasks,
            drain_timeout: self.drain_timeout,
        };
        Ok(Worker { config })
    }
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("endpoint", &self.endpoint)
            .field("name", &self.name)
            .field("queues", &self.queues)
            .field("concurrency", &self.concurrency)
            .field("prefetch", &self.prefetch)
            .field(
                "tasks",
                &self.tasks.iter().map(|(name, _)| name).collect::<Vec<_>>(),
            )
            .field("drain_timeout", &self.drain_timeout)
            .field("options", &self.options)
            .finish()
    }
}

/// `"<host>:<pid>"`, as the protocol suggests; the host comes from
/// `$HOSTNAME` and falls back to `"worker"`.
fn default_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
    format!("{host}:{}", std::process::id())
}

/// Completes on ctrl-c or SIGTERM. If a signal cannot be listened to, that
/// is logged and the signal is simply never seen.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(cause) = tokio::signal::ctrl_c().await {
            tracing::error!(cause = %cause, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(cause) => {
                tracing::error!(cause = %cause, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn noop(_: TaskContext) -> Result<Value, TaskError> {
        Ok(Value::Null)
    }

    #[test]
    fn defaults() {
        let worker = Worker::builder("http://127.0.0.1:1")
            .task("a", noop)
            .build()
            .unwrap();
        assert_eq!(worker.config.queues, vec![DEFAULT_QUEUE]);
        assert_eq!(worker.config.concurrency, 1);
        assert_eq!(worker.config.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert!(
            worker
                .config
                .name
                .ends_with(&format!(":{}", std::process::id()))
        );
        assert!(worker.config.tasks["a"].defaults.is_none());
    }

    #[test]
    fn settings_are_kept() {
        let defaults = pb::Options {
            heavy: true,
            ..Default::default()
        };
        let worker = Worker::builder("http://127.0.0.1:1")
            .name("w-1")
            .queues(["heavy", "general"])
            .concurrency(4)
            .drain_timeout(Duration::from_secs(2))
            .task_with("b", defaults.clone(), noop)
            .task("a", |_ctx| async { Ok(Value::Bool(true)) })
            .build()
            .unwrap();
        let c = &worker.config;
        assert_eq!((c.name.as_str(), c.concurrency), ("w-1", 4));
        assert_eq!(c.queues, vec!["heavy", "general"]);
        assert_eq!(c.drain_timeout, Duration::from_secs(2));
        assert_eq!(c.tasks.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(c.tasks["b"].defaults, Some(defaults));
    }

    #[test]
    fn bad_descriptions_are_refused() {
        let refused = |builder: WorkerBuilder| builder.build().unwrap_err();
        let base = || Worker::builder("http://127.0.0.1:1");
        assert!(matches!(refused(base()), Error::NoTasks));
        assert!(matches!(
            refused(base().task("a", noop).concurrency(0)),
            Error::ZeroConcurrency
        ));
        assert!(matches!(
            refused(base().task("", noop)),
            Error::EmptyTaskName
        ));
        assert!(matches!(
            refused(base().task("a", noop).task("a", noop)),
            Error::DuplicateTask(n) if n == "a"
        ));
        assert!(matches!(
            refused(Worker::builder("not a uri\n").task("a", noop)),
            Error::InvalidEndpoint { .. }
        ));
        assert!(matches!(
            refused(Worker::builder("127.0.0.1:1, bad uri\n").task("a", noop)),
            Error::InvalidEndpoint { endpoint, .. } if endpoint == "bad uri"
        ));
        assert!(matches!(
            refused(Worker::builder(" , ").task("a", noop)),
            Error::NoEndpoint
        ));
        let several = base().task("a", noop).build().map(|_| ()).and(
            Worker::builder("h1:7070, http://h2:7070")
                .task("a", noop)
                .build(),
        );
        assert_eq!(
            several.unwrap().config.addresses,
            vec!["h1:7070", "http://h2:7070"]
        );
    }
}
