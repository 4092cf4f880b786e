//! The listener: accepts TCP connections and serves HTTP/1.1 and HTTP/2 on each, with every
//! connection-level limit set explicitly (hyper's builder, not tonic's, which passes `None` for
//! some HTTP/2 limits and so turns hyper's safe defaults off).
//!
//! A connection over `MAX_CONNECTIONS` is closed at once, before the kernel runs out of
//! descriptors, and so is one over `MAX_CONNECTIONS_PER_CLIENT` from one client (`clients`);
//! a failed `accept` (EMFILE, ENFILE, ENOBUFS…) backs off instead of spinning;
//! a connection with no call in flight for `CONNECTION_IDLE_TIMEOUT_MS` is closed gracefully,
//! and one whose peer takes none of what it is sent for `CONNECTION_WRITE_TIMEOUT_MS` is cut off:
//! on the socket, or (an HTTP/2 client that opens no flow-control window) on an answer that
//! holds charged bytes (`budget::AnswerWatch`).
//! With TLS configured (`tls`), every connection is a TLS one, handshaken in its own task. The
//! handshake, and then what tells the HTTP version, are each due within the header timeout
//! (or the idle one, if shorter).

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, body::Body, extract::ConnectInfo};
use http::{Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::TcpListener,
    sync::Semaphore,
};
use tokio_io_timeout::TimeoutStream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt;

use crate::{
    budget::AnswerWatch, extensions::PeerCertificate, layers::GuardedBody, metrics::Metrics,
};

mod clients;
mod pace;
mod tls;

pub use clients::default_max_connections_per_client;
use clients::{ClientConnections, ClientCount, ClientPlace};
use pace::{HeadGate, HeadPace, HeadTicket, MAX_WAITING_HEADS, OwnCalls, QUIET_HEADS, QuietPass};
pub use tls::{Tls, TlsError, TlsSettings};

/// Connection-level limits, each stated in the configuration with its default.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    /// Open connections beyond which new ones are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Open connections from one client beyond which its new ones are closed on arrival.
    pub max_connections_per_client: usize,
    /// Peers whose connections are not counted per client (each carries many clients).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Leading bits of an IPv6 address that name one client.
    pub ipv6_client_prefix: u8,
    /// A connection with no call in flight for this long is closed (GOAWAY on HTTP/2).
    pub idle_timeout: Duration,
    /// A TLS handshake, then what tells a connection's HTTP version, then an HTTP/1.1
    /// request's headers must each arrive within this time (slowloris).
    pub header_read_timeout: Duration,
    /// A write the peer leaves pending this long (it stopped reading) closes the connection.
    pub write_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams a client may make the server reset before the connection is closed
    /// (the rapid-reset attack, CVE-2023-44487).
    pub max_local_error_reset_streams: usize,
    /// HTTP/2 streams a client may open and reset before the server accepts them.
    pub max_pending_accept_reset_streams: usize,
    /// Largest header list hyper takes for one HTTP/2 request, in bytes (a ceiling: the layers
    /// refuse a list past `MAX_HEADER_LIST_BYTES` in the caller's protocol), and most headers
    /// of an HTTP/1.1 request.
    pub max_header_list_bytes: u32,
    pub max_headers: usize,
    /// HTTP/2 keepalive pings: interval, and how long a ping may go unanswered.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

