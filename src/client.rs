//! The typed client: submit chains, follow them to their end, inspect.
//!
//! [`Client`] wraps the generated `Broker` and `Admin` stubs over one tonic
//! channel, so it is cheap to clone and share between tasks. Its methods
//! speak this crate's types ([`Chain`], [`ChainOutcome`], [`Error`]) rather
//! than raw requests, except where the broker's own message is the answer
//! (`pb::Chain`, `pb::QueueInfo`, ...). [`Client::wait`] is the one method
//! with a policy of its own: it follows `WatchChain` across broker restarts,
//! because a chain outlives a broker process but a stream does not.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::chain::Chain;
use crate::error::{Error, Result};
use crate::failover::{Brokers, Next, Refusal, split_addrs};
use crate::options::{Bearer, ClientOptions};
use crate::outcome::ChainOutcome;
use crate::pb;
use crate::pb::admin_client::AdminClient;
use crate::pb::broker_client::BrokerClient;

/// First pause before re-opening a broken watch.
const WATCH_RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between attempts to re-open a broken watch.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);
/// Pause between rounds of the brokers while a standby answers (it takes
/// over within its lease).
const FAILOVER_PAUSE: Duration = Duration::from_millis(100);
/// How long a call keeps looking for a leader while standbys answer.
const FAILOVER_WAIT: Duration = Duration::from_secs(30);

/// A channel whose calls carry the token, if the client has one.
type Authed = InterceptedService<Channel, Bearer>;

/// Turns a broker address as users type it (`"127.0.0.1:7070"`) into the
/// URI tonic wants (`"http://127.0.0.1:7070"`); URIs pass through unchanged.
pub fn endpoint_uri(endpoint: impl Into<String>) -> String {
    let endpoint = endpoint.into();
    if endpoint.contains("://") {
        endpoint
    } else {
        format!("http://{endpoint}")
    }
}

/// A connection to a Baton broker. Clones share the connection.
///
/// ```no_run
/// # async fn demo() -> baton::Result<()> {
/// let client = baton::Client::connect("127.0.0.1:7070").await?;
/// let submitted = client.submit(baton::Task::new("demo.fast").si([10])).await?;
/// let result = client.wait(&submitted.chain_id).await?;
/// # let _ = result;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// The stubs of one connection.
#[derive(Debug, Clone)]
struct Stubs {
    broker: BrokerClient<Authed>,
    admin: AdminClient<Authed>,
    /// The broker they call, as the route names it (empty for a channel
    /// given by the caller).
    address: Arc<str>,
}

#[derive(Debug)]
struct Inner {
    /// The stubs calls go to now.
    current: Mutex<Stubs>,
    /// How to move to another broker; `None` for a client over a channel
    /// given by the caller.
    route: Option<Route>,
    /// How long a call waits for its answer (`ClientOptions::timeout`);
    /// `None` for a client over a channel given by the caller, whose
    /// timeouts are the channel's.
    timeout: Option<Duration>,
}

/// The brokers a client was given, and how to connect to one of them.
#[derive(Debug)]
struct Route {
    brokers: Mutex<Brokers>,
    options: ClientOptions,
    bearer: Bearer,
}

/// What [`Client::submit`] got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    /// The chain's id: the new chain's, or, when `dedup` says no chain was
    /// stored, the earlier chain's.
    pub chain_id: String,
    /// Why no new chain was stored; [`pb::Dedup::Unspecified`] when one was
    /// (also when a newer broker sends a reason this crate does not know).
    pub dedup: pb::Dedup,
}

impl Submitted {
    /// Whether this submission stored a new chain.
    pub fn is_new(&self) -> bool {
        self.dedup == pb::Dedup::Unspecified
    }
}

/// A chain sent with [`Client::submit_pipelined`], not yet acknowledged.
#[derive(Debug)]
pub struct Pending {
    chain_id: String,
    answer: tokio::task::JoinHandle<Result<Submitted>>,
}

impl Pending {
    /// The id the chain has once stored (chosen by the client).
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// Waits for the broker's answer: Ok once the chain is durable.
    ///
    /// # Errors
    ///
    /// Those of [`Client::submit`]; then the chain was not stored.
    pub async fn stored(self) -> Result<Submitted> {
        self.answer.await.unwrap_or_else(|e| {
            let why = format!("the submission task ended before its answer: {e}");
            Err(Error::Status(Box::new(tonic::Status::cancelled(why))))
        })
    }
}

