//! The broker's accept loop: which TCP connections the gRPC server gets.
//!
//! tonic's own `TcpIncoming` hands every accepted socket to hyper at once
//! and forgets it. The adversarial review (issue 19, item 2) opened 1,100
//! connections that never sent a byte: hyper waited for their HTTP/2
//! preface forever (its keepalive pings start only after the handshake), and
//! the broker ran out of descriptors. So this module owns the loop:
//!
//! - **Handshake deadline.** Every connection must complete its handshake
//!   (the TLS handshake, when TLS is on, and the 24-byte HTTP/2 client
//!   preface) within `handshake_timeout` of being accepted, or it is
//!   closed. The TLS handshake runs in a task of its own, bounded by that
//!   deadline; the preface is watched by [`Guarded`], which wraps the stream
//!   hyper reads (so, with TLS, it counts decrypted bytes) and fails the
//!   connection's reads once the deadline passes without them. hyper and
//!   hyper-util have no such timeout for HTTP/2 (`header_read_timeout` is
//!   HTTP/1 only), which is why it is done here.
//! - **A cap on connections.** At most `max_connections` are open at once;
//!   one accepted past the cap is closed at once, so the descriptors left
//!   serve the store and the connections already open. The cap must sit
//!   well below the descriptor limit (see [`connection_cap`]).
//! - **Descriptor exhaustion is weathered, not fatal.** `accept` failing
//!   with EMFILE or ENFILE (or ENOBUFS, ENOMEM) pauses the loop for
//!   [`ACCEPT_PAUSE`] and goes on, as hyper's old `sleep_on_errors` did:
//!   spinning on the error would burn a core, and ending the loop would
//!   stop a broker that is still serving what it can. No accept error ends
//!   the loop.
//!
//! TLS is done here too, with tokio-rustls, rather than by tonic's
//! `tls_config`: tonic would do its handshake on the stream it is given,
//! under [`Guarded`], where the preface cannot be seen. The streams handed
//! to tonic keep tonic's connection info (`TcpConnectInfo`, or
//! `TlsConnectInfo<TcpConnectInfo>` with the peer's certificates), so
//! `Request::peer_certs` and mutual TLS work as before.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;