impl ListenerSettings {
    /// The defaults, with `max_connections` and `idle_timeout` as given.
    pub fn new(max_connections: usize, idle_timeout: Duration) -> Self {
        Self {
            max_connections,
            max_connections_per_client: default_max_connections_per_client(max_connections),
            trusted_proxies: Vec::new(),
            ipv6_client_prefix: 64,
            idle_timeout,
            header_read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            max_concurrent_streams: 200,
            max_local_error_reset_streams: 1024,
            max_pending_accept_reset_streams: 20,
            // A ceiling a little past what the layers allow: they refuse a list past
            // `MAX_HEADER_LIST_BYTES` in the caller's protocol, as hyper cannot (its 431).
            max_header_list_bytes: crate::layers::HEADER_LIST_CEILING as u32,
            max_headers: 100,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// Raises the soft descriptor limit to the hard one, and returns the limit in force (`None`
/// where it cannot be read).
pub fn raise_descriptor_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(err) => {
            tracing::warn!(error = %err, "cannot raise the open-files limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
        }
    }
}

/// Descriptors kept back from connections for the store, the backend's connections, the
/// runtime and the log: a quarter of the limit, at least 64.
pub fn reserved_descriptors(limit: u64) -> u64 {
    (limit / 4).max(64)
}

/// The connection cap for a descriptor limit when none is configured: what the reserve leaves,
/// at most 10,000 (each open connection also holds memory).
pub fn default_max_connections(descriptor_limit: Option<u64>) -> usize {
    let by_descriptors = descriptor_limit.map_or(u64::MAX, |limit| {
        limit.saturating_sub(reserved_descriptors(limit)).max(1)
    });
    usize::try_from(by_descriptors.min(10_000)).unwrap_or(10_000)
}

/// Accepts and serves connections until `shutdown` is cancelled, then stops accepting, asks
/// every connection to finish gracefully and waits for them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ListenerSettings,
    metrics: Arc<Metrics>,
    tls: Option<Tls>,
    shutdown: CancellationToken,
) {
    let builder = http_builder(&settings);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let clients = ClientConnections::new(
        settings.max_connections_per_client,
        settings.trusted_proxies.clone(),
        settings.ipv6_client_prefix,
    );
    let gate = HeadGate::new(
        MAX_WAITING_HEADS,
        QUIET_HEADS,
        metrics.http2_reads_held(),
        metrics.http2_quiet_reads(),
    );
    let connections = TaskTracker::new();
    let mut accept_errors = AcceptBackoff::new();
    let mut refusals = LogEvery::new(Duration::from_secs(10));
    let mut client_refusals = LogEvery::new(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => {
                accept_errors.succeeded();
                accepted
            }
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                metrics.accept_failed();
                let delay = accept_errors.failed(&err);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Closing it now, rather than leaving it in the backlog, tells the client at once
            // and keeps the descriptor for connections already being served.
            drop(stream);
            metrics.connection_refused();
            refusals.count();
            if refusals.due() {
                tracing::warn!(
                    max_connections = settings.max_connections,
                    refused_since_last_report = refusals.take_count(),
                    "connection refused: MAX_CONNECTIONS connections are open"
                );
            }
            continue;
        };
        let place = match clients.admit(remote.ip()) {
            Ok(place) => place,
            Err(at_cap) => {
                drop((stream, slot));
                metrics.connection_refused_per_client();
                client_refusals.count();
                if client_refusals.due() {
                    tracing::warn!(
                        client = %at_cap.0,
                        max_connections_per_client = settings.max_connections_per_client,
                        refused_since_last_report = client_refusals.take_count(),
                        "connection refused: its client has MAX_CONNECTIONS_PER_CLIENT \
                         connections open"
                    );
                }
                continue;
            }
        };
        // gRPC writes headers, data and trailers as separate frames; Nagle's algorithm would
        // hold them for the peer's ACK.
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let router = router.clone();
        let gate = Arc::clone(&gate);
        let metrics = Arc::clone(&metrics);
        let idle_timeout = settings.idle_timeout;
        let write_timeout = settings.write_timeout;
        let header_timeout = settings.header_read_timeout;
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let _gauge = metrics.connection_opened();
            // A connection holds a `MAX_CONNECTIONS` place, so it must say what it is soon:
            // its TLS handshake, then what tells its HTTP version (a request line's first
            // byte, or the whole HTTP/2 preface), each within the header timeout (or the idle
            // one, if shorter). hyper's own header timeout starts only once it knows the
            // version, and a silent connection would otherwise wait out the idle timeout.
            let due = header_timeout.min(idle_timeout);
            // A TLS client's hello is awaited on the socket itself: a TCP check (a kubelet
            // probe, a load balancer) that connects and closes, or a peer that sends nothing,
            // is closed quietly, not counted as a failed handshake.
            let hello_by = tokio::time::Instant::now() + due;
            if tls.is_some() {
                let mut first = [0u8; 1];
                let hello = tokio::time::timeout_at(hello_by, stream.peek(&mut first));
                tokio::select! {
                    hello = hello => if !matches!(hello, Ok(Ok(1))) {
                        return;
                    },
                    () = shutdown.cancelled() => return,
                }
            }
            // Below TLS and HTTP, so a peer that stops reading its socket is cut off whatever
            // it was sent: a large answer, a live subscription, HTTP/2 frames. Without it the
            // connection and everything queued for it would stay until the peer closed it. (An
            // HTTP/2 peer that reads the socket but opens no flow-control window stalls no
            // write: the connection's `AnswerWatch` covers the answers that hold charged bytes.)
            let mut stream = TimeoutStream::new(stream);
            stream.set_write_timeout(Some(write_timeout));
            let stream = Box::pin(stream);
            let connection = Connection {
                remote,
                builder,
                router,
                gate,
                client: place.as_ref().map(ClientPlace::count),
                idle_timeout,
                write_timeout,
                shutdown,
            };
            match tls {
                None => {
                    if let Some(stream) = connection.told(stream, due).await {
                        connection.serve(stream, None).await;
                    }
                }
                Some(tls) => {
                    // In this connection's task, so a slow handshake holds up no other; due
                    // by the time its hello was.
                    let handshake =
                        tokio::time::timeout_at(hello_by, tls.acceptor().accept(stream));
                    let handshake = tokio::select! {
                        handshake = handshake => handshake,
                        () = connection.shutdown.cancelled() => return,
                    };
                    match handshake {
                        Ok(Ok(stream)) => {
                            let peer = tls::peer_certificate(stream.get_ref().1).map(Arc::new);
                            if let Some(stream) = connection.told(stream, due).await {
                                connection.serve(stream, peer).await;
                            }
                        }
                        Ok(Err(err)) => {
                            metrics.tls_handshake_failed();
                            tracing::debug!(error = %err, %remote, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics.tls_handshake_failed();
                            tracing::debug!(%remote, "TLS handshake timed out");
                        }
                    }
                }
            }
            drop((place, slot));
        });
    }
    // Dropping the listener closes the port at once: new clients are refused, not left hanging.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// HTTP/2's connection preface: a client that starts with part of it has said nothing yet.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes sent tell the HTTP version: any first byte but the preface's, or the