impl Stubs {
    fn new(channel: Channel, bearer: Bearer, address: &str) -> Self {
        Self {
            broker: BrokerClient::with_interceptor(channel.clone(), bearer.clone()),
            admin: AdminClient::with_interceptor(channel, bearer),
            address: address.into(),
        }
    }
}

impl Inner {
    fn stubs(&self) -> Stubs {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Route {
    fn brokers(&self) -> std::sync::MutexGuard<'_, Brokers> {
        self.brokers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn current(&self) -> String {
        self.brokers().current().to_owned()
    }

    /// A call at `address` failed. Calls run side by side: when another
    /// one already moved the route on from `address`, this one follows it
    /// (at once) instead of counting the same failure again, which would
    /// end the round early and fail calls that the next broker would take.
    fn failed(&self, address: &str, refusal: &Refusal) -> Next {
        let mut brokers = self.brokers();
        if brokers.current() != address {
            return Next::Now;
        }
        brokers.failed(refusal)
    }

    fn succeeded(&self) {
        self.brokers().succeeded();
    }

    /// Connects to one broker, within the call timeout: a frozen broker's
    /// kernel still accepts the TCP connection, but no HTTP/2 handshake
    /// follows.
    async fn connect(&self, address: &str) -> Result<Stubs> {
        let limit = self.options.call_timeout();
        let endpoint = self.options.endpoint(address)?.connect_timeout(limit);
        let channel = tokio::time::timeout(limit, endpoint.connect())
            .await
            .map_err(|_| {
                tonic::Status::unavailable(format!(
                    "no answer from the broker at {address} within {limit:?}"
                ))
            })??;
        Ok(Stubs::new(channel, self.bearer.clone(), address))
    }
}

/// Whether a call that failed with `status` is worth making at another
/// broker: a standby refused it (it did nothing), or its broker could not
/// be reached (tonic made the status here, from a connection error).
/// Gives a submission without a chain id one chosen here (a UUIDv7), and
/// says whether it did. A call cut off by a broken connection is sent again
/// (to the same broker or, after a failover, to the new leader), and the
/// broker may have stored it the first time: with the id chosen before the
/// first try, the repeat is recognised (`DEDUP_CHAIN_ID`) instead of
/// storing the chain twice.
fn choose_id(request: &mut pb::SubmitChainRequest) -> bool {
    if !request.chain_id.is_empty() {
        return false;
    }
    request.chain_id = uuid::Uuid::now_v7().to_string();
    true
}

impl Submitted {
    /// The answer to a submission; `ours`: its chain id was chosen by
    /// [`choose_id`], so a chain stored under it can only be this very
    /// submission's first try, and the chain is new to the caller.
    fn of(response: pb::SubmitChainResponse, ours: bool) -> Self {
        let dedup = match response.dedup() {
            pb::Dedup::ChainId if ours => pb::Dedup::Unspecified,
            other => other,
        };
        Submitted {
            dedup,
            chain_id: response.chain_id,
        }
    }
}

fn elsewhere(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && (Refusal::of(status).standby || std::error::Error::source(status).is_some())
}

/// Which failed calls are made again, at the same broker or the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Again {
    /// Those that were not carried out: refused by a standby, their broker
    /// unreachable, or no answer within the timeout.
    NotCarriedOut,
    /// Those too whose connection broke mid-call (the leader died while it
    /// was answering): safe for a submission, whose chain id makes a repeat
    /// a recognised duplicate rather than a second chain.
    CutOff,
}

impl Again {
    fn applies(self, status: &tonic::Status, timed_out: bool) -> bool {
        // tonic attaches the transport's error as the source of the status
        // it makes itself; a status the broker sent has none.
        let cut_off = std::error::Error::source(status).is_some();
        timed_out || elsewhere(status) || (self == Again::CutOff && cut_off)
    }
}

impl Client {
    /// Connects to the broker at `endpoint`: `"127.0.0.1:7070"` (plain
    /// HTTP/2 is assumed) or a URI such as `"http://broker:7070"`.
    ///
    /// # Errors
    ///
    /// [`Error::Transport`] when the endpoint is malformed or cannot be
    /// reached.
    ///
    /// Several brokers sharing one database: `"h1:7070,h2:7070"`. The
    /// client connects to the first it can reach, and a call that a standby
    /// refuses, or that cannot reach its broker, goes to the leader the
    /// standby names, or to the next broker (docs/deployment.md, "How
    /// clients find the leader"), for up to 30 s while standbys answer.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Self> {
        Self::connect_with(endpoint, ClientOptions::new()).await
    }

