//! The gRPC services. Each maps protobuf requests to the broker's validated request types,
//! calls the [`Broker`](crate::broker::Broker), and maps the answer back; there is no other
//! logic here. REST reaches the same services through the transcoder.

mod access;
mod convert;
mod event;
mod message;
mod polls;
mod stats;
mod stream;
mod topic;

pub use event::{
    CheckedEvent, DefaultTopic, EventApi, TypedPayload, check_event, check_payload, read_event,
};
pub use message::{Limits, MessageApi};

pub use stats::StatsApi;
pub use stream::StreamApi;
use tonic::Response;
pub use topic::TopicApi;

/// How the services answer a unary call. tonic compresses every answer to a client that takes
/// gzip or zstd (grpcio and grpc-java ask for gzip by default) with a compressor set up anew for
/// each answer, which costs several times a whole uncompressed call even for an answer of a
/// few bytes, and makes it longer. So an answer smaller than `COMPRESSION_MIN_BYTES` goes
/// uncompressed, as HTTP answers do. (Server streams go uncompressed: [`UncompressedStreams`].)
#[derive(Debug, Clone, Copy)]
pub struct UnaryAnswers {
    compress_from: usize,
}

impl UnaryAnswers {
    pub fn new(compress_from: usize) -> Self {
        Self { compress_from }
    }

    /// `message` as the answer, marked to go uncompressed when it is small.
    pub fn of<T: prost::Message>(self, message: T) -> Response<T> {
        let small = message.encoded_len() < self.compress_from;
        let mut response = Response::new(message);
        if small {
            response.disable_compression();
        }
        response
    }
}

/// Server streams go uncompressed over gRPC and gRPC-Web, whatever `grpc-accept-encoding`
/// asks: tonic compresses each message of a stream on its own, with a compressor set up anew
/// for it, so a subscriber asking for gzip made every message it was sent cost several times
/// its whole delivery, and no stream message can be left out the way a small unary answer is.
/// (Connect streams compress each message of `COMPRESSION_MIN_BYTES` or more; they do not pass
/// here.) Wraps a tonic server; `streams` are the gRPC paths of its server-streaming methods.
#[derive(Debug, Clone)]
pub struct UncompressedStreams<S> {
    inner: S,
    streams: std::sync::Arc<[String]>,
}

impl<S> UncompressedStreams<S> {
    pub fn new(inner: S, streams: std::sync::Arc<[String]>) -> Self {
        Self { inner, streams }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for UncompressedStreams<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for UncompressedStreams<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if self.streams.iter().any(|stream| stream == path) {
            request.headers_mut().remove("grpc-accept-encoding");
        }
        self.inner.call(request)
    }
}

/// The gRPC paths of every server-streaming method in `pool`.
pub fn server_streams(pool: &prost_reflect::DescriptorPool) -> std::sync::Arc<[String]> {
    pool.services()
        .flat_map(|service| service.methods().collect::<Vec<_>>())
        .filter(|method| method.is_server_streaming())
        .map(|method| format!("/{}/{}", method.parent_service().full_name(), method.name()))
        .collect()
}

impl Default for UnaryAnswers {
    /// `COMPRESSION_MIN_BYTES`'s default.
    fn default() -> Self {
        Self::new(1024)
    }
}