/// whole preface. `None`: the peer closed (or failed) first. What was read is handed back by
/// [`Rewound`], so hyper reads the stream from its first byte.
async fn read_told<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Head> {
    let mut head = Head {
        bytes: [0; H2_PREFACE.len()],
        len: 0,
    };
    loop {
        match stream.read(&mut head.bytes[head.len..]).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.len += n,
        }
        if head.len == H2_PREFACE.len() || head.bytes[..head.len] != H2_PREFACE[..head.len] {
            return Some(head);
        }
    }
}

/// The bytes [`read_told`] read: at most the preface's length, kept inline.
struct Head {
    bytes: [u8; H2_PREFACE.len()],
    len: usize,
}

/// A stream whose first bytes were read ahead (to tell its protocol): reads give those back
/// first, then the stream's own; writes go straight through. Its shutdown lingers ([`Linger`]).
struct Rewound<S> {
    head: Head,
    at: usize,
    stream: S,
    /// On HTTP/2, what its header blocks cost the connection's turn ([`HeadPace`]).
    pace: Option<HeadPace>,
    /// The connection's calls, and its client's connections, which its pace asks about.
    activity: Arc<Activity>,
    client: Option<ClientCount>,
    /// Its pace's quiet place, handed to the next request ([`QuietPass`]).
    pass: QuietPass,
    /// Set by an answer that left its request's body unread: then the close lingers.
    lingers: Arc<AtomicBool>,
    linger: Option<Linger>,
}

/// How long, and for how many bytes, a closing connection goes on reading (and dropping) what
/// its client still sends after the close was sent, when an answer left its request's body
/// unread (see `Served`): hyper then closes the HTTP/1.1 connection, and closed at once, the
/// rest of the body would meet a closed socket, and the client's write fail (or a reset discard
/// the answer it has not read yet). Reading it out lets the client finish sending, then read
/// the answer and the end. Other closes do not linger.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

