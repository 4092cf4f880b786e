//! How many HTTP answers are compressed at once. An encoder holds its memory for as long as
//! its answer is being sent: about 2.1 MiB for zstd at the level used, 1.3 MiB for brotli and
//! 330 KiB for gzip (measured, BENCHMARKS.md), none of it in `MAX_INFLIGHT_BYTES`. A client that
//! asks for many large compressed answers and reads none of them (an HTTP/2 client that opens
//! no window, or stops reading its socket) held that much for each until its connection was
//! cut. At most [`MAX_ENCODERS`] answers are compressed at once; past that an answer goes
//! uncompressed, as to a client that accepts no coding.
//!
//! An `Accept-Encoding` that accepts none of gzip, br and zstd is taken off the request first
//! ([`without_unaccepted_codings`], outside compression): its answer goes as it is. Left on, a
//! request that refuses `identity` too (`identity;q=0`) ran in full and was then answered 406
//! by tower-http (a stream created, a gRPC call that succeeded, each told 406), and one that
//! accepts only `identity` took an encoder's permit it never used.
//!
//! One client (its address, as the limits count it) holds at most [`MAX_ENCODERS_PER_CLIENT`]
//! of them: else one that stalled 32 large answers took compression from every other client
//! for as long as its connection lasted.
//!
//! The decision is the compression predicate's ([`HasEncoder`]), but what it decides must
//! last as long as the answer's body. So [`EncoderSlotLayer`], inside the compression layer,
//! gives each answer to a request that accepts a coding an empty [`EncoderSlot`] (in the
//! answer's extensions, where the predicate sees it) shared with its body; the predicate puts
//! a permit in it, and the body drops the permit when it is done.

use std::{
    collections::HashMap,
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
};

use axum::{
    body::Body,
    http::{HeaderMap, Request, Response, header},
};
use http_body::{Frame, SizeHint};
use ipnet::IpNet;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};
use tower_http::compression::Predicate;

use super::after::{AfterAnswer, Answering};
use crate::extensions::ClientIp;

/// HTTP answers compressed at once, at most (about 70 MiB of zstd encoders).
pub const MAX_ENCODERS: usize = 32;

/// Of those, the most one client's answers hold at once.
pub const MAX_ENCODERS_PER_CLIENT: usize = 8;

/// Where an answer keeps the permit to be compressed, once given one, and whose it is.
#[derive(Debug, Clone, Default)]
pub struct EncoderSlot {
    permit: Arc<Mutex<Option<EncoderPermit>>>,
    client: Option<IpNet>,
}

/// One of the encoders, and one of its client's share of them.
#[derive(Debug)]
struct EncoderPermit {
    _encoder: OwnedSemaphorePermit,
    _share: Option<ClientShare>,
}

/// Encoders held per client; a client holding none is not in the map, so it holds at most
/// [`MAX_ENCODERS`] entries.
type Shares = Arc<Mutex<HashMap<IpNet, usize>>>;

/// One encoder counted against a client until dropped.
#[derive(Debug)]
struct ClientShare {
    shares: Shares,
    client: IpNet,
}

impl Drop for ClientShare {
    fn drop(&mut self) {
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = shares.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                shares.remove(&self.client);
            }
        }
    }
}

/// `request` without its `Accept-Encoding` if that accepts none of the codings the gateway
/// compresses in, so its answer goes uncompressed and is never turned into a 406 (a
/// `MapRequestLayer` just outside compression).
pub fn without_unaccepted_codings<B>(mut request: Request<B>) -> Request<B> {
    if !accepts_compression(request.headers()) {
        request.headers_mut().remove(header::ACCEPT_ENCODING);
    }
    request
}

