//! Limits that keep an overloaded or abused gateway answering quickly: the request body size
//! (checked against `Content-Length` before anything is read, and enforced while streaming), the
//! body bytes held across all calls at once (`MAX_INFLIGHT_BYTES`, charged before a body is
//! read, or as it streams in when its length is not declared), a per-request timeout (a shorter
//! `grpc-timeout` or `Connect-Timeout-Ms` wins), and a cap on calls in flight beyond which new calls are shed at once
//! with UNAVAILABLE instead of queueing. A compressed HTTP body is inflated here (`inflate`),
//! so the size limit and the budget count what it inflates to.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use axum::{
    body::Body,
    http::{Request, Response, StatusCode, header},
};
use bytes::Bytes;
use dashmap::DashMap;
use futures_util::future::{Either, Ready};
use ipnet::IpNet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Code;
use tower::{Layer, Service};

use super::{
    after::{AfterAnswer, Answering},
    guard::{Exempt, Policy},
    inflate::{self, InflateLimits},
};
use crate::{
    answer::{Caller, Rejection},
    budget::{self, AnswerClock, AnswerWatch, Charge, InflightBytes},
    extensions::{ClientIp, Deadline, NoReturn, connect_timeout, names},
    identity::Identity,
};

/// A request body charged frame by frame as it arrives (never by what it declares, which would
/// let a client reserve the budget without sending a byte), and cut off past `max_bytes`.
struct ChargedBody {
    inner: Body,
    charge: Arc<Charge>,
    received: usize,
    max_bytes: usize,
    too_large: Arc<AtomicBool>,
    /// Set when the body could not be read: its framing is malformed (a chunk size that is
    /// not hex) or its transfer broke off.
    broken: Arc<AtomicBool>,
}