struct Linger {
    until: Pin<Box<tokio::time::Sleep>>,
    left: usize,
    shut: bool,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewound<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.head.len {
            let n = (this.head.len - this.at).min(buf.remaining());
            buf.put_slice(&this.head.bytes[this.at..this.at + n]);
            this.at += n;
            return Poll::Ready(Ok(()));
        }
        let Some(pace) = this.pace.as_mut() else {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        };
        let calls = this.activity.own_calls(this.client.as_ref());
        let Poll::Ready(most) = pace.poll_ready(cx, calls) else {
            pace.waited();
            return Poll::Pending;
        };
        let read = match most {
            Some(most) => {
                // Read into the caller's buffer, cut to `most` (zeroed first: no unsafe here).
                let most = most.min(buf.remaining());
                let mut part = tokio::io::ReadBuf::new(buf.initialize_unfilled_to(most));
                let read = Pin::new(&mut this.stream).poll_read(cx, &mut part);
                if let Poll::Ready(Ok(())) = read {
                    let n = part.filled().len();
                    pace.read(part.filled());
                    buf.advance(n);
                }
                read
            }
            None => {
                let before = buf.filled().len();
                let read = Pin::new(&mut this.stream).poll_read(cx, buf);
                if let Poll::Ready(Ok(())) = read {
                    pace.read(&buf.filled()[before..]);
                }
                read
            }
        };
        if read.is_pending() {
            pace.waited();
        }
        read
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Rewound<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    // hyper writes headers and body in one vectored write when the stream can.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.lingers.load(Ordering::Acquire) {
            return Pin::new(&mut this.stream).poll_shutdown(cx);
        }
        let linger = this.linger.get_or_insert_with(|| Linger {
            until: Box::pin(tokio::time::sleep(LINGER)),
            left: LINGER_BYTES,
            shut: false,
        });
        if !linger.shut {
            std::task::ready!(Pin::new(&mut this.stream).poll_shutdown(cx))?;
            linger.shut = true;
        }
        let mut scratch = [0u8; 8192];
        loop {
            if linger.until.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    linger.left = linger.left.saturating_sub(buf.filled().len());
                    if linger.left == 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
                // The client's end (or its error): nothing more to wait for.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// See [`http_builder`].
const MAX_HTTP1_BUFFER: usize = 64 * 1024;
const MAX_H2_SEND_BUFFER: usize = 64 * 1024;

fn http_builder(settings: &ListenerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // hyper enforces the header read timeout only when it has a timer.
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_headers(settings.max_headers)
        // What a request's head may take while it arrives (hyper's default is about 400 KiB,
        // held per connection for as long as the head takes).
        .max_buf_size(MAX_HTTP1_BUFFER);
    builder
        .http2()
        .timer(TokioTimer::new())
        // What an answer may queue beyond its client's window (hyper's default is 400 KiB a
        // stream): past it the answer waits in its body, watched by its connection.
        .max_send_buf_size(MAX_H2_SEND_BUFFER)
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_local_error_reset_streams(settings.max_local_error_reset_streams)
        .max_pending_accept_reset_streams(settings.max_pending_accept_reset_streams)
        .max_header_list_size(settings.max_header_list_bytes)
        .keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout);
    builder
}

/// What serving one accepted connection needs, whatever it is carried over.
struct Connection {
    remote: SocketAddr,
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    /// The process's count of requests handed on and not yet begun.
    gate: Arc<HeadGate>,
    /// Its client's open connections (`None`: not counted).
    client: Option<ClientCount>,
    idle_timeout: Duration,
    write_timeout: Duration,
    shutdown: CancellationToken,
}

impl Connection {
    /// `stream` with what tells its HTTP version read ahead, if that arrives within `due`;
    /// `None` (the connection to be closed) if it does not, or the gateway stops first.
    async fn told<S>(&self, mut stream: S, due: Duration) -> Option<Rewound<S>>
    where
        S: AsyncRead + Unpin,
    {
        let told = tokio::time::timeout(due, read_told(&mut stream));
        let head = tokio::select! {
            told = told => match told {
                Ok(head) => head?,
                Err(_) => {
                    tracing::debug!(
                        remote = %self.remote,
                        "closing a connection that did not say its protocol in time"
                    );
                    return None;
                }
            },
            () = self.shutdown.cancelled() => return None,
        };
        let pass = QuietPass::default();
        let pace = (head.bytes[..head.len] == H2_PREFACE[..])
            .then(|| HeadPace::new(Arc::clone(&self.gate), pass.clone()));
        Some(Rewound {
            head,
            at: 0,
            stream,
            pace,
            activity: Arc::new(Activity::new()),
            client: self.client.clone(),
            pass,
            lingers: Arc::new(AtomicBool::new(false)),
            linger: None,
        })
    }

