//! Unit tests of the transcoder's parts (request building, framing, rendering), each called
//! directly: no gateway, no sockets.

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::{Map, Value, json};

use super::{
    framing::{self, FrameDecoder, FrameError},
    render,
    request::{Query, parameters, request_message, set_path},
};
use crate::rest::{
    route_table,
    routes::{BodyRule, Lookup, Route},
};

fn route_for(method: Method, path: &str) -> (Route, Vec<(String, String)>) {
    let table = route_table().expect("routes");
    match table.find(&method, path) {
        Lookup::Found(route, bindings) => (route.clone(), bindings),
        _ => panic!("no route for {method} {path}"),
    }
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers
}

/// The request a call becomes, in proto3 JSON (proto names, defaults left out).
fn built(method: Method, path: &str, query: Option<&str>, body: &str) -> Result<Value, u16> {
    let (route, bindings) = route_for(method, path);
    let message = request_message(
        &route,
        bindings,
        query,
        &json_headers(),
        &Bytes::copy_from_slice(body.as_bytes()),
        None,
        Query::Lenient,
    )
    .map_err(|problem| problem.status())?;
    let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true);
    Ok(message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("serializes"))
}

#[test]
fn nested_field_paths_build_nested_objects() {
    let mut root = Map::new();
    set_path(&mut root, "event.payload.type", json!("User"), false);
    set_path(&mut root, "event.event_type", json!("x"), false);
    set_path(&mut root, "tags", json!("a"), true);
    set_path(&mut root, "tags", json!("b"), true);
    assert_eq!(
        Value::Object(root),
        json!({"event": {"payload": {"type": "User"}, "event_type": "x"}, "tags": ["a", "b"]})
    );
}

#[test]
fn a_field_body_takes_the_json_value_and_the_path_fills_the_rest() {
    let (route, _) = route_for(
        Method::POST,
        "/v1/streams/orders/topics/created/partitions/2/messages",
    );
    assert_eq!(route.body, BodyRule::Field("messages".into()));
    assert_eq!(
        built(
            Method::POST,
            "/v1/streams/orders/topics/created/partitions/2/messages",
            None,
            r#"[{"text": "a"}, {"json": {"n": 1}}]"#
        ),
        Ok(
            json!({"messages": [{"text": "a"}, {"json": {"n": 1.0}}], "stream": "orders", "topic": "created", "partition_id": 2})
        )
    );
}

#[test]
fn query_strings_fill_scalars_repeated_and_typed_values() {
    let (route, bindings) = route_for(Method::GET, "/v1/streams/orders/topics/created/messages");
    let json = parameters(
        &route,
        bindings,
        Some(
            "count=5&auto_commit=True&strategy=2&timestamp=2026-01-01t00%3A00%3A00z&consumer=c+1&offset=1e1",
        ),
        Query::Lenient,
    )
    .expect("valid");
    assert_eq!(json["count"], "5");
    assert_eq!(json["auto_commit"], true);
    assert_eq!(json["strategy"], 2);
    assert_eq!(json["timestamp"], "2026-01-01T00:00:00Z");
    assert_eq!(json["consumer"], "c 1");
    assert_eq!(json["offset"], "10");
}