    /// Connects with a token, TLS, or both (see [`ClientOptions`]). With
    /// TLS, `"broker:7070"` means `https://broker:7070`.
    ///
    /// ```no_run
    /// # async fn demo() -> baton::Result<()> {
    /// use baton::{Client, ClientOptions, TlsOptions};
    ///
    /// let ca = std::fs::read("ca.pem").expect("ca.pem");
    /// let options = ClientOptions::new()
    ///     .token(std::env::var("BATON_TOKEN").unwrap_or_default())
    ///     .tls(TlsOptions::new().ca_pem(ca));
    /// let client = Client::connect_with("broker.internal:7070", options).await?;
    /// # let _ = client;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidToken`] for a token that cannot be sent,
    /// [`Error::Transport`] when the endpoint is malformed, a PEM is
    /// unusable, or the broker cannot be reached (including a failed TLS
    /// handshake: a certificate not trusted, a name that does not match).
    pub async fn connect_with(endpoint: impl Into<String>, options: ClientOptions) -> Result<Self> {
        let endpoint = endpoint.into();
        let bearer = Bearer::new(options.authorization()?);
        let Some(brokers) = Brokers::new(split_addrs(&endpoint)) else {
            // Endpoint's own error for an empty address.
            return Err(Endpoint::from_shared(endpoint).err().map_or_else(
                || {
                    Error::Status(Box::new(tonic::Status::invalid_argument(
                        "no broker address",
                    )))
                },
                Error::from,
            ));
        };
        let timeout = Some(options.call_timeout());
        let route = Route {
            brokers: Mutex::new(brokers),
            options,
            bearer,
        };
        let stubs = loop {
            let address = route.current();
            match route.connect(&address).await {
                Ok(stubs) => break stubs,
                Err(error) => {
                    if let Next::Pause { .. } = route.failed(&address, &Refusal::default()) {
                        return Err(error);
                    }
                }
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                current: Mutex::new(stubs),
                route: Some(route),
                timeout,
            }),
        })
    }

    /// A client over an existing channel (for timeouts or a lazy
    /// connection configured by the caller), with no token.
    pub fn new(channel: Channel) -> Self {
        Self::with_interceptor(channel, Bearer::default())
    }

    /// A client over an existing channel whose calls carry the token of
    /// `options` (its TLS settings are the channel's business).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidToken`] for a token that cannot be sent.
    pub fn with_options(channel: Channel, options: &ClientOptions) -> Result<Self> {
        Ok(Self::with_interceptor(
            channel,
            Bearer::new(options.authorization()?),
        ))
    }

    fn with_interceptor(channel: Channel, bearer: Bearer) -> Self {
        Self {
            inner: Arc::new(Inner {
                current: Mutex::new(Stubs::new(channel, bearer, "")),
                route: None,
                timeout: None,
            }),
        }
    }

    /// Makes a call with the current stubs; when it cannot reach its
    /// broker, a standby refuses it, or it has no answer within the
    /// timeout, follows the leader (see [`crate::failover`]) and makes it
    /// again.
    async fn call<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(Stubs) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_again(Again::NotCarriedOut, call).await
    }

    /// [`call`](Self::call), making again the calls that `again` says.
    async fn call_again<T, F, Fut>(&self, again: Again, call: F) -> Result<T>
    where
        F: Fn(Stubs) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let stubs = self.inner.stubs();
        let address = stubs.address.clone();
        let (status, timed_out) = match self.bounded(call(stubs)).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(failure) => failure,
        };
        match &self.inner.route {
            Some(route) if again.applies(&status, timed_out) => {
                self.fail_over(route, again, &address, status, call).await
            }
            _ => Err(status.into()),
        }
    }

    /// One try of a call, bounded by the client's timeout: the answer, or
    /// the status and whether the timeout made it (`DEADLINE_EXCEEDED`).
    /// Every call the client makes may be made twice: a submission carries
    /// its chain id, the others are reads or set a state.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> std::result::Result<tonic::Response<T>, (tonic::Status, bool)> {
        let Some(limit) = self.inner.timeout else {
            return call.await.map_err(|status| (status, false));
        };
        match tokio::time::timeout(limit, call).await {
            Ok(answer) => answer.map_err(|status| (status, false)),
            Err(_) => Err((
                tonic::Status::deadline_exceeded(format!(
                    "no answer from the broker within {limit:?}"
                )),
                true,
            )),
        }
    }

    async fn fail_over<T, F, Fut>(
        &self,
        route: &Route,
        again: Again,
        failed_at: &str,
        mut status: tonic::Status,
        call: F,
    ) -> Result<T>
    where
        F: Fn(Stubs) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = tokio::time::Instant::now();
        let mut failed_at = failed_at.to_owned();
        loop {
            if let Next::Pause { standby } = route.failed(&failed_at, &Refusal::of(&status)) {
                if !standby || started.elapsed() >= FAILOVER_WAIT {
                    return Err(status.into());
                }
                tokio::time::sleep(FAILOVER_PAUSE).await;
            }
            let address = route.current();
            failed_at.clone_from(&address);
            let stubs = match route.connect(&address).await {
                Ok(stubs) => stubs,
                Err(error) => {
                    status =
                        tonic::Status::unavailable(format!("cannot connect to {address}: {error}"));
                    continue;
                }
            };
            *self.inner.current.lock().unwrap_or_else(|e| e.into_inner()) = stubs.clone();
            match self.bounded(call(stubs)).await {
                Ok(response) => {
                    route.succeeded();
                    tracing::info!(broker = %address, "following the leader");
                    return Ok(response.into_inner());
                }
                Err((next, timed_out)) if again.applies(&next, timed_out) => status = next,
                Err((other, _)) => return Err(other.into()),
            }
        }
    }

    /// Submits a chain (or a single signature, as a one-step chain). Returns
    /// once the broker stored it durably, or found it a duplicate.
    ///
    /// # Errors
    ///
    /// [`Error::Status`]: `INVALID_ARGUMENT` naming the field when the chain
    /// is malformed (nothing is stored), or a transport status such as
    /// `UNAVAILABLE`.
    pub async fn submit(&self, chain: impl Into<Chain>) -> Result<Submitted> {
        self.submit_request(pb::SubmitChainRequest::from(chain.into()))
            .await
    }

    /// [`submit`](Self::submit) for a request built by hand (as tools that
    /// read chains from files do).
    ///
    /// # Errors
    ///
    /// Those of [`submit`](Self::submit).
    pub async fn submit_request(&self, mut request: pb::SubmitChainRequest) -> Result<Submitted> {
        let ours = choose_id(&mut request);
        self.send_submission(request, ours).await
    }

    /// Sends a submission; `ours`: its chain id was chosen by
    /// [`choose_id`] (see [`Submitted::of`]).
    async fn send_submission(
        &self,
        request: pb::SubmitChainRequest,
        ours: bool,
    ) -> Result<Submitted> {
        let response = self
            .call_again(Again::CutOff, |mut s| {
                let request = request.clone();
                async move { s.broker.submit_chain(request).await }
            })
            .await?;
        Ok(Submitted::of(response, ours))
    }

    /// Submits many chains with one call and one durable commit: all of
    /// them are stored, or none. Up to 1000 chains per call (the broker's
    /// limit); the answers come in the order of `chains`.
    ///
    /// This is the fast path for a producer with many chains at hand: one
    /// round trip and one disk flush instead of one of each per chain.
    ///
    /// # Errors
    ///
    /// Those of [`submit`](Self::submit); a malformed chain is named by its
    /// index (`chains[3]: steps[0].name ...`) and nothing is stored.
    pub async fn submit_many<C: Into<Chain>>(
        &self,
        chains: impl IntoIterator<Item = C>,
    ) -> Result<Vec<Submitted>> {
        let mut request = pb::SubmitChainsRequest {
            chains: chains
                .into_iter()
                .map(|c| pb::SubmitChainRequest::from(c.into()))
                .collect(),
        };
        let ours: Vec<bool> = request.chains.iter_mut().map(choose_id).collect();
        let response = self
            .call_again(Again::CutOff, |mut s| {
                let request = request.clone();
                async move { s.broker.submit_chains(request).await }
            })
            .await?;
        Ok(response
            .chains
            .into_iter()
            .zip(ours)
            .map(|(r, ours)| Submitted::of(r, ours))
            .collect())
    }

    /// Sends a chain without waiting for the broker's answer: the chain id
    /// is chosen here (a random UUID), so it is known at once, and many
    /// submissions share the broker's disk flushes instead of paying one
    /// each. This is what makes a plain producer loop fast:
    ///
    /// ```no_run
    /// # async fn demo(client: baton::Client) -> baton::Result<()> {
    /// let pending: Vec<_> = (0..10_000)
    ///     .map(|i| client.submit_pipelined(baton::Task::new("demo.fast").si([i])))
    ///     .collect();
    /// for p in pending {
    ///     p.stored().await?; // durable from here on
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Nothing is promised until [`Pending::stored`] answers OK: a chain
    /// whose submission failed (bad input, broker down) was not stored.
    /// Resending the same chain id is safe (the answer is
    /// [`pb::Dedup::ChainId`]). Must be called within a Tokio runtime.
    pub fn submit_pipelined(&self, chain: impl Into<Chain>) -> Pending {
        let mut request = pb::SubmitChainRequest::from(chain.into());
        let ours = choose_id(&mut request);
        let chain_id = request.chain_id.clone();
        let client = self.clone();
        let answer = tokio::spawn(async move { client.send_submission(request, ours).await });
        Pending { chain_id, answer }
    }

    /// The current state of a chain and of each of its steps.
    ///
    /// # Errors
    ///
    /// [`Error::Status`], for example `NOT_FOUND` for an unknown chain.
    pub async fn get(&self, chain_id: &str) -> Result<pb::Chain> {
        let request = pb::GetChainRequest {
            chain_id: chain_id.to_owned(),
        };
        self.call(|mut s| {
            let request = request.clone();
            async move { s.broker.get_chain(request).await }
        })
        .await
    }

    /// The JSON result of one succeeded step, by its task id. [`get`]
    /// omits results over 16 KiB that the chain no longer uses
    /// (`Step.result_omitted`); this reads any of them.
    ///
    /// # Errors
    ///
    /// [`Error::Status`]: `NOT_FOUND` for an unknown chain or step,
    /// `FAILED_PRECONDITION` for a step that has not succeeded.
    ///
    /// [`get`]: Self::get
    pub async fn step_result(&self, chain_id: &str, task_id: &str) -> Result<String> {
        let request = pb::GetStepResultRequest {
            chain_id: chain_id.to_owned(),
            task_id: task_id.to_owned(),
        };
        let answer = self
            .call(|mut s| {
                let request = request.clone();
                async move { s.broker.get_step_result(request).await }
            })
            .await?;
        Ok(answer.result)
    }

    /// Follows a chain: its current state first (kind `"snapshot"`), then
    /// one event per change. The stream ends after the chain has ended.
    ///
    /// # Errors
    ///
    /// [`Error::Status`] when the watch cannot be opened (`NOT_FOUND`,
    /// `UNAVAILABLE`, ...); the stream's items carry the errors that break
    /// it later.
    pub async fn watch(
        &self,
        chain_id: &str,
    ) -> Result<impl Stream<Item = Result<pb::ChainEvent>> + Send + Unpin + 'static> {
        let request = pb::WatchChainRequest {
            chain_id: chain_id.to_owned(),
        };
        let events = self
            .call(|mut s| {
                let request = request.clone();
                async move { s.broker.watch_chain(request).await }
            })
            .await?;
        Ok(events.map(|event| event.map_err(Error::from)))
    }

    /// Cancels a chain: unstarted steps never start, running ones are told
    /// to stop, neither callback fires. Returns the chain's state after the
    /// call; an ended chain keeps its final state.
    ///
    /// # Errors
    ///
    /// [`Error::Status`], for example `NOT_FOUND` for an unknown chain.
    pub async fn cancel(
        &self,
        chain_id: &str,
        reason: impl Into<String>,
    ) -> Result<pb::ChainState> {
        let request = pb::CancelChainRequest {
            chain_id: chain_id.to_owned(),
            reason: reason.into(),
        };
        let response = self
            .call(|mut s| {
                let request = request.clone();
                async move { s.broker.cancel_chain(request).await }
            })
            .await?;
        Ok(response.state())
    }

    /// Waits until the chain ends and returns how it ended.
    ///
    /// Follows [`watch`](Self::watch). When the watch cannot be opened or
    /// breaks because the broker is unreachable (`UNAVAILABLE`, or the
    /// connection dropped: a broker restarting), or ends before the chain
    /// did, it is opened again after a pause that grows from 0.1 s to 2 s.
    /// So this waits as long as the chain runs;
    /// [`wait_timeout`](Self::wait_timeout) bounds it.
    ///
    /// # Errors
    ///
    /// [`Error::Status`] for any other status (`NOT_FOUND` for an unknown
    /// chain), [`Error::Json`] when the broker sends a result that is not
    /// JSON.
    pub async fn wait(&self, chain_id: &str) -> Result<ChainOutcome> {
        let mut pause = WATCH_RETRY_FIRST;
        loop {
            if let Some(outcome) = self.follow(chain_id, &mut pause).await? {
                return Ok(outcome);
            }
            tracing::debug!(chain.id = %chain_id, ?pause, "watch ended before the chain did, opening it again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(WATCH_RETRY_MAX);
        }
    }

    /// [`wait`](Self::wait), giving up after `timeout`. Giving up does not
    /// cancel the chain.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when `timeout` passed first, otherwise those of
    /// [`wait`](Self::wait).
    pub async fn wait_timeout(&self, chain_id: &str, timeout: Duration) -> Result<ChainOutcome> {
        tokio::time::timeout(timeout, self.wait(chain_id))
            .await
            .map_err(|_| Error::Timeout(timeout))?
    }

    /// One watch of `chain_id`: `Some` once the chain ended, `None` when the
    /// watch broke in a way worth opening it again. Every event received
    /// resets `pause`: the broker is up.
    async fn follow(&self, chain_id: &str, pause: &mut Duration) -> Result<Option<ChainOutcome>> {
        let mut events = match self.watch(chain_id).await {
            Ok(events) => events,
            Err(error) if is_transient(&error) => return Ok(None),
            Err(error) => return Err(error),
        };
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(error) if is_transient(&error) => return Ok(None),
                Err(error) => return Err(error),
            };
            *pause = WATCH_RETRY_FIRST;
            if let Some(chain) = &event.chain
                && let Some(outcome) = ChainOutcome::from_chain(chain)?
            {
                return Ok(Some(outcome));
            }
        }
        Ok(None)
    }

    /// Inspection and live limits.
    pub fn admin(&self) -> Admin {
        Admin {
            client: self.clone(),
        }
    }
}

