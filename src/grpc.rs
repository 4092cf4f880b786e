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
pub use topic::TopicApi;