#[test]
fn query_parameters_that_are_unknown_are_ignored_unless_strict() {
    let (route, bindings) = route_for(Method::GET, "/v1/streams/orders/topics/created/messages");
    let lenient = parameters(
        &route,
        bindings.clone(),
        Some("_=12345&count=1&utm_source=x&%zz=1"),
        Query::Lenient,
    )
    .expect("unknown parameters are ignored");
    assert_eq!(
        Value::Object(lenient),
        json!({"stream": "orders", "topic": "created", "count": "1"})
    );
    let problem =
        parameters(&route, bindings, Some("count=1&_=12345"), Query::Strict).expect_err("strict");
    assert_eq!(problem.status(), 400);
    assert!(
        problem.to_json().contains(r#""field":"_""#),
        "{}",
        problem.to_json()
    );
}

#[test]
fn query_parameters_that_are_taken_repeated_or_bad_are_refused_naming_them() {
    let (route, bindings) = route_for(Method::GET, "/v1/streams/orders/topics/created/messages");
    for (query, field) in [
        ("stream=other", "stream"),
        ("auto_commit=maybe", "auto_commit"),
        ("partition_id=1&partition_id=0", "partition_id"),
        ("partitionId=1&partition_id=0", "partition_id"),
        ("count=1.5", "count"),
        ("count=%FF", "count"),
        ("strategy=FIRSTT", "strategy"),
        ("timestamp=2026-01-01T00:00:00.1234567891Z", "timestamp"),
    ] {
        let problem =
            parameters(&route, bindings.clone(), Some(query), Query::Lenient).expect_err(query);
        assert_eq!(problem.status(), 400, "{query}");
        let body: Value = serde_json::from_str(&problem.to_json()).expect("JSON");
        assert_eq!(body["violations"][0]["field"], field, "{query}: {body}");
    }
    let (route, _) = route_for(Method::POST, "/v1/streams");
    let problem = parameters(&route, Vec::new(), Some("name=x"), Query::Lenient)
        .expect_err("the body owns every field");
    assert_eq!(problem.status(), 400);
}

#[test]
fn bodies_take_integral_numbers_in_strings_and_lower_case_times() {
    assert_eq!(
        built(
            Method::POST,
            "/v1/streams/orders/topics",
            None,
            r#"{"name": "t", "partitions_count": "3e0", "max_topic_size_bytes": "1.5e3"}"#
        ),
        Ok(
            json!({"stream": "orders", "name": "t", "partitions_count": 3, "max_topic_size_bytes": "1500"})
        )
    );
    let event = built(
        Method::POST,
        "/messages",
        None,
        r#"{"event": {"id": "x", "timestamp": "2026-01-01t10:00:00z"}}"#,
    )
    .expect("valid");
    assert_eq!(event["event"]["timestamp"], "2026-01-01T10:00:00Z");
}

#[test]
fn bodies_with_a_key_twice_or_two_oneof_members_are_refused() {
    for body in [
        r#"{"name": "a", "name": "b"}"#,
        r#"{"name": "a", "partitions_count": 1, "partitionsCount": 2}"#,
    ] {
        assert_eq!(
            built(Method::POST, "/v1/streams/orders/topics", None, body),
            Err(400),
            "{body}"
        );
    }
    assert_eq!(
        built(
            Method::POST,
            "/v1/streams/orders/topics/created/messages",
            None,
            r#"{"partition_id": 1, "partition_key": "k", "messages": [{"text": "a"}]}"#
        ),
        Err(400)
    );
    // A null member is unset, as the parser has it.
    assert!(
        built(
            Method::POST,
            "/v1/streams/orders/topics/created/messages",
            None,
            r#"{"partition_id": null, "partition_key": "k", "messages": [{"text": "a"}]}"#
        )
        .is_ok()
    );
}

/// A gRPC frame around `payload`, uncompressed.
fn frame(payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("small");
    let mut frame = vec![0];
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

#[test]
fn frames_split_anywhere_come_out_whole_and_in_order() {
    let answer = [frame(b"one"), frame(b""), frame(b"three")].concat();
    let mut decoder = FrameDecoder::default();
    let mut messages = Vec::new();
    for byte in answer {
        decoder.push(&[byte]);
        while let Some(message) = decoder.next_message().expect("uncompressed") {
            messages.push(message);
        }
    }
    assert_eq!(messages, [&b"one"[..], b"", b"three"]);
}

#[test]
fn a_unary_answer_must_be_one_whole_uncompressed_message() {
    let message = framing::single_message(Bytes::from(frame(b"reply"))).expect("one message");
    assert_eq!(message, &b"reply"[..]);
    let mut compressed = frame(b"reply");
    compressed[0] = 1;
    let mut cut = frame(b"reply");
    cut.pop();
    for (answer, refused) in [
        (Vec::new(), "empty"),
        (vec![0, 0, 0], "a partial prefix"),
        (compressed, "compressed"),
    ] {
        assert!(
            matches!(
                framing::single_message(Bytes::from(answer)),
                Err(FrameError::NotOneMessage)
            ),
            "{refused}"
        );
    }
    assert!(matches!(
        framing::single_message(Bytes::from(cut)),
        Err(FrameError::CutShort)
    ));
}

#[tokio::test]
async fn a_stream_frame_that_does_not_decode_ends_the_stream_with_a_problem_and_the_request_id() {
    let (route, _) = route_for(
        Method::GET,
        "/v1/streams/orders/topics/created/messages:subscribe",
    );
    // One good (empty) message, then a payload that is no protobuf: a varint cut short.
    let answer = Bytes::from([frame(b""), frame(&[0xff, 0xff])].concat());
    for sse in [true, false] {
        let response = render::stream(
            Body::from(answer.clone()),
            route.method.output(),
            sse,
            Some("req-7".into()),
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("the stream ends");
        let text = String::from_utf8(body.to_vec()).expect("UTF-8");
        let (items, last) = if sse {
            let events: Vec<&str> = text.split_terminator("\n\n").collect();
            assert_eq!(events.first(), Some(&"retry: 2000"), "{text}");
            (events.len() - 1, events.last().copied().unwrap_or(""))
        } else {
            let lines: Vec<&str> = text.lines().collect();
            (lines.len(), lines.last().copied().unwrap_or(""))
        };
        assert_eq!(items, 2, "the message, then the error: {text}");
        let error = if sse {
            last.strip_prefix("event: problem\ndata: ")
        } else {
            last.strip_prefix("{\"error\":")
                .and_then(|rest| rest.strip_suffix('}'))
        };
        let error: Value =
            serde_json::from_str(error.unwrap_or_else(|| panic!("no error event: {text}")))
                .expect("a problem body");
        assert_eq!(error["status"], 500, "{text}");
        assert_eq!(error["reason"], "INTERNAL", "{text}");
        assert_eq!(error["request_id"], "req-7", "{text}");
    }
}

#[test]
fn accept_chooses_sse_only_when_it_weighs_at_least_as_much_as_ndjson() {
    let choose = |accept: &[&str]| {
        let mut headers = HeaderMap::new();
        for value in accept {
            headers.append(header::ACCEPT, HeaderValue::from_str(value).expect("ascii"));
        }
        super::prefers_event_stream(&headers)
    };
    for (accept, sse) in [
        (&[][..], false),
        (&["*/*"], false),
        (&["text/event-stream"], true),
        (&["Text/Event-Stream"], true),
        (&["text/event-stream, application/x-ndjson"], true),
        (&["text/event-stream;q=0, application/x-ndjson"], false),
        (&["text/event-stream; q=0"], false),
        (&["application/x-ndjson, text/event-stream;q=0.5"], false),
        (&["application/x-ndjson;q=0.5, text/event-stream"], true),
        (&["text/event-stream;q=0.5, */*"], false),
        (&["text/*, application/json"], true),
        (&["text/event-stream;q=0, text/*"], false),
        (&["application/json", "text/event-stream"], true),
        (&["text/event-stream;q=nonsense"], true),
    ] {
        assert_eq!(choose(accept), sse, "{accept:?}");
    }
}

mod written_straight {
    use proptest::prelude::*;
    use prost_reflect::{DescriptorPool, DynamicMessage};
    use serde_json::{Value, json};

    use super::render;

    fn answer(json: &Value) -> DynamicMessage {
        let pool = DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).expect("descriptors");
        let descriptor = pool
            .get_message_by_name("iggy.gateway.v1.PollMessagesResponse")
            .expect("PollMessagesResponse");
        DynamicMessage::deserialize(descriptor, json).expect("a valid answer")
    }

    /// The tree the bytes must equal: the way answers were written before.
    fn through_tree(message: &DynamicMessage) -> Vec<u8> {
        serde_json::to_vec(&render::json_value(message).expect("renders")).expect("writes")
    }

    fn number() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<f64>()
                .prop_filter("JSON holds finite numbers", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            any::<i32>().prop_map(|n| json!(f64::from(n))),
            Just(json!(-0.0)),
            Just(json!(9_007_199_254_740_992.0_f64)),
            Just(json!(9_007_199_254_740_991.0_f64)),
            any::<i64>().prop_map(|n| json!(n)),
        ]
    }

    fn json_body() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            number(),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn polled_answers_written_straight_are_the_bytes_the_tree_gave(
            body in json_body(),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            offset in any::<u64>(),
            header in number(),
        ) {
            use base64::Engine;
            let payload = base64::engine::general_purpose::STANDARD.encode(payload);
            let message = answer(&json!({
                "partition_id": 3,
                "current_offset": offset.to_string(),
                "messages": [
                    {"offset": "0", "timestamp": "2026-11-26T09:25:07.706756Z", "id": "x",
                     "headers": {"h": {"double_value": header}}, "json": body},
                    {"offset": offset.to_string(), "payload": payload},
                    {"offset": "1", "text": "naïve ☃"},
                ],
            }));
            let straight = String::from_utf8(render::json_bytes(&message).expect("writes"));
            let tree = String::from_utf8(through_tree(&message));
            prop_assert_eq!(straight, tree);
        }
    }

    #[test]
    fn whole_doubles_are_written_as_integers_and_others_as_they_are() {
        let message = answer(
            &json!({"messages": [{"json": [1.0, -0.0, 2.5, 1e300, 4_503_599_627_370_497.0_f64]}]}),
        );
        let text = String::from_utf8(render::json_bytes(&message).expect("writes")).expect("utf-8");
        assert!(
            text.contains(r#""json":[1,0,2.5,1e+300,4503599627370497]"#),
            "{text}"
        );
        assert_eq!(text.as_bytes(), through_tree(&message));
    }
}