/// Whether a watch that failed with `error` is worth opening again: the
/// broker is unreachable or went away (restarting), as opposed to an answer
/// about the chain itself.
///
/// That is `UNAVAILABLE`, or any status that tonic made on this side from a
/// broken connection (it carries the transport error as its source): a
/// broker killed mid-stream shows up as `UNKNOWN` "error reading a body from
/// connection", not as `UNAVAILABLE`. A status the broker sent has no source.
fn is_transient(error: &Error) -> bool {
    error.status().is_some_and(|status| {
        status.code() == tonic::Code::Unavailable || std::error::Error::source(status).is_some()
    })
}

/// The broker's admin and inspection RPCs, from [`Client::admin`]. Shares
/// the client's connection.
#[derive(Debug, Clone)]
pub struct Admin {
    client: Client,
}

impl Admin {
    /// Every queue with its counts of ready, delayed, throttled and running
    /// tasks.
    ///
    /// # Errors
    ///
    /// [`Error::Status`] when the call fails.
    pub async fn list_queues(&self) -> Result<Vec<pb::QueueInfo>> {
        let response = self
            .client
            .call(|mut s| {
                let request = pb::ListQueuesRequest {};
                async move { s.admin.list_queues(request).await }
            })
            .await?;
        Ok(response.queues)
    }