impl http_body::Body for ChargedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        // A body a layer refused with a status of its own (`codecs`: a second message) is
        // answered that way, not as a body that could not be read.
        if let Poll::Ready(Some(Err(err))) = &polled
            && !carries_status(err)
        {
            self.broken.store(true, Ordering::Release);
        }
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let len = data.len();
            self.received = self.received.saturating_add(len);
            if self.received > self.max_bytes {
                self.too_large.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(axum::Error::new(
                    "the request body is over MAX_REQUEST_BODY_SIZE",
                ))));
            }
            if self.charge.add(len).is_err() {
                self.charge.mark_exhausted();
                return Poll::Ready(Some(Err(axum::Error::new(
                    "the gateway holds MAX_INFLIGHT_BYTES of request bodies",
                ))));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a body error is a `tonic::Status` a layer raised (the service answers it as is).
fn carries_status(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(err) = source {
        if err.is::<tonic::Status>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// A response body that holds `guard` until the body is sent or dropped: what a call holds
/// (a permit, its connection's in-flight mark) stays held while its answer streams.
///
/// Watched ([`GuardedBody::watched`]), its connection is closed when it leaves the answer
/// untaken too long, whatever the answer: an HTTP/2 client that opens no flow-control window
/// is never asked for a byte, so no write stalls and no other timeout fires, while each answer
/// it asked for stays in memory (and holds its connection's place). As [`ChargedAnswer`] does,
/// it hands data on in slices and never reports its end early; an answer with nothing to hand
/// over yet (a live stream between messages) waits on itself, not on its client.
pub struct GuardedBody<G> {
    inner: Body,
    _guard: G,
    clock: Option<Arc<AnswerClock>>,
    slices: Slices,
    /// Some of the answer was handed over (from then on, its end is told only when polled).
    begun: bool,
    ended: bool,
}

impl<G> GuardedBody<G> {
    pub fn new(inner: Body, guard: G) -> Self {
        Self {
            inner,
            _guard: guard,
            clock: None,
            slices: Slices::default(),
            begun: false,
            ended: false,
        }
    }

    /// Watched by its connection's `answers` until it ends.
    pub fn watched(inner: Body, guard: G, answers: &AnswerWatch) -> Self {
        Self {
            clock: Some(answers.watch()),
            ..Self::new(inner, guard)
        }
    }
}

/// The most of an answer handed to the connection at once.
const ANSWER_SLICE: usize = 64 * 1024;

/// Frames larger than [`ANSWER_SLICE`] cut into slices: HTTP/2 asks for an answer's next frame
/// only once its client's window has taken the last, so the wait between two is the time a
/// client takes a slice, not a whole answer (a slow but reading client is never taken for a
/// stalled one).
#[derive(Default)]
struct Slices {
    /// What is left of the frame being cut.
    rest: Bytes,
}

impl Slices {
    /// The next slice of the frame being cut, if any is left.
    fn next(&mut self) -> Option<http_body::Frame<Bytes>> {
        if self.rest.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.rest);
        Some(http_body::Frame::data(self.cut(rest)))
    }

    /// `frame`, its data cut to a slice (what is left waits for [`Slices::next`]).
    fn first(&mut self, frame: http_body::Frame<Bytes>) -> http_body::Frame<Bytes> {
        match frame.into_data() {
            Ok(data) => http_body::Frame::data(self.cut(data)),
            Err(frame) => frame,
        }
    }

    fn cut(&mut self, mut data: Bytes) -> Bytes {
        if data.len() > ANSWER_SLICE {
            self.rest = data.split_off(ANSWER_SLICE);
        }
        data
    }

    /// `inner`'s size with what is left of the frame being cut.
    fn hint(&self, inner: http_body::SizeHint) -> http_body::SizeHint {
        let rest = self.rest.len() as u64;
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

impl<G: Unpin + Send + 'static> http_body::Body for GuardedBody<G> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let Some(clock) = self.clock.clone() else {
            return Pin::new(&mut self.inner).poll_frame(cx);
        };
        // Timed from each hand-over: the connection asks for the next part only once it has
        // room for it. (Not from each poll: an HTTP/1.1 connection polls its answer whenever
        // it is itself polled.)
        if let Some(slice) = self.slices.next() {
            clock.touch();
            return Poll::Ready(Some(Ok(slice)));
        }
        let Poll::Ready(polled) = Pin::new(&mut self.inner).poll_frame(cx) else {
            clock.wait();
            return Poll::Pending;
        };
        clock.touch();
        match polled {
            Some(Ok(frame)) => {
                self.begun = true;
                Poll::Ready(Some(Ok(self.slices.first(frame))))
            }
            ended => {
                self.ended = true;
                self.clock = None;
                Poll::Ready(ended)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.clock {
            None if !self.ended => self.inner.is_end_stream(),
            None => true,
            // An answer with no body at all says so before its head is sent: hyper then ends
            // the stream with the head (gRPC's trailers-only error, the one form grpcio reads;
            // as headers then data it reports UNKNOWN). There is nothing to hold for a reader.
            Some(_) => !self.begun && self.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.slices.hint(self.inner.size_hint())
    }
}

/// An answer that keeps its call's [`Charge`] until the last byte has been handed to the
/// connection. It never reports its end early: hyper drops a body as soon as it says it has
/// ended, which for an answer in one frame is before a slow reader has taken any of it. (Its
/// connection watches it, as every answer, through the listener's [`GuardedBody::watched`],
/// which hands it on in slices.)
struct ChargedAnswer {
    inner: Body,
    charge: Option<Arc<Charge>>,
}

impl ChargedAnswer {
    fn new(inner: Body, charge: Arc<Charge>) -> Self {
        Self {
            inner,
            charge: Some(charge),
        }
    }
}

impl http_body::Body for ChargedAnswer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if polled.is_none() || matches!(polled, Some(Err(_))) {
            self.charge = None;
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.charge.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[derive(Debug, Clone)]
pub struct BodyLimitLayer {
    max_bytes: usize,
    inflight: Arc<InflightBytes>,
}

impl BodyLimitLayer {
    pub fn new(max_bytes: usize, inflight: Arc<InflightBytes>) -> Self {
        Self {
            max_bytes,
            inflight,
        }
    }
}

impl<S> Layer<S> for BodyLimitLayer {
    type Service = BodyLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BodyLimitService {
            inner,
            max_bytes: self.max_bytes,
            inflight: Arc::clone(&self.inflight),
        }
    }
}

#[derive(Debug, Clone)]
pub struct BodyLimitService<S> {
    inner: S,
    max_bytes: usize,
    inflight: Arc<InflightBytes>,
}

impl<S> Service<Request<Body>> for BodyLimitService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<
        Answering<budget::Scoped<S::Future>, Bounds>,
        Ready<Result<Response<Body>, Infallible>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_bytes as u64) {
            return at_once(too_large_rejection(self.max_bytes).respond(&request));
        }
        let charge = Arc::new(Charge::new(Arc::clone(&self.inflight)));
        let caller = Caller::of(&request);
        let grpc = caller.protocol().is_grpc();
        // Reflection is a long bidirectional stream of small messages: tonic bounds each one;
        // every other call's body is one request and bounded as a whole.
        let max_bytes = if request.uri().path().starts_with(REFLECTION_PREFIX) {
            usize::MAX
        } else {
            self.max_bytes
        };
        // HTTP content codings are REST's (and Connect's unary calls'); gRPC compresses each
        // message instead, which tonic inflates within `max_decoding_message_size`.
        let coding = if grpc {
            if is_compressed_grpc(request.headers()) {
                charge.count_inflated();
            }
            None
        } else {
            match inflate::content_coding(request.headers()) {
                Ok(coding) => coding,
                Err(_) if http_body::Body::is_end_stream(request.body()) => None,
                Err(coding) => {
                    return at_once(unsupported_coding(&coding).respond(&request));
                }
            }
        };
        let (mut parts, body) = request.into_parts();
        // Flags are shared with the body only when there is one to read (and to inflate).
        let (mut too_large, mut broken) = (None, None);
        let body = if http_body::Body::is_end_stream(&body) {
            body
        } else {
            let flag = Arc::new(AtomicBool::new(false));
            too_large = Some(Arc::clone(&flag));
            let broken_flag = Arc::new(AtomicBool::new(false));
            broken = Some(Arc::clone(&broken_flag));
            Body::new(ChargedBody {
                inner: body,
                charge: Arc::clone(&charge),
                received: 0,
                max_bytes,
                too_large: flag,
                broken: broken_flag,
            })
        };
        let mut malformed = None;
        let body = match coding {
            None => body,
            Some(coding) => {
                // What follows reads the inflated body, whose length is not known.
                parts.headers.remove(header::CONTENT_ENCODING);
                parts.headers.remove(header::CONTENT_LENGTH);
                let too_large = Arc::clone(too_large.get_or_insert_default());
                let flag = Arc::new(AtomicBool::new(false));
                malformed = Some(Arc::clone(&flag));
                inflate::inflate(
                    body,
                    coding,
                    InflateLimits {
                        max_bytes,
                        charge: Arc::clone(&charge),
                        too_large,
                        malformed: flag,
                    },
                )
            }
        };
        let request = Request::from_parts(parts, body);
        // The call's decoders (protobuf and REST's JSON) charge what they build to the same
        // budget, through the task-local the scope sets.
        let bounds = Bounds {
            charge: Arc::clone(&charge),
            caller,
            grpc,
            too_large,
            broken,
            malformed,
            max_inflight: self.inflight.max(),
            limit: self.max_bytes,
        };
        Either::Left(Answering::new(
            budget::scope(charge, self.inner.call(request)),
            bounds,
        ))
    }
}

/// An answer given without calling the service.
fn at_once<F>(response: Response<Body>) -> Either<F, Ready<Result<Response<Body>, Infallible>>> {
    Either::Right(futures_util::future::ready(Ok(response)))
}

/// What a call's answer is checked against once it comes.
pub struct Bounds {
    charge: Arc<Charge>,
    caller: Caller,
    grpc: bool,
    /// Set when the body went over the limit (absent without a body).
    too_large: Option<Arc<AtomicBool>>,
    /// Set when the body could not be read (absent without a body).
    broken: Option<Arc<AtomicBool>>,
    /// Set when a compressed body did not inflate (absent without a coding).
    malformed: Option<Arc<AtomicBool>>,
    max_inflight: usize,
    limit: usize,
}

fn is_set(flag: Option<&Arc<AtomicBool>>) -> bool {
    flag.is_some_and(|flag| flag.load(Ordering::Acquire))
}

impl AfterAnswer<Body> for Bounds {
    fn answered(self, response: Response<Body>) -> Response<Body> {
        let Bounds {
            charge,
            caller,
            grpc,
            too_large,
            broken,
            malformed,
            max_inflight,
            limit,
        } = self;
        // Answered: what the call held is given back, even if its request body streams on.
        charge.close();
        if charge.is_exhausted() {
            return inflight_exhausted(max_inflight).respond_to(&caller);
        }
        // tonic refuses a message over its decoding limit with OUT_OF_RANGE; a caller who
        // sent too much should hear RESOURCE_EXHAUSTED, as REST callers hear 413.
        if is_set(too_large.as_ref()) || (grpc && is_oversized_message(&response)) {
            return too_large_rejection(limit).respond_to(&caller);
        }
        // Checked after the limits: a body cut off by one also fails to be read, and ends its
        // inflation. Whatever the service made of a body it could not read (REST and Connect
        // would call it too large, tonic-web internal), the caller hears why.
        if is_set(broken.as_ref()) {
            return unreadable_body().respond_to(&caller);
        }
        if is_set(malformed.as_ref()) {
            return malformed_coding().respond_to(&caller);
        }
        // Polled messages stay charged while their answer streams to a slow reader.
        if charge.holds_answer() {
            return response.map(|body| Body::new(ChargedAnswer::new(body, charge)));
        }
        response
    }
}

/// gRPC server reflection's path prefix (v1 and v1alpha).
const REFLECTION_PREFIX: &str = "/grpc.reflection.";

fn inflight_exhausted(max_inflight: usize) -> Rejection {
    Rejection::new(
        Code::Unavailable,
        "OVERLOADED",
        format!(
            "the gateway is holding its limit of {max_inflight} bytes of request bodies \
             (MAX_INFLIGHT_BYTES); retry shortly"
        ),
    )
    .retry_after(Duration::from_secs(1))
}

fn too_large_rejection(max_bytes: usize) -> Rejection {
    Rejection::new(
        Code::ResourceExhausted,
        "PAYLOAD_TOO_LARGE",
        format!("the request body is over {max_bytes} bytes (MAX_REQUEST_BODY_SIZE)"),
    )
    .http_status(StatusCode::PAYLOAD_TOO_LARGE)
}

/// A 415 for a content coding the gateway cannot inflate, naming those it can (RFC 9110
/// §15.5.16). Its code is UNIMPLEMENTED, which Connect and gRPC require for a compression the
/// server lacks, so a Connect call gets the same answer here as from its own codings.
fn unsupported_coding(coding: &str) -> Rejection {
    Rejection::new(
        Code::Unimplemented,
        "UNSUPPORTED_CONTENT_ENCODING",
        format!(
            "request bodies may be compressed with gzip, zstd or br, not {coding} \
             (Content-Encoding)"
        ),
    )
    .http_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
    .header(
        header::ACCEPT_ENCODING,
        header::HeaderValue::from_static(inflate::ACCEPTED_CODINGS),
    )
}

fn unreadable_body() -> Rejection {
    Rejection::new(
        Code::InvalidArgument,
        "MALFORMED_BODY",
        "the request body could not be read: its framing is malformed (a chunk size that is \
         not hexadecimal, a chunk not followed by CRLF) or its transfer broke off",
    )
}

fn malformed_coding() -> Rejection {
    Rejection::new(
        Code::InvalidArgument,
        "MALFORMED_CONTENT_ENCODING",
        "the request body is not valid in its Content-Encoding",
    )
}

/// A gRPC(-Web) call whose messages may arrive compressed (`grpc-encoding` other than
/// `identity`).
fn is_compressed_grpc(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(&names::GRPC_ENCODING)
        .is_some_and(|coding| coding.as_bytes() != b"identity")
}

/// tonic's refusal of a message over `max_decoding_message_size`: OUT_OF_RANGE for its
/// declared length, RESOURCE_EXHAUSTED when inflating it went past the limit.
fn is_oversized_message(response: &Response<Body>) -> bool {
    let headers = response.headers();
    let message = headers
        .get(&names::GRPC_MESSAGE)
        .and_then(|m| m.to_str().ok())
        .unwrap_or("");
    match headers.get(&names::GRPC_STATUS).map(|code| code.as_bytes()) {
        Some(b"11") => message.contains("too%20large") || message.contains("too large"),
        Some(b"8") => {
            message.contains("while%20decompressing") || message.contains("while decompressing")
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = TimeoutService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TimeoutService {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TimeoutService<S> {
    inner: S,
    timeout: Duration,
}

/// A `grpc-timeout` header: digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

impl<S> Service<Request<Body>> for TimeoutService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = TimedOut<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let no_return = NoReturn::default();
        request.extensions_mut().insert(no_return.clone());
        let headers = request.headers();
        let asked = headers
            .get(&names::GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout)
            .or_else(|| {
                headers
                    .get(&names::CONNECT_TIMEOUT_MS)
                    .and_then(|v| v.to_str().ok())
                    .and_then(connect_timeout)
            });
        if let Some(asked) = asked {
            request
                .extensions_mut()
                .insert(Deadline(tokio::time::Instant::now() + asked));
        }
        let timeout = asked.map_or(self.timeout, |asked| asked.min(self.timeout));
        // Only what the rejection needs from the request outlives the call.
        let caller = Caller::of(&request);
        TimedOut {
            inner: self.inner.call(request),
            deadline: tokio::time::sleep(timeout),
            timeout,
            grace: self.timeout,
            caller,
            no_return,
            extended: false,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call bounded by its deadline; past it, answered DEADLINE_EXCEEDED in its protocol,
    /// unless it has begun what it cannot take back ([`NoReturn`]): then its own answer, given
    /// `REQUEST_TIMEOUT_MS` more to come whatever deadline the client asked for (a client's
    /// tiny `grpc-timeout` must not turn every commit into an error); a backend stalled past
    /// that is answered as any other.
    pub struct TimedOut<F> {
        #[pin]
        inner: F,
        #[pin]
        deadline: tokio::time::Sleep,
        timeout: Duration,
        grace: Duration,
        caller: Caller,
        no_return: NoReturn,
        extended: bool,
    }
}

impl<F> Future for TimedOut<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(answer) = this.inner.poll(cx) {
            return Poll::Ready(answer);
        }
        ready!(this.deadline.as_mut().poll(cx));
        // Past the point of no return the call is waited for, once, the gateway's own timeout.
        if this.no_return.passed() && !*this.extended {
            *this.extended = true;
            let grace = tokio::time::Instant::now() + *this.grace;
            this.deadline.as_mut().reset(grace);
            ready!(this.deadline.as_mut().poll(cx));
        }
        Poll::Ready(Ok(Rejection::new(
            Code::DeadlineExceeded,
            "DEADLINE_EXCEEDED",
            format!("the call took longer than {} ms", this.timeout.as_millis()),
        )
        .respond_to(this.caller)))
    }
}

#[derive(Debug, Clone)]
pub struct Shedding {
    permits: Arc<Semaphore>,
    max: usize,
    /// Calls in flight by client, so one client cannot hold every place.
    by_client: ClientCounts,
    /// Health checks in flight: never shed by the main limit (an overloaded gateway must still
    /// answer its probes), but bounded on their own, since they need no key.
    probes: Arc<Semaphore>,
    /// Open health `Watch` streams, held for as long as each stays open: they need no key and
    /// never end on their own. (Subscriptions have their own caps, `MAX_SUBSCRIBERS`.)
    watchers: Arc<Semaphore>,
    watchers_by_client: ClientCounts,
}

/// Health checks answered at once, and health `Watch` streams open at once, in all and from
/// one client.
pub const MAX_HEALTH_PROBES: usize = 64;
pub const MAX_HEALTH_WATCHERS: usize = 64;
pub const MAX_HEALTH_WATCHERS_PER_CLIENT: usize = 8;

/// The gRPC health service's streaming method.
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";

impl Shedding {
    pub fn new(max: usize, max_per_client: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
            by_client: ClientCounts::new(max_per_client),
            probes: Arc::new(Semaphore::new(MAX_HEALTH_PROBES)),
            watchers: Arc::new(Semaphore::new(MAX_HEALTH_WATCHERS)),
            watchers_by_client: ClientCounts::new(MAX_HEALTH_WATCHERS_PER_CLIENT),
        }
    }
}

/// Who a per-client cap counts: a keys-file identity wherever it calls from (as its quotas
/// count it), or else its address (as rate limits count it).
#[derive(Debug, Clone)]
enum Client {
    Named(Arc<Identity>),
    Ip(IpNet),
}

impl Client {
    fn of(request: &Request<Body>) -> Option<Self> {
        let extensions = request.extensions();
        match extensions.get::<Arc<Identity>>() {
            Some(identity) if identity.is_named() => Some(Client::Named(Arc::clone(identity))),
            _ => extensions
                .get::<ClientIp>()
                .map(|client| Client::Ip(client.key())),
        }
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Client::Named(identity) => write!(f, "key '{}'", identity.name()),
            Client::Ip(net) => write!(f, "{net}"),
        }
    }
}

impl PartialEq for Client {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Client::Named(one), Client::Named(other)) => one.name() == other.name(),
            (Client::Ip(one), Client::Ip(other)) => one == other,
            _ => false,
        }
    }
}

