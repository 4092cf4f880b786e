use prost::{Message, Name};

use super::{DecodeRefusal, MESSAGE_COST, POOL, decoded_size};
use crate::proto;

fn descriptor<T: Name>() -> prost_reflect::MessageDescriptor {
    POOL.as_ref()
        .and_then(|pool| pool.get_message_by_name(&T::full_name()))
        .expect("the API's descriptor")
}

#[test]
fn a_message_instance_costs_at_least_the_largest_struct_decoded() {
    let sizes = [
        std::mem::size_of::<proto::Message>(),
        std::mem::size_of::<proto::SendMessagesRequest>(),
        std::mem::size_of::<proto::PollMessagesRequest>(),
        std::mem::size_of::<proto::SubscribeRequest>(),
        std::mem::size_of::<proto::HeaderValue>() + std::mem::size_of::<String>(),
        std::mem::size_of::<pbjson_types::Value>(),
        std::mem::size_of::<pbjson_types::Struct>(),
    ];
    for size in sizes {
        assert!(size <= MESSAGE_COST, "{size} > {MESSAGE_COST}");
    }
}

#[test]
fn a_full_batch_of_real_messages_passes() {
    let request = proto::SendMessagesRequest {
        stream: "orders".into(),
        topic: "created".into(),
        partitioning: None,
        messages: (0..1000)
            .map(|i| proto::Message {
                body: Some(proto::message::Body::Text(format!("m{i}"))),
                ..Default::default()
            })
            .collect(),
    };
    let wire = request.encode_to_vec();
    let texts: usize = (0..1000).map(|i| format!("m{i}").len()).sum();
    assert_eq!(
        decoded_size(&descriptor::<proto::SendMessagesRequest>(), &wire),
        Ok(1001 * MESSAGE_COST + "orders".len() + "created".len() + texts)
    );
}

#[test]
fn empty_entries_are_counted_as_the_structs_they_become() {
    // Field 5 (messages), length 0, repeated: two bytes per decoded struct.
    let wire = [0x2a, 0x00].repeat(1024 * 1024);
    assert_eq!(
        decoded_size(&descriptor::<proto::SendMessagesRequest>(), &wire),
        Ok((1024 * 1024 + 1) * MESSAGE_COST)
    );
}

#[test]
fn truncated_and_invalid_wire_bytes_are_malformed() {
    let descriptor = descriptor::<proto::SendMessagesRequest>();
    for wire in [
        &[0x2a, 0x05, 0x00][..],
        &[0x08][..],
        &[0x0b][..],
        &[0xff; 11][..],
    ] {
        assert!(
            matches!(
                decoded_size(&descriptor, wire),
                Err(DecodeRefusal::Malformed(_))
            ),
            "{wire:?}"
        );
    }
}

proptest::proptest! {
    #[test]
    fn any_bytes_are_walked_without_panicking(wire in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
        let _ = decoded_size(&descriptor::<proto::SendMessagesRequest>(), &wire);
        let _ = decoded_size(&descriptor::<proto::SubscribeRequest>(), &wire);
    }

    #[test]
    fn every_decoded_message_is_counted(texts in proptest::collection::vec("\\PC{0,20}", 0..50)) {
        let request = proto::SendMessagesRequest {
            stream: "s".into(),
            topic: "t".into(),
            partitioning: None,
            messages: texts
                .iter()
                .map(|text| proto::Message {
                    body: Some(proto::message::Body::Text(text.clone())),
                    ..Default::default()
                })
                .collect(),
        };
        let wire = request.encode_to_vec();
        let text_bytes: usize = texts.iter().map(String::len).sum();
        proptest::prop_assert_eq!(
            decoded_size(&descriptor::<proto::SendMessagesRequest>(), &wire),
            Ok((texts.len() + 1) * MESSAGE_COST + 2 + text_bytes)
        );
        // What the walk accepts, prost decodes to the same message.
        proptest::prop_assert_eq!(proto::SendMessagesRequest::decode(wire.as_slice()).ok(), Some(request));
    }
}