    async fn serve<S>(self, stream: Rewound<S>, peer: Option<Arc<PeerCertificate>>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let lingers = Arc::clone(&stream.lingers);
        let activity = Arc::clone(&stream.activity);
        let pass = stream.pass.clone();
        let Self {
            remote,
            builder,
            router,
            gate,
            client: _,
            idle_timeout,
            write_timeout,
            shutdown,
        } = self;
        let answers = Arc::new(AnswerWatch::new());
        let service = ConnectionService {
            router,
            remote,
            peer,
            gate,
            pass,
            activity: Arc::clone(&activity),
            answers: Arc::clone(&answers),
            lingers,
        };
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let mut closing = false;
        // When an idle connection was asked to close, by which it must have: its streams may
        // never end if their client opens no window (an answer small enough for HTTP/2's
        // buffers has left its body, and its watch, whole), and an idle connection has no call
        // of its own left to wait for.
        let mut idle_closed: Option<tokio::time::Instant> = None;
        loop {
            let idle_check = activity.idle_deadline(idle_timeout);
            let stall_check = answers.deadline(write_timeout);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, %remote, "connection ended with an error");
                    }
                    return;
                }
                () = shutdown.cancelled(), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                () = tokio::time::sleep_until(idle_check), if !closing => {
                    if activity.is_idle_for(idle_timeout) {
                        tracing::debug!(%remote, "closing an idle connection");
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                        idle_closed = Some(tokio::time::Instant::now() + write_timeout);
                    }
                }
                () = sleep_until_some(idle_closed) => {
                    tracing::debug!(
                        %remote,
                        "dropping an idle connection that did not close in time \
                         (CONNECTION_WRITE_TIMEOUT_MS)"
                    );
                    return;
                }
                // Also while closing: a stalled answer would hold a graceful close forever.
                () = stalled_or_new(&answers, stall_check) => {
                    if answers.is_stalled(write_timeout) {
                        // Dropping the connection closes it, and frees what its answers hold.
                        tracing::debug!(
                            %remote,
                            "closing a connection whose client takes nothing of an answer \
                             it asked for (CONNECTION_WRITE_TIMEOUT_MS)"
                        );
                        return;
                    }
                }
            }
        }
    }
}

/// Resolves at `at`; never without one.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves at `deadline`, or when an answer starts being watched or cuts the connection.
async fn stalled_or_new(answers: &AnswerWatch, deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::select! {
            () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {}
            () = answers.cut_off() => {}
        },
        None => tokio::select! {
            () = answers.registered() => {}
            () = answers.cut_off() => {}
        },
    }
}

