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
/// uncompressed, as HTTP answers do. (Server streams are tonic's to compress, message by
/// message, as the client asks.)
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

impl Default for UnaryAnswers {
    /// `COMPRESSION_MIN_BYTES`'s default.
    fn default() -> Self {
        Self::new(1024)
    }
}