    /// Every connected worker with its queues, task names and work in
    /// flight.
    ///
    /// # Errors
    ///
    /// [`Error::Status`] when the call fails.
    pub async fn list_workers(&self) -> Result<Vec<pb::WorkerInfo>> {
        let response = self
            .client
            .call(|mut s| {
                let request = pb::ListWorkersRequest {};
                async move { s.admin.list_workers(request).await }
            })
            .await?;
        Ok(response.workers)
    }

    /// Every throttle identity with its limit, holders and waiters.
    ///
    /// # Errors
    ///
    /// [`Error::Status`] when the call fails.
    pub async fn list_throttles(&self) -> Result<Vec<pb::ThrottleInfo>> {
        let response = self
            .client
            .call(|mut s| {
                let request = pb::ListThrottlesRequest {};
                async move { s.admin.list_throttles(request).await }
            })
            .await?;
        Ok(response.throttles)
    }

    /// Sets the limit of a throttle identity; waiting work honours it at
    /// once, current holders keep their slots. A `limit` of 0 clears the
    /// override (back to the declared concurrency).
    ///
    /// # Errors
    ///
    /// [`Error::Status`], for example `INVALID_ARGUMENT` for a malformed
    /// identity.
    pub async fn set_throttle_limit(
        &self,
        identity: pb::ThrottleIdentity,
        limit: u32,
    ) -> Result<pb::ThrottleInfo> {
        let request = pb::SetThrottleLimitRequest {
            identity: Some(identity),
            limit,
        };
        let response = self
            .client
            .call(|mut s| {
                let request = request.clone();
                async move { s.admin.set_throttle_limit(request).await }
            })
            .await?;
        Ok(response)
    }