impl Eq for Client {}

impl std::hash::Hash for Client {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Client::Named(identity) => (0u8, identity.name()).hash(state),
            Client::Ip(net) => (1u8, net).hash(state),
        }
    }
}

/// Places held by each client, against a cap per client. Sharded, so calls on every core do
/// not queue on one lock.
#[derive(Debug, Clone)]
struct ClientCounts {
    counts: Arc<DashMap<Client, usize>>,
    max: usize,
}

impl ClientCounts {
    fn new(max: usize) -> Self {
        Self {
            counts: Arc::new(DashMap::new()),
            max,
        }
    }

    /// One more place for `client`, or `Err` with what it holds when that is its share.
    fn take(&self, client: Client) -> Result<ClientSlot, usize> {
        {
            let mut count = self.counts.entry(client.clone()).or_insert(0);
            if *count >= self.max {
                return Err(*count);
            }
            *count += 1;
        }
        Ok(ClientSlot {
            counts: Arc::clone(&self.counts),
            client,
        })
    }
}

/// One place counted against its client, given back when dropped.
struct ClientSlot {
    counts: Arc<DashMap<Client, usize>>,
    client: Client,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        // One look-up under the shard's lock: the count falls, and a client holding nothing is
        // forgotten.
        self.counts.remove_if_mut(&self.client, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

/// A call's places: given back at the answer's head, or, for a `Watch`, when its stream ends.
pub struct Place {
    _permit: OwnedSemaphorePermit,
    /// Its client's share, when the request names a client.
    _slot: Option<ClientSlot>,
    watch: bool,
}

impl Policy for Shedding {
    type Admitted = Place;
    // Health checks are not exempt: they draw on their own pool instead.
    const EXEMPT: Exempt = Exempt::Nothing;

    fn check(&self, request: &mut Request<Body>) -> Result<Place, Rejection> {
        let path = request.uri().path();
        let watch = path == HEALTH_WATCH;
        let (permits, limit, what, by_client) = if Exempt::HealthChecks.covers(path) {
            // Answered at once, and bounded in all; not worth a count by client.
            (&self.probes, MAX_HEALTH_PROBES, "health checks", None)
        } else if watch {
            (
                &self.watchers,
                MAX_HEALTH_WATCHERS,
                "health watchers",
                Some((&self.watchers_by_client, "health watchers")),
            )
        } else {
            (
                &self.permits,
                self.max,
                "calls",
                Some((
                    &self.by_client,
                    "calls (MAX_CONCURRENT_REQUESTS_PER_CLIENT)",
                )),
            )
        };
        // The client's share first: a client at its share is told so, whatever the others do.
        let slot = match by_client.zip(Client::of(request)) {
            Some(((counts, what), client)) => match counts.take(client.clone()) {
                Ok(slot) => Some(slot),
                Err(held) => {
                    return Err(Rejection::new(
                        Code::ResourceExhausted,
                        "CLIENT_CONCURRENCY",
                        format!("{client} already has {held} {what} in flight"),
                    )
                    .retry_after(Duration::from_secs(1)));
                }
            },
            None => None,
        };
        match Arc::clone(permits).try_acquire_owned() {
            Ok(permit) => Ok(Place {
                _permit: permit,
                _slot: slot,
                watch,
            }),
            Err(_) => Err(Rejection::new(
                Code::Unavailable,
                "OVERLOADED",
                format!("the gateway is at its limit of {limit} {what} in flight"),
            )
            .retry_after(Duration::from_secs(1))),
        }
    }

    fn answered(&self, place: Place, response: Response<Body>) -> Response<Body> {
        if !place.watch {
            // Answered; a streamed answer (a subscription) counts against its own caps from
            // here on.
            return response;
        }
        // A Watch holds its places for as long as it stays open.
        response.map(|body| Body::new(GuardedBody::new(body, place)))
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use axum::{body::Body, http::Request};

    use super::{Shedding, grpc_timeout};
    use crate::{extensions::ClientIp, identity::Identity, layers::guard::Policy};

    fn call(from: &str, key: Option<&str>) -> Request<Body> {
        let mut request = Request::get("/v1/streams")
            .body(Body::empty())
            .expect("request");
        let addr = from.parse().expect("address");
        request.extensions_mut().insert(ClientIp::new(addr, 64));
        let identity = match key {
            Some(name) => Arc::new(Identity::named(name, [0; 32], Vec::new(), None, None, None)),
            None => Identity::anonymous(),
        };
        request.extensions_mut().insert(identity);
        request
    }

    #[test]
    fn a_keys_file_identity_has_one_share_wherever_it_calls_from_and_an_address_its_own() {
        let shedding = Shedding::new(8, 2);
        let first = shedding.check(&mut call("198.51.100.1", Some("team-a")));
        let second = shedding.check(&mut call("198.51.100.2", Some("team-a")));
        assert!(first.is_ok() && second.is_ok());
        let third = shedding.check(&mut call("198.51.100.3", Some("team-a")));
        let refused = third.err().expect("over team-a's share");
        assert_eq!(refused.reason, "CLIENT_CONCURRENCY");
        assert!(
            refused.message.contains("key 'team-a' already has 2 calls"),
            "{}",
            refused.message
        );
        // Another key, and callers with no keys-file key, from the same address.
        assert!(
            shedding
                .check(&mut call("198.51.100.1", Some("team-b")))
                .is_ok()
        );
        let anonymous = shedding.check(&mut call("198.51.100.1", None));
        let again = shedding.check(&mut call("198.51.100.1", None));
        assert!(anonymous.is_ok() && again.is_ok());
        assert!(shedding.check(&mut call("198.51.100.1", None)).is_err());
        // A share comes back when a call is answered.
        drop(first);
        let fourth = shedding.check(&mut call("198.51.100.9", Some("team-a")));
        assert!(fourth.is_ok());
        // A client holding no place is forgotten, so the map holds only clients in flight.
        assert_eq!(
            shedding.by_client.counts.len(),
            2,
            "team-a and 198.51.100.1"
        );
        drop((second, anonymous));
        assert_eq!(shedding.by_client.counts.len(), 2, "each still holds one");
        drop((fourth, again));
        assert!(shedding.by_client.counts.is_empty());
    }

    #[test]
    fn grpc_timeouts_parse_every_unit() {
        assert_eq!(grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout("7x"), None);
        assert_eq!(grpc_timeout(""), None);
    }
}