/// Whether `Accept-Encoding` leaves gzip, br or zstd a weight above zero, as tower-http reads
/// it: a coding's own weight where it is listed (`x-gzip` is gzip), else the weight of `*`; a
/// weight that does not parse counts as zero. (`*, gzip;q=0, br;q=0, zstd;q=0` accepts only
/// `identity`, and would otherwise take a permit for an answer sent plainly.)
fn accepts_compression(headers: &HeaderMap) -> bool {
    // Read again for each coding, not collected: a 16 KiB header may list thousands.
    let items = || {
        headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|item| {
                let mut parts = item.split(';');
                let coding = parts.next().unwrap_or("").trim();
                let weight = parts
                    .find_map(|param| {
                        let (name, value) = param.split_once('=')?;
                        name.trim()
                            .eq_ignore_ascii_case("q")
                            .then(|| value.trim().parse::<f32>().unwrap_or(0.0))
                    })
                    .unwrap_or(1.0);
                (coding, weight)
            })
    };
    let weight_of = |names: &[&str]| {
        items()
            .find(|(coding, _)| names.iter().any(|name| coding.eq_ignore_ascii_case(name)))
            .map(|(_, weight)| weight)
    };
    let any = weight_of(&["*"]).unwrap_or(0.0);
    [&["gzip", "x-gzip"][..], &["br"], &["zstd"]]
        .iter()
        .any(|names| weight_of(names).unwrap_or(any) > 0.0)
}

/// Gives an empty [`EncoderSlot`] to each answer whose request accepts a content coding (after
/// [`without_unaccepted_codings`], one the gateway compresses in).
#[derive(Debug, Clone, Copy, Default)]
pub struct EncoderSlotLayer;

impl<S> Layer<S> for EncoderSlotLayer {
    type Service = EncoderSlotService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EncoderSlotService { inner }
    }
}

#[derive(Debug, Clone)]
pub struct EncoderSlotService<S> {
    inner: S,
}

impl<S> Service<Request<Body>> for EncoderSlotService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answering<S::Future, Option<EncoderSlot>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // A request without `Accept-Encoding` (most API clients) is never compressed: its
        // answer keeps its own body, unwrapped.
        let slot = request
            .headers()
            .contains_key(header::ACCEPT_ENCODING)
            .then(|| EncoderSlot {
                permit: Arc::default(),
                client: request.extensions().get::<ClientIp>().map(ClientIp::key),
            });
        Answering::new(self.inner.call(request), slot)
    }
}

impl AfterAnswer<Body> for Option<EncoderSlot> {
    fn answered(self, response: Response<Body>) -> Response<Body> {
        let Some(slot) = self else {
            return response;
        };
        let (mut parts, body) = response.into_parts();
        parts.extensions.insert(slot.clone());
        Response::from_parts(parts, Body::new(SlotBody { body, _slot: slot }))
    }
}

pin_project_lite::pin_project! {
    /// An answer's body, holding its slot (and any permit in it) until it is dropped.
    struct SlotBody {
        #[pin]
        body: Body,
        _slot: EncoderSlot,
    }
}

impl http_body::Body for SlotBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The compression predicate's last word: an answer is compressed only if it can take one of
/// the [`MAX_ENCODERS`] permits within its client's share, kept in its [`EncoderSlot`].
#[derive(Debug, Clone)]
pub struct HasEncoder {
    permits: Arc<Semaphore>,
    shares: Shares,
    per_client: usize,
}

impl HasEncoder {
    pub fn new(encoders: usize, per_client: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(encoders)),
            shares: Shares::default(),
            per_client,
        }
    }

    /// One more of `client`'s share, unless it holds all of it.
    fn share_of(&self, client: IpNet) -> Option<ClientShare> {
        let mut shares = self.shares.lock().unwrap_or_else(PoisonError::into_inner);
        let count = shares.entry(client).or_insert(0);
        if *count >= self.per_client {
            return None;
        }
        *count += 1;
        Some(ClientShare {
            shares: Arc::clone(&self.shares),
            client,
        })
    }
}