    /// Sets (`Some`) or clears (`None`: back to the declared one) the rate
    /// of a throttle identity; waiting work honours it at once, and the
    /// starts already taken count against it. Survives a broker restart.
    ///
    /// # Errors
    ///
    /// [`Error::Status`], `INVALID_ARGUMENT` for a malformed identity or
    /// rate.
    pub async fn set_throttle_rate(
        &self,
        identity: pb::ThrottleIdentity,
        rate: Option<pb::Rate>,
    ) -> Result<pb::ThrottleInfo> {
        let request = pb::SetThrottleRateRequest {
            identity: Some(identity),
            rate,
        };
        let response = self
            .client
            .call(|mut s| {
                let request = request.clone();
                async move { s.admin.set_throttle_rate(request).await }
            })
            .await?;
        Ok(response)
    }

    /// Pauses a queue: its tasks stay READY but none is assigned until
    /// [`resume_queue`](Self::resume_queue). Survives a broker restart.
    ///
    /// # Errors
    ///
    /// [`Error::Status`], `INVALID_ARGUMENT` for a malformed queue name.
    pub async fn pause_queue(&self, queue: impl Into<String>) -> Result<pb::QueueInfo> {
        let request = pb::PauseQueueRequest {
            queue: queue.into(),
        };
        self.client
            .call(|mut s| {
                let request = request.clone();
                async move { s.admin.pause_queue(request).await }
            })
            .await
    }