/// How long the accept loop pauses after an error such as EMFILE.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// The HTTP/2 client preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`: once
/// this many bytes were read, hyper either accepted the preface or closed
/// the connection.
const PREFACE_LEN: usize = 24;
/// Descriptors kept back from connections: the store's files, the metrics
/// listener, logs and the listener itself (see [`connection_cap`]).
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// How connections are accepted.
#[derive(Clone, Debug)]
pub struct Settings {
    /// From accept to the end of the HTTP/2 preface (TLS handshake
    /// included).
    pub handshake_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// The connection cap that the process's descriptor limit allows: at most
/// `requested`, and at most the soft `RLIMIT_NOFILE` less
/// [`RESERVED_DESCRIPTORS`], so that a flood of connections cannot take the
/// descriptors the store needs to write (a broker that cannot open or sync
/// its files stops acknowledging anything). Logs a warning when it lowers
/// the cap.
pub fn connection_cap(requested: usize) -> usize {
    #[cfg(target_os = "linux")]
    {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        if let Some(limit) = limit {
            let room = limit.saturating_sub(RESERVED_DESCRIPTORS).max(1);
            let room = usize::try_from(room).unwrap_or(usize::MAX);
            if requested > room {
                tracing::warn!(
                    max_connections = requested,
                    descriptor_limit = limit,
                    reserved = RESERVED_DESCRIPTORS,
                    cap = room,
                    "--max-connections is more than the descriptor limit allows; \
                     raise `ulimit -n` (the hard limit) to allow more"
                );
                return room;
            }
        }
    }
    requested
}

/// The stream of accepted, handshaken plaintext connections for tonic's
/// `serve_with_incoming_shutdown`. The loop ends with `stop`.
pub fn plain(
    listener: TcpListener,
    settings: Settings,
    stop: CancellationToken,
) -> ReceiverStream<Result<Guarded<TcpStream>, io::Error>> {
    serve(listener, settings, stop, |tcp| async move { Ok(tcp) })
}

/// The same over TLS: the handshake runs in a task of its own, within the
/// handshake deadline.
pub fn tls(
    listener: TcpListener,
    settings: Settings,
    acceptor: TlsAcceptor,
    stop: CancellationToken,
) -> ReceiverStream<Result<Guarded<TlsStream<TcpStream>>, io::Error>> {
    serve(listener, settings, stop, move |tcp| {
        let acceptor = acceptor.clone();
        async move { acceptor.accept(tcp).await }
    })
}

/// Connections waiting for tonic to take them.
const HANDOFF: usize = 64;

fn serve<IO, F, Fut>(
    listener: TcpListener,
    settings: Settings,
    stop: CancellationToken,
    upgrade: F,
) -> ReceiverStream<Result<Guarded<IO>, io::Error>>
where
    IO: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<IO>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(HANDOFF);
    tokio::spawn(accept_loop(listener, settings, stop, upgrade, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop<IO, F, Fut>(
    listener: TcpListener,
    settings: Settings,
    stop: CancellationToken,
    upgrade: F,
    tx: mpsc::Sender<Result<Guarded<IO>, io::Error>>,
) where
    IO: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = io::Result<IO>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(
        settings.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _peer)) => tcp,
            Err(e) => {
                if !is_per_connection(&e) {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM or anything else
                    // about the listener: pause rather than spin, and go on.
                    tracing::warn!(cause = %e, pause_ms = ACCEPT_PAUSE.as_millis(), "accept failed; pausing");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::debug!(
                max_connections = settings.max_connections,
                "connection refused: at the connection cap"
            );
            drop(tcp);
            continue;
        };
        // No Nagle: a worker's outcome and the next assignment are small
        // messages that must not wait for delayed ACKs (40 ms each).
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + settings.handshake_timeout;
        let handshake = upgrade(tcp);
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout_at(deadline, handshake).await {
                Ok(Ok(io)) => {
                    let _ = tx.send(Ok(Guarded::new(io, deadline, permit))).await;
                }
                Ok(Err(e)) => tracing::debug!(cause = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        });
    }
}

/// Errors of one connection that went away before it was accepted: the
/// next accept may well succeed.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// An accepted connection: holds its place under the connection cap, and
/// fails once its handshake deadline passes before the HTTP/2 preface was
/// read (see the module doc).
pub struct Guarded<IO> {
    io: IO,
    /// Until the preface is in: when the handshake must be done by.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Bytes read so far, while `deadline` is set.
    read: usize,
    _slot: OwnedSemaphorePermit,
}

impl<IO> Guarded<IO> {
    fn new(io: IO, deadline: Instant, slot: OwnedSemaphorePermit) -> Self {
        Guarded {
            io,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
            read: 0,
            _slot: slot,
        }
    }

    /// An error once the handshake deadline passed without the preface;
    /// registers the deadline's wake-up otherwise.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(deadline) = &mut self.deadline else {
            return Ok(());
        };
        if deadline.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no HTTP/2 preface within the handshake timeout",
        ))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Err(e) = self.check_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.deadline.is_some() && matches!(polled, Poll::Ready(Ok(()))) {
            self.read += buf.filled().len() - before;
            if self.read >= PREFACE_LEN {
                self.deadline = None;
            }
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Err(e) = self.check_deadline(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    /// The wrapped stream's: tonic's `TcpConnectInfo`, or its
    /// `TlsConnectInfo` with the peer's certificates.
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, (server, _)) =
            tokio::join!(client, async { listener.accept().await.unwrap() });
        (client.unwrap(), server)
    }

    fn slot() -> OwnedSemaphorePermit {
        Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap()
    }

    #[tokio::test]
    async fn reads_fail_after_the_deadline_unless_the_preface_came() {
        let (_silent_client, server) = pair().await;
        let deadline = Instant::now() + Duration::from_millis(50);
        let mut guarded = Guarded::new(server, deadline, slot());
        let mut buf = [0u8; 64];
        let e = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);

        let (mut client, server) = pair().await;
        let deadline = Instant::now() + Duration::from_millis(50);
        let mut guarded = Guarded::new(server, deadline, slot());
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut preface = [0u8; PREFACE_LEN];
        guarded.read_exact(&mut preface).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        client.write_all(b"later").await.unwrap();
        let n = guarded.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"later", "no deadline once the preface is in");
    }
}