/// What one connection is doing: calls in flight and when the last one started or ended.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    begun: AtomicU64,
    /// Milliseconds since `opened` of the last call's start or end.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            begun: AtomicU64::new(0),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.begun.fetch_add(1, Ordering::Relaxed);
        self.touch();
    }

    fn ended(&self) {
        self.touch();
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// What the connection's pace asks about before a header block.
    fn own_calls(&self, client: Option<&ClientCount>) -> OwnCalls {
        OwnCalls {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            begun: self.begun.load(Ordering::Relaxed),
            client_connections: client.map(ClientCount::get),
        }
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    /// When to look again: the idle timeout after the last call ended, or, while a call is in
    /// flight (its start may be long past), a whole timeout from now. Never a deadline already
    /// passed, which would fire at once, again and again, for as long as the call lasts.
    fn idle_deadline(&self, idle_timeout: Duration) -> tokio::time::Instant {
        let now = Instant::now();
        let at = if self.in_flight.load(Ordering::Relaxed) > 0 {
            now + idle_timeout
        } else {
            (self.last() + idle_timeout).max(now)
        };
        tokio::time::Instant::from_std(at)
    }

    fn is_idle_for(&self, idle_timeout: Duration) -> bool {
        self.in_flight.load(Ordering::Relaxed) == 0 && self.last().elapsed() >= idle_timeout
    }
}

/// The router, called for each request of one connection, with the peer's address as
/// `ConnectInfo` and each call counted in the connection's [`Activity`].
#[derive(Clone)]
struct ConnectionService {
    router: Router,
    remote: SocketAddr,
    /// The client certificate verified at the handshake (mutual TLS), given to every request.
    peer: Option<Arc<PeerCertificate>>,
    /// Counts each request until its task begins ([`HeadGate`]).
    gate: Arc<HeadGate>,
    /// The connection's quiet place, which its next request takes.
    pass: QuietPass,
    activity: Arc<Activity>,
    /// The connection's answers that hold charged bytes, watched for a client that takes none.
    answers: Arc<AnswerWatch>,
    /// Its stream's [`Rewound::lingers`].
    lingers: Arc<AtomicBool>,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<GuardedBody<Option<CallGuard>>>;
    type Error = Infallible;
    type Future = Served;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        // Over HTTP/1.1, what of the request's body the call leaves unread (see `Served`);
        // HTTP/2 ends each stream on its own.
        let unread = (request.version() < http::Version::HTTP_2
            && !http_body::Body::is_end_stream(request.body()))
        .then(|| Arc::new(Mutex::new(None)));
        let mut request = match &unread {
            Some(unread) => {
                let unread = Arc::clone(unread);
                request.map(|body| {
                    Body::new(ReadToEnd {
                        inner: Some(body),
                        unread,
                    })
                })
            }
            None => request.map(Body::new),
        };
        request.extensions_mut().insert(ConnectInfo(self.remote));
        request.extensions_mut().insert(Arc::clone(&self.answers));
        if let Some(peer) = &self.peer {
            request
                .extensions_mut()
                .insert(PeerCertificate::clone(peer));
        }
        let call = CallGuard::start(Arc::clone(&self.activity));
        Served {
            inner: self.router.clone().oneshot(request),
            waiting: Some(self.gate.ticket(&self.pass)),
            call: Some(call),
            answers: Arc::clone(&self.answers),
            unread,
            drain: None,
            lingers: Arc::clone(&self.lingers),
        }
    }
}

/// An HTTP/1.1 request body that, dropped before its end, leaves the rest in `unread` for
/// [`Served`] to read out.
struct ReadToEnd {
    inner: Option<Incoming>,
    unread: Arc<Mutex<Option<Incoming>>>,
}

impl Drop for ReadToEnd {
    fn drop(&mut self) {
        if let Some(body) = self.inner.take()
            && !body.is_end_stream()
            && let Ok(mut unread) = self.unread.lock()
        {
            *unread = Some(body);
        }
    }
}

impl http_body::Body for ReadToEnd {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let Some(body) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) {
            self.inner = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Incoming::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), Incoming::size_hint)
    }
}

/// What of an unread body an answer ready before it waits to read out (so the connection can
/// serve its next request), and how long: past either, the answer says `Connection: close` and
/// the close lingers ([`Linger`]). As hyper's own drain, but told to the client.
const DRAIN_BYTES: usize = 64 * 1024;
const DRAIN_WAIT: Duration = Duration::from_millis(200);

/// An answer held while the rest of its request's body is read out.
struct Drain {
    body: Incoming,
    left: usize,
    until: Pin<Box<tokio::time::Sleep>>,
    response: Response<Body>,
}