impl Predicate for HasEncoder {
    fn should_compress<B>(&self, response: &Response<B>) -> bool
    where
        B: http_body::Body,
    {
        let Some(slot) = response.extensions().get::<EncoderSlot>() else {
            return false;
        };
        let share = match slot.client {
            Some(client) => match self.share_of(client) {
                Some(share) => Some(share),
                None => return false,
            },
            None => None,
        };
        // A share taken without an encoder is given back as it drops.
        let Ok(encoder) = Arc::clone(&self.permits).try_acquire_owned() else {
            return false;
        };
        *slot.permit.lock().unwrap_or_else(PoisonError::into_inner) = Some(EncoderPermit {
            _encoder: encoder,
            _share: share,
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use tower::{ServiceExt, service_fn};

    use super::*;

    async fn answer(accepts: bool) -> Response<Body> {
        answer_to(accepts, None).await
    }

    async fn answer_to(accepts: bool, client: Option<&str>) -> Response<Body> {
        let service = EncoderSlotLayer.layer(service_fn(|_: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Body::from("an answer")))
        }));
        let mut request = Request::new(Body::empty());
        if let Some(client) = client {
            let addr = client.parse().expect("an address");
            request.extensions_mut().insert(ClientIp::new(addr, 64));
        }
        if accepts {
            request
                .headers_mut()
                .insert(header::ACCEPT_ENCODING, "zstd".parse().expect("value"));
        }
        service.oneshot(request).await.expect("answered")
    }

    #[tokio::test]
    async fn an_answer_holds_its_encoder_until_its_body_is_dropped_and_no_more_are_given() {
        let encoders = HasEncoder::new(2, 2);
        let first = answer(true).await;
        let second = answer(true).await;
        let third = answer(true).await;
        assert!(encoders.should_compress(&first));
        assert!(encoders.should_compress(&second));
        assert!(!encoders.should_compress(&third), "both encoders are taken");
        // The head goes (hyper sends it and drops it); the body keeps the permit.
        let (_, body) = first.into_parts();
        assert!(
            !encoders.should_compress(&third),
            "the first body is not done"
        );
        drop(body);
        assert!(
            encoders.should_compress(&third),
            "the first body gave its encoder back"
        );
    }

    #[tokio::test]
    async fn one_client_holds_at_most_its_share_of_the_encoders() {
        let encoders = HasEncoder::new(3, 2);
        let mut held = Vec::new();
        for _ in 0..2 {
            let answer = answer_to(true, Some("10.0.0.1")).await;
            assert!(encoders.should_compress(&answer));
            held.push(answer);
        }
        let third = answer_to(true, Some("10.0.0.1")).await;
        assert!(!encoders.should_compress(&third), "its share is taken");
        // A client of its own (an IPv6 /64 is one client) still gets the one left.
        let other = answer_to(true, Some("2001:db8::1")).await;
        assert!(encoders.should_compress(&other));
        let same_prefix = answer_to(true, Some("2001:db8::2")).await;
        assert!(
            !encoders.should_compress(&same_prefix),
            "every encoder is taken"
        );
        drop(other);
        assert!(
            !encoders.should_compress(&third),
            "an encoder is free, but not within the first client's share"
        );
        // The refused tries took nothing: the freed encoder is still there for another.
        assert!(encoders.should_compress(&answer_to(true, Some("10.0.0.2")).await));
        held.pop();
        assert!(
            encoders.should_compress(&third),
            "its answer gave its share back"
        );
        assert_eq!(
            encoders.shares.lock().expect("shares").len(),
            1,
            "clients holding none are forgotten"
        );
    }

    #[test]
    fn only_a_coding_the_gateway_compresses_in_with_a_weight_counts_as_accepted() {
        let accepts = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT_ENCODING, value.parse().expect("value"));
            accepts_compression(&headers)
        };
        for yes in [
            "zstd",
            "gzip, deflate",
            "identity, br;q=0.5",
            "*",
            "GZIP;Q=1",
            "x, zstd ; q=0.001",
            "x-gzip",
            "*, gzip;q=0",
        ] {
            assert!(accepts(yes), "{yes}");
        }
        for no in [
            "identity",
            "identity;q=0",
            "*;q=0",
            "gzip;q=0, br;q=0.0",
            "deflate, compress",
            "zstd;q=high",
            "",
            "*, gzip;q=0, br;q=0, zstd;q=0",
        ] {
            assert!(!accepts(no), "{no}");
        }
        assert!(!accepts_compression(&HeaderMap::new()));
    }

    #[tokio::test]
    async fn an_answer_to_a_request_that_accepts_no_coding_is_neither_wrapped_nor_compressed() {
        let encoders = HasEncoder::new(1, 1);
        let plain = answer(false).await;
        assert!(plain.extensions().get::<EncoderSlot>().is_none());
        assert!(!encoders.should_compress(&plain));
        assert!(encoders.should_compress(&answer(true).await));
    }
}
