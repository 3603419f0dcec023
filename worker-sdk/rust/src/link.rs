//! One connection to the broker, on the wire: opening the session and
//! reading the Welcome, telling a broken stream worth retrying from a
//! refusal, closing cleanly with Goodbye, and the delay between attempts.
//!
//! The runtime decides what to send and when; this module only knows how a
//! stream starts, breaks and ends, and how what is sent goes in frames:
//! once the Welcome says how large a batch the broker reads, whatever is
//! queued when the stream is polled leaves in as few frames as that allows
//! ([`baton::batch`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use baton::pb::{self, worker_message::Msg};
use futures::Stream;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status, Streaming};
use tracing::{debug, info};

use crate::error::Error;
use crate::ledger::LinkId;

/// First delay before reconnecting; doubled after each failed attempt.
pub(crate) const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Upper bound of the reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long to wait, after Goodbye, for the broker to end its side.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Most queued messages taken for one frame.
const BATCH_MESSAGES: usize = 512;
/// The largest BrokerBatch this worker reads (tonic decodes up to 4 MiB).
pub(crate) const BATCH_BYTES_DOWN: u64 = 1 << 20;

/// One connection's outbound half.
pub(crate) struct Link {
    pub(crate) id: LinkId,
    /// Feeds the request stream; dropping it ends the stream cleanly.
    tx: mpsc::UnboundedSender<pb::WorkerMessage>,
    /// The largest batch the broker reads: 0 (one by one) until the
    /// Welcome tells.
    batch_bytes: Arc<AtomicUsize>,
}

impl Link {
    /// A link and the request stream it feeds.
    pub(crate) fn new(id: LinkId) -> (Self, Frames) {
        let (tx, rx) = mpsc::unbounded_channel();
        let batch_bytes = Arc::new(AtomicUsize::new(0));
        let outbound = Frames {
            rx,
            limit: Arc::clone(&batch_bytes),
            ready: VecDeque::new(),
        };
        let link = Self {
            id,
            tx,
            batch_bytes,
        };
        (link, outbound)
    }

    /// From the Welcome: batches up to `bytes` may be sent from now on.
    pub(crate) fn allow_batches(&self, bytes: u64) {
        let bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
        self.batch_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Queues a message on the stream.
    pub(crate) fn send(&self, msg: Msg) {
        // A closed channel means the connection is gone; the inbound side
        // reports that, and the ledger keeps what must be re-sent.
        let _ = self.tx.send(pb::WorkerMessage { msg: Some(msg) });
    }
}

/// A link's request stream: every message queued when it is polled, packed
/// into frames within the broker's batch limit.
pub(crate) struct Frames {
    rx: mpsc::UnboundedReceiver<pb::WorkerMessage>,
    limit: Arc<AtomicUsize>,
    /// Frames packed and not yet taken by the stream.
    ready: VecDeque<pb::WorkerMessage>,
}

impl Stream for Frames {
    type Item = pb::WorkerMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(frame) = self.ready.pop_front() {
            return Poll::Ready(Some(frame));
        }
        let Some(first) = ready!(self.rx.poll_recv(cx)) else {
            return Poll::Ready(None);
        };
        let mut queued = vec![first];
        while queued.len() < BATCH_MESSAGES {
            match self.rx.try_recv() {
                Ok(message) => queued.push(message),
                Err(_) => break,
            }
        }
        let limit = self.limit.load(Ordering::Relaxed);
        self.ready.extend(baton::batch::pack(queued, limit));
        Poll::Ready(self.ready.pop_front())
    }
}

/// Why a connection ended, when the worker goes on.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Disconnect {
    #[error("cannot connect: {0}")]
    Connect(#[source] tonic::transport::Error),
    #[error("stream failed: {0}")]
    Status(Status),
    #[error("the broker closed the stream")]
    Closed,
    #[error("no Welcome within {0:?}")]
    Timeout(Duration),
}

/// Why a connection ended: something to retry, or something to stop for.
pub(crate) enum Broken {
    Transient(Disconnect),
    Fatal(Error),
}

impl From<Status> for Broken {
    /// Statuses that a retry cannot fix stop the worker; the rest
    /// (unavailable, cancelled, internal, ...) are a broker restarting.
    fn from(status: Status) -> Self {
        match status.code() {
            Code::InvalidArgument
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::Unimplemented => Self::Fatal(Error::Rejected(Box::new(status))),
            _ => Self::Transient(Disconnect::Status(status)),
        }
    }
}

/// Opens the session on `channel` with `outbound` (whose first message is
/// the Hello), with the token's `authorization` metadata if any, and reads
/// the Welcome.
pub(crate) async fn greet(
    channel: Channel,
    authorization: Option<AsciiMetadataValue>,
    outbound: Frames,
) -> Result<(pb::Welcome, Streaming<pb::BrokerMessage>), Broken> {
    let mut client = pb::worker_client::WorkerClient::new(channel);
    let mut request = Request::new(outbound);
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value);
    }
    let mut inbound = client.session(request).await?.into_inner();
    match inbound.message().await?.map(|message| message.msg) {
        Some(Some(pb::broker_message::Msg::Welcome(welcome))) => Ok((welcome, inbound)),
        None => Err(Broken::Transient(Disconnect::Closed)),
        Some(other) => Err(Broken::Fatal(Error::Protocol(format!(
            "expected Welcome as the first message, got {other:?}"
        )))),
    }
}

/// Ends a drained connection: Goodbye, end of the request stream, then a
/// short wait for the broker to end its side.
pub(crate) async fn goodbye(link: Link, mut inbound: Streaming<pb::BrokerMessage>) {
    link.send(Msg::Goodbye(pb::Goodbye {}));
    drop(link);
    let closed = async { while let Ok(Some(_)) = inbound.message().await {} };
    if timeout(CLOSE_GRACE, closed).await.is_err() {
        debug!("the broker did not end the stream after Goodbye");
    }
    info!("drained; said goodbye to the broker");
}

/// Reconnect delays: [`BACKOFF_FIRST`], doubling up to [`BACKOFF_MAX`].
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }
}

impl Backoff {
    /// The delay before the next attempt.
    pub(crate) fn next(&mut self) -> Duration {
        let delay = self.next;
        self.next = (delay * 2).min(BACKOFF_MAX);
        delay
    }

    /// Back to the first delay, after a successful connection.
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_to_2s_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<u128> = (0..7).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 2000, 2000]);
        backoff.reset();
        assert_eq!(backoff.next(), BACKOFF_FIRST);
    }

    #[test]
    fn only_unfixable_statuses_stop_the_worker() {
        assert!(matches!(
            Broken::from(Status::unauthenticated("who are you")),
            Broken::Fatal(Error::Rejected(_))
        ));
        assert!(matches!(
            Broken::from(Status::invalid_argument("hello.queues[0]")),
            Broken::Fatal(Error::Rejected(_))
        ));
        assert!(matches!(
            Broken::from(Status::unavailable("restarting")),
            Broken::Transient(Disconnect::Status(_))
        ));
    }
}
