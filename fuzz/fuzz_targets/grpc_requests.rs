//! The gRPC services (`StreamApi`, `TopicApi`, `MessageApi`, `EventApi`) called with fuzzed
//! protobuf requests, over an in-memory broker: every validation of client input (names,
//! identifiers, UUIDs, headers, bodies, timestamps, durations, enums, polling strategies,
//! subscription cursors) runs on hostile values.
//!
//! Input: up to 6 records `[method selector: u8][length: u16 LE][encoded request]`.
//!
//! Invariants:
//! - no service answers INTERNAL or UNKNOWN (the fake broker never fails);
//! - a batch that `SendMessages` accepted polls back with the same ids, headers and bodies
//!   (payload as payload, text as text, JSON as the same JSON, numbers bit for bit unless
//!   `FUZZ_ALLOW_FLOAT_ULP` is set);
//! - a subscription cursor the gateway issued is accepted when sent back.
#![no_main]

use std::collections::HashMap;

use iggy_gateway::proto::{
    self, event_service_server::EventService, message_service_server::MessageService,
    stream_service_server::StreamService, topic_service_server::TopicService,
};
use iggy_gateway_fuzz::Gateway;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tonic::{Code, Request, Status};

fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    M::decode(bytes).ok()
}

fn check_status<T>(method: &str, result: &Result<T, Status>) {
    if let Err(status) = result {
        assert!(
            !matches!(status.code(), Code::Internal | Code::Unknown),
            "{method} answered {:?}: {}",
            status.code(),
            status.message()
        );
    }
}

fn same_header(a: &proto::HeaderValue, b: &proto::HeaderValue) -> bool {
    use proto::header_value::Kind;
    match (&a.kind, &b.kind) {
        (Some(Kind::DoubleValue(x)), Some(Kind::DoubleValue(y))) => x.to_bits() == y.to_bits(),
        (x, y) => x == y,
    }
}

fn same_headers(
    sent: &HashMap<String, proto::HeaderValue>,
    polled: &HashMap<String, proto::HeaderValue>,
) -> bool {
    sent.len() == polled.len()
        && sent
            .iter()
            .all(|(k, v)| polled.get(k).is_some_and(|p| same_header(v, p)))
}

fn same_json(a: &pbjson_types::Value, b: &pbjson_types::Value) -> Result<(), String> {
    use pbjson_types::value::Kind;
    match (&a.kind, &b.kind) {
        (None | Some(Kind::NullValue(_)), None | Some(Kind::NullValue(_))) => Ok(()),
        (Some(Kind::NumberValue(x)), Some(Kind::NumberValue(y))) => {
            // serde_json without `float_roundtrip` may parse a number back 1 ULP off (found by
            // this target); FUZZ_ALLOW_FLOAT_ULP=1 tolerates that to look for other bugs.
            let ulp_ok = std::env::var_os("FUZZ_ALLOW_FLOAT_ULP").is_some()
                && x.to_bits().abs_diff(y.to_bits()) <= 1;
            if x.to_bits() == y.to_bits() || ulp_ok {
                Ok(())
            } else {
                Err(format!(
                    "number {x:e} ({:#x}) came back as {y:e} ({:#x})",
                    x.to_bits(),
                    y.to_bits()
                ))
            }
        }
        (Some(Kind::ListValue(x)), Some(Kind::ListValue(y))) => {
            if x.values.len() != y.values.len() {
                return Err("list length".into());
            }
            x.values
                .iter()
                .zip(&y.values)
                .try_for_each(|(x, y)| same_json(x, y))
        }
        (Some(Kind::StructValue(x)), Some(Kind::StructValue(y))) => {
            if x.fields.len() != y.fields.len() {
                return Err("struct size".into());
            }
            x.fields
                .iter()
                .try_for_each(|(k, v)| match y.fields.get(k) {
                    Some(w) => same_json(v, w),
                    None => Err(format!("key {k:?} lost")),
                })
        }
        (x, y) if x == y => Ok(()),
        (x, y) => Err(format!("{x:?} came back as {y:?}")),
    }
}

fn same_body(sent: &Option<proto::message::Body>, polled: &Option<proto::polled_message::Body>) {
    use proto::{message::Body as S, polled_message::Body as P};
    match (sent, polled) {
        (Some(S::Payload(a)), Some(P::Payload(b))) => assert_eq!(a, b, "payload changed"),
        (Some(S::Text(a)), Some(P::Text(b))) => assert_eq!(a, b, "text changed"),
        (Some(S::Json(a)), Some(P::Json(b))) => {
            if let Err(why) = same_json(a, b) {
                panic!("JSON body did not round-trip: {why}");
            }
        }
        (sent, polled) => panic!("body form changed: sent {sent:?}, polled {polled:?}"),
    }
}

