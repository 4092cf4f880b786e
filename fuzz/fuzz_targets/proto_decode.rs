//! `prost::Message::decode` of every message type in `iggy_gateway::proto` (what gRPC and
//! gRPC-Web requests are decoded into before the services see them).
//!
//! Input: one selector byte (which type, modulo the number of types), then the encoded message.
//! Invariants, for input that decodes: `decode(encode(x)) == x` and `encode(x)` is
//! `encoded_len(x)` bytes long.
#![no_main]

use iggy_gateway::proto;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fn check<M: Message + Default + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    let Ok(message) = M::decode(bytes) else {
        return;
    };
    let encoded = message.encode_to_vec();
    assert_eq!(encoded.len(), message.encoded_len(), "encoded_len");
    let again = M::decode(encoded.as_slice()).expect("re-encoded message must decode");
    if again != message {
        // NaN never equals itself; compare the encodings instead.
        let shown = format!("{message:?}");
        assert!(
            shown.contains("NaN"),
            "decode(encode(x)) != x:\n{message:?}\n{again:?}"
        );
        assert_eq!(again.encoded_len(), encoded.len());
    }
}

macro_rules! types {
    ($($t:ty),* $(,)?) => {
        const CHECKS: &[fn(&[u8])] = &[$(check::<$t>),*];
    };
}

types!(
    // Requests (in the order of the .proto files).
    proto::SendMessagesRequest,
    proto::PollMessagesRequest,
    proto::SubscribeRequest,
    proto::StoreConsumerOffsetRequest,
    proto::GetConsumerOffsetRequest,
    proto::DeleteConsumerOffsetRequest,
    proto::PublishEventRequest,
    proto::PublishEventsRequest,
    proto::PollEventsRequest,
    proto::CreateStreamRequest,
    proto::GetStreamRequest,
    proto::ListStreamsRequest,
    proto::UpdateStreamRequest,
    proto::DeleteStreamRequest,
    proto::PurgeStreamRequest,
    proto::CreateTopicRequest,
    proto::GetTopicRequest,
    proto::ListTopicsRequest,
    proto::UpdateTopicRequest,
    proto::DeleteTopicRequest,
    proto::PurgeTopicRequest,
    proto::CreatePartitionsRequest,
    proto::DeletePartitionsRequest,
    // Responses (what clients decode).
    proto::SendMessagesResponse,
    proto::PollMessagesResponse,
    proto::SubscribeResponse,
    proto::GetConsumerOffsetResponse,
    proto::PublishEventResponse,
    proto::PublishEventsResponse,
    proto::PollEventsResponse,
    proto::CreateStreamResponse,
    proto::GetStreamResponse,
    proto::ListStreamsResponse,
    proto::CreateTopicResponse,
    proto::GetTopicResponse,
    proto::ListTopicsResponse,
    proto::UpdateTopicResponse,
    proto::CreatePartitionsResponse,
    proto::DeletePartitionsResponse,
);

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    CHECKS[usize::from(selector) % CHECKS.len()](bytes);
});