impl Drain {
    /// `Ready(true)`: the body was read to its end; `Ready(false)`: given up.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        loop {
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(None) => return Poll::Ready(true),
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, bytes::Buf::remaining);
                    match self.left.checked_sub(len) {
                        Some(left) => self.left = left,
                        None => return Poll::Ready(false),
                    }
                }
                Poll::Ready(Some(Err(_))) => return Poll::Ready(false),
                Poll::Pending => {
                    return if self.until.as_mut().poll(cx).is_ready() {
                        Poll::Ready(false)
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// One request on its way through the router.
    struct Served {
        #[pin]
        inner: tower::util::Oneshot<Router, Request<Body>>,
        // Held until the call's task first runs: until then its decoded head waits with it.
        waiting: Option<HeadTicket>,
        call: Option<CallGuard>,
        answers: Arc<AnswerWatch>,
        // HTTP/1.1: where the call leaves what it did not read of its body.
        unread: Option<Arc<Mutex<Option<Incoming>>>>,
        drain: Option<Drain>,
        // Set when an answer leaves a body unread: the connection's close lingers.
        lingers: Arc<AtomicBool>,
    }
}

impl Future for Served {
    type Output = Result<Response<GuardedBody<Option<CallGuard>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.waiting.take();
        let response = match this.drain.take() {
            Some(mut drain) => match drain.poll(cx) {
                Poll::Ready(drained) => with_close(drain.response, !drained, this.lingers),
                Poll::Pending => {
                    *this.drain = Some(drain);
                    return Poll::Pending;
                }
            },
            None => {
                let response = std::task::ready!(this.inner.poll(cx))?;
                // Answered before its body was read (a refusal from the head alone): the rest
                // is read out first, a little, so the connection serves the next request.
                let unread = this
                    .unread
                    .as_ref()
                    .and_then(|unread| unread.lock().ok()?.take());
                match unread {
                    None => response,
                    Some(body) => {
                        let mut drain = Drain {
                            body,
                            left: DRAIN_BYTES,
                            until: Box::pin(tokio::time::sleep(DRAIN_WAIT)),
                            response,
                        };
                        match drain.poll(cx) {
                            Poll::Ready(drained) => {
                                with_close(drain.response, !drained, this.lingers)
                            }
                            Poll::Pending => {
                                *this.drain = Some(drain);
                                return Poll::Pending;
                            }
                        }
                    }
                }
            }
        };
        // The call stays in flight until its answer has been sent (or dropped), and the
        // connection is closed if its client leaves the answer untaken.
        let call = this.call.take();
        Poll::Ready(Ok(
            response.map(|body| GuardedBody::watched(body, call, this.answers))
        ))
    }
}

/// `response`, telling the client the connection closes after it when `closes` (hyper will
/// close rather than read what is left of the body, so the client must not write its next
/// request there), and making that close linger.
fn with_close(mut response: Response<Body>, closes: bool, lingers: &AtomicBool) -> Response<Body> {
    if closes {
        lingers.store(true, Ordering::Release);
        response.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Marks a call in flight on its connection until dropped.
struct CallGuard(Arc<Activity>);

impl CallGuard {
    fn start(activity: Arc<Activity>) -> Self {
        activity.started();
        Self(activity)
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.0.ended();
    }
}

/// Errors that concern one connection only (the peer gave up while it waited in the backlog):
/// the next accept can follow at once.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// After a failed accept (out of descriptors, out of buffers), wait 10 ms, doubling to 1 s,
/// before the next: the pending connection stays in the backlog, so retrying at once spins.
/// Logs the first failure and then at most once every 10 s.
struct AcceptBackoff {
    delay: Duration,
    log: LogEvery,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn new() -> Self {
        Self {
            delay: Self::FIRST,
            log: LogEvery::new(Duration::from_secs(10)),
        }
    }

    fn failed(&mut self, err: &io::Error) -> Duration {
        let delay = self.delay;
        self.log.count();
        if self.log.due() {
            tracing::error!(
                error = %err,
                failures_since_last_report = self.log.take_count(),
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "cannot accept connections (out of file descriptors? see MAX_CONNECTIONS and \
                 the open-files limit); backing off"
            );
        }
        self.delay = (self.delay * 2).min(Self::MAX);
        delay
    }

    fn succeeded(&mut self) {
        self.delay = Self::FIRST;
    }
}

/// A report that is due at most once per interval, counting what happened in between.
struct LogEvery {
    interval: Duration,
    last: Option<Instant>,
    count: u64,
}

impl LogEvery {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            count: 0,
        }
    }

    fn count(&mut self) {
        self.count += 1;
    }

    fn due(&mut self) -> bool {
        let due = self.last.is_none_or(|last| last.elapsed() >= self.interval);
        if due {
            self.last = Some(Instant::now());
        }
        due
    }

    fn take_count(&mut self) -> u64 {
        std::mem::take(&mut self.count)
    }
}

#[cfg(test)]
mod tests;