async fn send_then_poll(gateway: &Gateway, request: proto::SendMessagesRequest) {
    let before = gateway.broker.stored().len() as u64;
    let sent = request.messages.clone();
    let result = gateway.messages.send_messages(Request::new(request)).await;
    check_status("SendMessages", &result);
    let Ok(answer) = result else {
        return;
    };
    let answer = answer.into_inner();
    assert_eq!(answer.ids.len(), sent.len(), "one id per message");
    let polled = gateway
        .messages
        .poll_messages(Request::new(proto::PollMessagesRequest {
            stream: "s".into(),
            topic: "t".into(),
            partition_id: 0,
            strategy: proto::PollingStrategy::Offset as i32,
            offset: Some(before),
            count: 100,
            ..Default::default()
        }))
        .await
        .expect("polling back a sent batch")
        .into_inner();
    assert_eq!(polled.messages.len(), sent.len(), "batch size");
    for ((message, polled), id) in sent.iter().zip(&polled.messages).zip(&answer.ids) {
        assert_eq!(
            &polled.id, id,
            "polled id differs from the id SendMessages answered"
        );
        if !message.id.is_empty() {
            assert_eq!(
                polled.id.to_ascii_lowercase().replace('-', ""),
                message
                    .id
                    .to_ascii_lowercase()
                    .trim_start_matches("urn:uuid:")
                    .trim_matches(|c| c == '{' || c == '}')
                    .replace('-', ""),
                "message id changed"
            );
        }
        assert!(
            same_headers(&message.headers, &polled.headers),
            "headers changed: sent {:?}, polled {:?}",
            message.headers,
            polled.headers
        );
        same_body(&message.body, &polled.body);
    }
}

async fn subscribe(gateway: &Gateway, request: proto::SubscribeRequest) {
    use tokio_stream_shim::next;
    let result = gateway
        .messages
        .subscribe(Request::new(request.clone()))
        .await;
    check_status("Subscribe", &result);
    let Ok(stream) = result else {
        return;
    };
    // The service's stream of answers, each with its cursor.
    let mut stream = stream.into_inner();
    let mut cursor = None;
    for _ in 0..3 {
        match next(&mut stream).await {
            Some(Ok(item)) => {
                assert!(
                    !item.cursor.is_empty(),
                    "every subscription item carries a cursor"
                );
                cursor = Some(item.cursor);
            }
            Some(Err(status)) => {
                check_status("Subscribe (stream)", &Err::<(), _>(status));
                break;
            }
            None => break,
        }
    }
    drop(stream);
    if let Some(cursor) = cursor {
        let resumed = gateway
            .messages
            .subscribe(Request::new(proto::SubscribeRequest {
                cursor: cursor.clone(),
                ..request
            }))
            .await;
        if let Err(status) = resumed {
            panic!(
                "a cursor the gateway issued was refused: {:?} {} ({cursor})",
                status.code(),
                status.message()
            );
        }
    }
}

/// `tokio_stream` is not a dependency here; the receiver is read directly.
mod tokio_stream_shim {
    pub async fn next<S: futures_util::Stream + Unpin>(stream: &mut S) -> Option<S::Item> {
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            futures_util::StreamExt::next(stream),
        )
        .await
        .ok()
        .flatten()
    }
}

async fn call(gateway: &Gateway, selector: u8, bytes: &[u8]) {
    macro_rules! unary {
        ($api:expr, $method:ident, $t:ty) => {
            if let Some(request) = decode::<$t>(bytes) {
                let result = $api.$method(Request::new(request)).await;
                check_status(stringify!($method), &result);
            }
        };
    }
    match selector % 23 {
        0 => unary!(gateway.streams, create_stream, proto::CreateStreamRequest),
        1 => unary!(gateway.streams, get_stream, proto::GetStreamRequest),
        2 => unary!(gateway.streams, list_streams, proto::ListStreamsRequest),
        3 => unary!(gateway.streams, update_stream, proto::UpdateStreamRequest),
        4 => unary!(gateway.streams, delete_stream, proto::DeleteStreamRequest),
        5 => unary!(gateway.streams, purge_stream, proto::PurgeStreamRequest),
        6 => unary!(gateway.topics, create_topic, proto::CreateTopicRequest),
        7 => unary!(gateway.topics, get_topic, proto::GetTopicRequest),
        8 => unary!(gateway.topics, list_topics, proto::ListTopicsRequest),
        9 => unary!(gateway.topics, update_topic, proto::UpdateTopicRequest),
        10 => unary!(gateway.topics, delete_topic, proto::DeleteTopicRequest),
        11 => unary!(gateway.topics, purge_topic, proto::PurgeTopicRequest),
        12 => unary!(
            gateway.topics,
            create_partitions,
            proto::CreatePartitionsRequest
        ),
        13 => unary!(
            gateway.topics,
            delete_partitions,
            proto::DeletePartitionsRequest
        ),
        14 => {
            if let Some(request) = decode::<proto::SendMessagesRequest>(bytes) {
                send_then_poll(gateway, request).await;
            }
        }
        15 => unary!(gateway.messages, poll_messages, proto::PollMessagesRequest),
        16 => unary!(
            gateway.messages,
            store_consumer_offset,
            proto::StoreConsumerOffsetRequest
        ),
        17 => unary!(
            gateway.messages,
            get_consumer_offset,
            proto::GetConsumerOffsetRequest
        ),
        18 => unary!(
            gateway.messages,
            delete_consumer_offset,
            proto::DeleteConsumerOffsetRequest
        ),
        19 => {
            if let Some(request) = decode::<proto::SubscribeRequest>(bytes) {
                subscribe(gateway, request).await;
            }
        }
        20 => unary!(gateway.events, publish_event, proto::PublishEventRequest),
        21 => unary!(gateway.events, publish_events, proto::PublishEventsRequest),
        _ => unary!(gateway.events, poll_events, proto::PollEventsRequest),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut records = Vec::new();
    let mut rest = data;
    while records.len() < 6 && rest.len() >= 3 {
        let selector = rest[0];
        let length = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        records.push((selector, &rest[3..3 + length]));
        rest = &rest[3 + length..];
    }
    if records.is_empty() {
        return;
    }
    let runtime = iggy_gateway_fuzz::runtime();
    runtime.block_on(async {
        let gateway = Gateway::new();
        for (selector, bytes) in records {
            call(&gateway, selector, bytes).await;
        }
    });
});