    /// Resumes a paused queue.
    ///
    /// # Errors
    ///
    /// [`Error::Status`], `INVALID_ARGUMENT` for a malformed queue name.
    pub async fn resume_queue(&self, queue: impl Into<String>) -> Result<pb::QueueInfo> {
        let request = pb::ResumeQueueRequest {
            queue: queue.into(),
        };
        self.client
            .call(|mut s| {
                let request = request.clone();
                async move { s.admin.resume_queue(request).await }
            })
            .await
    }

    /// Cancels the chain of every task READY in `queue` (as
    /// [`Client::cancel`] does: no callback fires).
    ///
    /// # Errors
    ///
    /// [`Error::Status`], `INVALID_ARGUMENT` for a malformed queue name.
    pub async fn purge_queue(
        &self,
        queue: impl Into<String>,
        reason: impl Into<String>,
    ) -> Result<pb::PurgeQueueResponse> {
        let request = pb::PurgeQueueRequest {
            queue: queue.into(),
            reason: reason.into(),
        };
        self.client
            .call(|mut s| {
                let request = request.clone();
                async move { s.admin.purge_queue(request).await }
            })
            .await
    }

    /// One page of failed chains, newest first; pass the response's
    /// `next_page_token` to get the next page (empty: no more).
    ///
    /// # Errors
    ///
    /// [`Error::Status`], `INVALID_ARGUMENT` for a page token the broker
    /// did not hand out.
    pub async fn list_dead_chains(
        &self,
        page_size: u32,
        page_token: impl Into<String>,
    ) -> Result<pb::ListDeadChainsResponse> {
        let request = pb::ListDeadChainsRequest {
            page_size,
            page_token: page_token.into(),
        };
        self.client
            .call(|mut s| {
                let request = request.clone();
                async move { s.admin.list_dead_chains(request).await }
            })
            .await
    }

    /// One page of the chains in `state`, newest first (running ones by
    /// creation, ended ones by when they ended); pass the response's
    /// `next_page_token` to get the next page (empty: no more).
    ///
    /// # Errors
    ///
    /// [`Error::Status`], `INVALID_ARGUMENT` for an unspecified state or a
    /// page token the broker did not hand out for this state.
    pub async fn list_chains(
        &self,
        state: pb::ChainState,
        page_size: u32,
        page_token: impl Into<String>,
    ) -> Result<pb::ListChainsResponse> {
        let request = pb::ListChainsRequest {
            state: state as i32,
            page_size,
            page_token: page_token.into(),
        };
        self.client
            .call(|mut s| {
                let request = request.clone();
                async move { s.admin.list_chains(request).await }
            })
            .await
    }

    /// Submits a failed chain again as a new chain; returns the new
    /// chain's id.
    ///
    /// # Errors
    ///
    /// [`Error::Status`]: `NOT_FOUND`, `FAILED_PRECONDITION` (the chain did
    /// not fail, or was requeued already), `ALREADY_EXISTS` (a chain with
    /// its unique key is queued or running).
    pub async fn requeue_chain(&self, chain_id: &str) -> Result<String> {
        let request = pb::RequeueChainRequest {
            chain_id: chain_id.to_owned(),
        };
        let response = self
            .client
            .call(|mut s| {
                let request = request.clone();
                async move { s.admin.requeue_chain(request).await }
            })
            .await?;
        Ok(response.chain_id)
    }

    /// Drains the connected workers with this name (or worker id): they get
    /// no new work and finish what they run. Returns them.
    ///
    /// # Errors
    ///
    /// [`Error::Status`], `NOT_FOUND` when no connected worker matches.
    pub async fn drain_worker(&self, worker: impl Into<String>) -> Result<Vec<pb::WorkerInfo>> {
        let request = pb::DrainWorkerRequest {
            worker: worker.into(),
        };
        let response = self
            .client
            .call(|mut s| {
                let request = request.clone();
                async move { s.admin.drain_worker(request).await }
            })
            .await?;
        Ok(response.workers)
    }

    /// Adds a periodic schedule, or replaces the one with the same name.
    ///
    /// # Errors
    ///
    /// [`Error::Status`], `INVALID_ARGUMENT` naming what is wrong (the cron
    /// expression, the time zone, the chain).
    pub async fn put_schedule(&self, schedule: pb::Schedule) -> Result<pb::ScheduleInfo> {
        let request = pb::PutScheduleRequest {
            schedule: Some(schedule),
        };
        self.client
            .call(|mut s| {
                let request = request.clone();
                async move { s.admin.put_schedule(request).await }
            })
            .await
    }

    /// Adds a [`Schedule`](crate::Schedule), or replaces the one with the
    /// same name: [`put_schedule`](Self::put_schedule) with the builder's
    /// schedule.
    ///
    /// # Errors
    ///
    /// Those of [`put_schedule`](Self::put_schedule).
    pub async fn schedule(&self, schedule: crate::Schedule) -> Result<pb::ScheduleInfo> {
        self.put_schedule(schedule.into()).await
    }

    /// Every schedule, by name, with its next fire times.
    ///
    /// # Errors
    ///
    /// [`Error::Status`] when the call fails.
    pub async fn list_schedules(&self) -> Result<Vec<pb::ScheduleInfo>> {
        let response = self
            .client
            .call(|mut s| async move { s.admin.list_schedules(pb::ListSchedulesRequest {}).await })
            .await?;
        Ok(response.schedules)
    }

    /// Pauses (`true`) or resumes (`false`) a schedule.
    ///
    /// # Errors
    ///
    /// [`Error::Status`], `NOT_FOUND` for an unknown name.
    pub async fn pause_schedule(
        &self,
        name: impl Into<String>,
        paused: bool,
    ) -> Result<pb::ScheduleInfo> {
        let request = pb::PauseScheduleRequest {
            name: name.into(),
            paused,
        };
        self.client
            .call(|mut s| {
                let request = request.clone();
                async move { s.admin.pause_schedule(request).await }
            })
            .await
    }

    /// Removes a schedule; the chains it submitted are left alone.
    ///
    /// # Errors
    ///
    /// [`Error::Status`], `NOT_FOUND` for an unknown name.
    pub async fn remove_schedule(&self, name: impl Into<String>) -> Result<()> {
        let request = pb::RemoveScheduleRequest { name: name.into() };
        self.client
            .call(|mut s| {
                let request = request.clone();
                async move { s.admin.remove_schedule(request).await }
            })
            .await?;
        Ok(())
    }
}

impl pb::ThrottleIdentity {
    /// The identity (task name, key) of a throttle that is not shared.
    pub fn task(task_name: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            task_name: task_name.into(),
            key: key.into(),
        }
    }

    /// The identity of a shared key, across task names.
    pub fn shared(key: impl Into<String>) -> Self {
        Self::task(String::new(), key)
    }
}

#[cfg(test)]
mod tests;
