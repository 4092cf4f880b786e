//! Unit tests of the transcoder's parts (request building, rendering), each called
//! directly: no gateway, no sockets.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, header};
use serde_json::{Map, Value, json};

use super::{
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

/// What `route` builds of `body` with the path's `bindings` and `headers`, no query, a
/// typed codec at hand or not.
fn build_request(
    route: &Route,
    bindings: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
    typed: bool,
) -> Result<super::request::Built, crate::answer::Problem> {
    request_message(
        route,
        bindings.to_vec(),
        None,
        headers,
        &Bytes::copy_from_slice(body),
        None,
        Query::Lenient,
        typed,
    )
}

/// The request a call becomes, in proto3 JSON (proto names, defaults left out). Built both
/// ways, parsed at once and left for a typed codec (then merged with its path and query
/// fields), which must agree.
fn built(method: Method, path: &str, query: Option<&str>, body: &str) -> Result<Value, u16> {
    let (route, bindings) = route_for(method, path);
    let build = |typed: bool| {
        request_message(
            &route,
            bindings.clone(),
            query,
            &json_headers(),
            &Bytes::copy_from_slice(body.as_bytes()),
            None,
            Query::Lenient,
            typed,
        )
        .and_then(|built| built.into_message(&route))
        .map_err(|problem| problem.status())
    };
    let message = build(false)?;
    let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true);
    let as_json = |message: &prost_reflect::DynamicMessage| {
        message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .expect("serializes")
    };
    let left = build(true).expect("left for a typed codec, the same request builds");
    assert_eq!(as_json(&left), as_json(&message), "{path} {body}");
    Ok(as_json(&message))
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

/// `If-Match` is laid over a body the typed codec reads, as a parameter is; a body with an
/// etag of its own, or a header the request cannot take, is parsed by the descriptors first,
/// and the answer is the one the descriptors' path gives.
#[test]
fn if_match_is_laid_over_a_typed_body_as_the_etag_field() {
    use super::request::Built;
    use prost::Message as _;

    let (route, bindings) = route_for(Method::PATCH, "/v1/streams/s");
    let build = |body: &str, if_match: &str| {
        let mut headers = json_headers();
        headers.insert(
            header::IF_MATCH,
            HeaderValue::from_str(if_match).expect("header"),
        );
        build_request(&route, &bindings, &headers, body.as_bytes(), true)
    };
    let typed = |built: Result<Built, crate::answer::Problem>| match built {
        Ok(Built::Json { body, overlay, .. }) => {
            let mut typed: crate::proto::UpdateStreamRequest =
                serde_json::from_slice(&body).expect("the typed codec takes it");
            typed.merge(overlay.as_slice()).expect("merges");
            Some(typed)
        }
        _ => None,
    };

    let laid = typed(build(r#"{"name":"n"}"#, "\"abc\"")).expect("left for the typed codec");
    assert_eq!(
        (laid.stream.as_str(), laid.name.as_str(), laid.etag.as_str()),
        ("s", "n", "abc")
    );
    // Given in the body as well: the descriptors read it, and the two agree.
    let both = build(r#"{"name":"n","etag":"abc"}"#, "\"abc\"");
    assert!(matches!(both, Ok(Built::Message(_))));
    let status = |built: Result<Built, crate::answer::Problem>| {
        built
            .map(|_| ())
            .map_err(|problem| problem.to_status().message().to_owned())
    };
    assert_eq!(
        status(build(r#"{"name":"n","etag":"xyz"}"#, "\"abc\"")),
        Err("etag: differs from If-Match; give the etag once".to_owned())
    );
    // A header the request cannot take is refused after the body is read, as before: a bad
    // body is named first.
    assert_eq!(
        status(build(r#"{"name":"n"}"#, "\"a\", \"b\"")),
        Err("If-Match: give one entity tag: the resource's ETag as last read".to_owned())
    );
    assert_eq!(
        status(build(r#"{"name":7}"#, "\"a\", \"b\"")),
        Err("name: must be a string (invalid type: integer `7`, expected a string)".to_owned())
    );
    // `*` leaves the call unconditional, on the typed path too.
    let any = typed(build(r#"{"name":"n"}"#, "*")).expect("left for the typed codec");
    assert_eq!(any.etag, "");
    // An etag in the body alone (as a gRPC caller gives it) is the typed codec's to read.
    let in_body = build_request(
        &route,
        &bindings,
        &json_headers(),
        br#"{"name":"n","etag":"abc"}"#,
        true,
    );
    let in_body = typed(in_body).expect("left for the typed codec");
    assert_eq!((in_body.name.as_str(), in_body.etag.as_str()), ("n", "abc"));
}

/// A malformed `If-Match` is answered as a 400 naming it, even when the typed message's charge
/// would not fit the budget: the typed path, which charges first, is not taken for it.
#[tokio::test]
async fn a_bad_if_match_is_named_before_the_typed_message_is_charged() {
    use crate::budget::{self, Charge, InflightBytes};
    use std::sync::Arc;

    let (route, bindings) = route_for(Method::PATCH, "/v1/streams/s");
    let body = br#"{"name":"a name long enough to be charged for"}"#;
    let mut headers = json_headers();
    headers.insert(header::IF_MATCH, HeaderValue::from_static("\"a\", \"b\""));
    // What reading the body holds by itself (its inspection); the typed message would add
    // the body's length to it.
    let inspected = {
        let bytes = Arc::new(InflightBytes::new(1 << 20));
        let charge = Arc::new(Charge::new(Arc::clone(&bytes)));
        let (route, bindings) = (route.clone(), bindings.clone());
        budget::scope(charge, async move {
            let _ = build_request(&route, &bindings, &json_headers(), body, false);
            bytes.used()
        })
        .await
    };
    assert!(inspected > 0);
    let bytes = Arc::new(InflightBytes::new(inspected + body.len() / 2));
    let charge = Arc::new(Charge::new(Arc::clone(&bytes)));
    let refused = budget::scope(charge, async move {
        build_request(&route, &bindings, &headers, body, true)
            .map(|_| ())
            .map_err(|problem| (problem.status(), problem.to_status().message().to_owned()))
    })
    .await;
    assert_eq!(
        refused,
        Err((
            400,
            "If-Match: give one entity tag: the resource's ETag as last read".to_owned()
        ))
    );
}

/// A create's body is left for the typed codec, with the path fields its `Location` is filled
/// from: the URL is the one the descriptors' whole request gives.
#[test]
fn a_create_is_left_for_the_typed_codec_with_what_its_location_needs() {
    use super::request::Built;

    let (route, bindings) = route_for(Method::POST, "/v1/streams/my%20s/topics");
    let created = route.created.clone().expect("a create");
    let body = br#"{"name":"t","partitions_count":2}"#;
    let build = |typed: bool| build_request(&route, &bindings, &json_headers(), body, typed);
    let Ok(Built::Json {
        location: Some(location),
        ..
    }) = build(true)
    else {
        panic!("a create with its stream in the path is left for the typed codec");
    };
    let Ok(Built::Message(message)) = build(false) else {
        panic!("the descriptors build the request");
    };
    let answer = br#"{"topic":{"id":3,"name":"t","partitions_count":2}}"#;
    let url = created.url_from_json(&location, answer);
    assert_eq!(url, created.url_from_json(&message, answer));
    assert_eq!(url.as_deref(), Some("/v1/streams/my%20s/topics/3"));

    // A create with no path variables: nothing to keep but the empty message.
    let (route, bindings) = route_for(Method::POST, "/streams");
    assert!(route.created.is_some());
    let built = build_request(&route, &bindings, &json_headers(), br#"{"name":"s"}"#, true);
    assert!(matches!(
        built,
        Ok(Built::Json {
            location: Some(_),
            ..
        })
    ));
}

/// Path strings written as protobuf straight away are the fields the descriptors build of
/// them: the same request once merged over the body.
#[test]
fn string_parameters_left_for_the_typed_codec_are_the_descriptors_fields() {
    use super::request::Built;
    use prost::Message as _;

    for path in [
        "/v1/streams/my%20s/topics/t%C3%A9/messages",
        "/v1/streams/0/topics/%22%5C/messages",
    ] {
        let (route, bindings) = route_for(Method::POST, path);
        let body = br#"{"messages":[{"text":"x"}]}"#;
        let build = |typed: bool| build_request(&route, &bindings, &json_headers(), body, typed);
        let Ok(Built::Json { body, overlay, .. }) = build(true) else {
            panic!("left for the typed codec: {path}");
        };
        let mut typed: crate::proto::SendMessagesRequest =
            serde_json::from_slice(&body).expect("typed");
        typed.merge(overlay.as_slice()).expect("merges");
        let Ok(Built::Message(message)) = build(false) else {
            panic!("built by the descriptors: {path}");
        };
        let descriptors =
            crate::proto::SendMessagesRequest::decode(message.encode_to_vec().as_slice())
                .expect("decodes");
        assert_eq!(typed, descriptors, "{path}");
        assert!(!typed.stream.is_empty() && !typed.topic.is_empty());
    }
    // A number is not a string: the descriptors write it.
    let (route, bindings) = route_for(Method::PUT, "/v1/streams/s/topics/t/consumers/c/offsets/2");
    let built = build_request(
        &route,
        &bindings,
        &json_headers(),
        br#"{"offset":"7"}"#,
        true,
    );
    let Ok(Built::Json { body, overlay, .. }) = built else {
        panic!("left for the typed codec");
    };
    let mut typed: crate::proto::StoreConsumerOffsetRequest =
        serde_json::from_slice(&body).expect("typed");
    typed.merge(overlay.as_slice()).expect("merges");
    assert_eq!(
        (typed.consumer.as_str(), typed.partition_id, typed.offset),
        ("c", 2, Some(7))
    );
}

/// A whole JSON request (Connect's) left to the typed codec holds the charge of its typed
/// request on top of what the descriptors' path holds, as a REST body does; handed back by the
/// codec, it gives that charge back, so a body the descriptors then parse is not counted twice.
#[tokio::test]
async fn a_json_request_left_to_the_typed_codec_holds_its_charge_and_gives_it_back_if_handed_back()
{
    use crate::budget::{self, Charge, InflightBytes};
    use crate::rest::transcode::{JsonRequest, json_request, untyped_json};

    let input = route_for(Method::POST, "/v1/streams/s/topics/t/messages")
        .0
        .method
        .input();
    let body = Bytes::from_static(
        br#"{"stream":"s","topic":"t","messages":[{"text":"x"},{"payload":"aGk="}]}"#,
    );
    let held = |typed: bool, hand_back: bool| {
        let bytes = std::sync::Arc::new(InflightBytes::new(1 << 30));
        let charge = std::sync::Arc::new(Charge::new(std::sync::Arc::clone(&bytes)));
        let (body, input) = (body.clone(), input.clone());
        // Read while the call runs: its charge is given back whole when it ends.
        budget::scope(charge, async move {
            let read = json_request(&input, &body, typed).map_err(|p| p.to_status().code());
            let charged = match &read {
                Ok(JsonRequest::Typed { charged }) => Some(*charged),
                _ => None,
            };
            if hand_back && let Some(charged) = charged {
                untyped_json(&input, &body, charged).expect("the descriptors parse it");
            }
            (charged, bytes.used())
        })
    };
    let (charged, typed_held) = held(true, false).await;
    let charged = charged.expect("left to the typed codec");
    let (parsed, descriptors_held) = held(false, false).await;
    assert_eq!(parsed, None, "parsed by the descriptors");
    assert!(
        descriptors_held > 0,
        "the inspection charges the body's values"
    );
    assert!(
        charged >= body.len(),
        "the typed request is charged at least the body's text"
    );
    assert_eq!(typed_held, descriptors_held + charged);
    let (_, handed_back_held) = held(true, true).await;
    assert_eq!(handed_back_held, descriptors_held);
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

/// A stream that fails after its first answer (an answer JSON cannot write) ends with a
/// problem carrying the request id: an SSE `problem` event, or an NDJSON error line.
#[tokio::test]
async fn a_stream_answer_that_cannot_be_written_ends_the_stream_with_a_problem_and_the_request_id()
{
    for sse in [true, false] {
        let items: crate::rest::direct::Items = Box::pin(futures_util::stream::iter([
            Ok(b"{}".to_vec()),
            Err(crate::rest::direct::ItemError::Unwritable(
                "a timestamp past year 9999".into(),
            )),
        ]));
        let response = render::stream_items(items, sse, Some("req-7".into()));
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
        // The detail is for the log, not the client.
        assert!(!text.contains("9999"), "{text}");
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

/// The typed codec against the descriptors, on bodies generated from the request's own
/// descriptor: every field under either name, scalars spelt every way proto3 JSON allows and
/// some it does not, nulls, unknown keys. Whatever the typed codec takes (after the inspection
/// REST runs first) the descriptors take too, as the same message; what it refuses goes to the
/// descriptors, so nothing else needs checking.
mod typed_codec {
    use proptest::{prelude::*, test_runner::TestCaseError};

    use prost::Message as _;
    use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
    use serde_json::{Map, Value, json};

    use super::super::render;
    use super::{Bytes, Method, Query, json_headers, request_message, route_for};
    use crate::{proto, rest::transcode::request::Built};

    fn scalar(kind: &Kind) -> BoxedStrategy<Value> {
        let any_number = prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            Just(json!(1.0)),
            Just(json!(-0.0)),
        ];
        let as_text = |values: Vec<&'static str>| {
            proptest::sample::select(values).prop_map(|text| Value::String(text.into()))
        };
        match kind {
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 | Kind::Uint32 | Kind::Fixed32 => {
                prop_oneof![
                    any::<i32>().prop_map(Value::from),
                    any::<u32>().prop_map(Value::from),
                    any_number,
                    as_text(vec!["7", "-7", "1e2", "1.0", " 7", "x", "4294967296"]),
                ]
                .boxed()
            }
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 | Kind::Uint64 | Kind::Fixed64 => {
                prop_oneof![
                    any_number,
                    any::<i64>().prop_map(|n| Value::String(n.to_string())),
                    any::<u64>().prop_map(|n| Value::String(n.to_string())),
                    as_text(vec!["1e2", "1.0", "-0", "18446744073709551616", "0x10", ""]),
                ]
                .boxed()
            }
            Kind::Double | Kind::Float => prop_oneof![
                any_number,
                as_text(vec!["NaN", "Infinity", "-Infinity", "1.5", "nan", "1e400"]),
            ]
            .boxed(),
            Kind::Bool => prop_oneof![
                any::<bool>().prop_map(Value::from),
                as_text(vec!["true", "false"]),
                Just(json!(1)),
            ]
            .boxed(),
            Kind::String => prop_oneof![
                "[a-z0-9_.-]{0,12}".prop_map(Value::from),
                as_text(vec![
                    "0190f7c4-7b8e-7c4a-9d2e-1234567890ab",
                    "0190F7C4-7B8E-7C4A-9D2E-1234567890AB",
                    "é\u{0}",
                ]),
                Just(json!(5)),
            ]
            .boxed(),
            Kind::Bytes => prop_oneof![
                as_text(vec![
                    "aGk=", "aGk", "-_8=", "+/8=", "a", "aGk=aGk=", "", " aGk="
                ]),
                Just(json!(5)),
            ]
            .boxed(),
            Kind::Enum(values) => {
                let names: Vec<Value> = values
                    .values()
                    .flat_map(|value| {
                        [
                            Value::String(value.name().to_owned()),
                            Value::String(value.name().to_lowercase()),
                            Value::from(value.number()),
                        ]
                    })
                    .chain([json!(99), json!("NOPE"), json!(1.5)])
                    .collect();
                proptest::sample::select(names).boxed()
            }
            Kind::Message(message) => match message.full_name() {
                "google.protobuf.Timestamp" => as_text(vec![
                    "2026-11-25T10:00:00Z",
                    "2026-11-25T10:00:00.5+01:00",
                    "2026-11-25T10:00:00.123456Z",
                    "2026-11-25T10:00:00.000000001Z",
                    "0001-01-01T00:00:00Z",
                    "9999-12-31T23:59:59.999999999Z",
                    "2026-11-25 10:00:00Z",
                    "1970-01-01T00:00:00Z",
                ])
                .boxed(),
                "google.protobuf.Duration" => {
                    as_text(vec!["1s", "1.5s", "-2s", "0s", "1", "1.0000000001s"]).boxed()
                }
                "google.protobuf.Value" => {
                    let leaf = prop_oneof![
                        Just(Value::Null),
                        any::<bool>().prop_map(Value::from),
                        (-1e9f64..1e9).prop_map(Value::from),
                        any::<i32>().prop_map(Value::from),
                        "[a-z]{0,5}".prop_map(Value::from),
                    ];
                    leaf.prop_recursive(3, 12, 4, |inner| {
                        prop_oneof![
                            proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                            proptest::collection::btree_map("[a-c]{1,2}", inner, 0..3)
                                .prop_map(|m| Value::Object(m.into_iter().collect())),
                        ]
                    })
                    .boxed()
                }
                _ => Just(json!({})).boxed(),
            },
        }
    }

    /// A value for `field`: one item, a list, a map, a nested message, or null.
    fn value(field: &FieldDescriptor, depth: u32, maps: usize) -> BoxedStrategy<Value> {
        let item = match field.kind() {
            Kind::Message(message) if field.is_map() => {
                let value_field = message.map_entry_value_field();
                let item = value(&value_field, depth, maps);
                return prop_oneof![
                    19 => proptest::collection::btree_map("[a-z]{1,3}", item, 0..=maps)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                    1 => Just(Value::Null),
                ]
                .boxed();
            }
            Kind::Message(message)
                if depth > 0 && !message.full_name().starts_with("google.protobuf.") =>
            {
                object(&message, depth - 1, maps)
            }
            kind => scalar(&kind),
        };
        if field.is_list() {
            prop_oneof![
                19 => proptest::collection::vec(item, 0..3).prop_map(Value::Array),
                1 => Just(Value::Null),
            ]
            .boxed()
        } else {
            prop_oneof![19 => item, 1 => Just(Value::Null)].boxed()
        }
    }

    /// An object for `message`: a few of its fields (a map holds at most `maps` entries), each under its JSON or its proto name,
    /// sometimes an unknown key.
    fn object(message: &MessageDescriptor, depth: u32, maps: usize) -> BoxedStrategy<Value> {
        let fields: Vec<BoxedStrategy<Option<(String, Value)>>> = message
            .fields()
            .map(|field| {
                let (json_name, proto_name) =
                    (field.json_name().to_owned(), field.name().to_owned());
                proptest::option::weighted(
                    0.35,
                    (any::<bool>(), value(&field, depth, maps)).prop_map(move |(by_json, v)| {
                        (
                            if by_json {
                                json_name.clone()
                            } else {
                                proto_name.clone()
                            },
                            v,
                        )
                    }),
                )
                .boxed()
            })
            .collect();
        (
            fields,
            proptest::option::weighted(0.05, Just(("unknownKey".to_owned(), json!(1)))),
        )
            .prop_map(|(fields, unknown)| {
                Value::Object(
                    fields
                        .into_iter()
                        .flatten()
                        .chain(unknown)
                        .collect::<Map<_, _>>(),
                )
            })
            .boxed()
    }

    /// Builds the request for `body` on `method path` left for a typed codec; when it is,
    /// the typed codec's message (if it takes the body) must be the descriptors' one.
    fn agree<Req>(method: Method, path: &str, body: &Value) -> Result<bool, TestCaseError>
    where
        Req: prost::Message + Default + serde::de::DeserializeOwned,
    {
        let (route, bindings) = route_for(method, path);
        let text = Bytes::from(body.to_string());
        let built = request_message(
            &route,
            bindings,
            None,
            &json_headers(),
            &text,
            None,
            Query::Lenient,
            true,
        );
        let Ok(Built::Json {
            body,
            overlay,
            charged,
            ..
        }) = built
        else {
            return Ok(false);
        };
        let descriptors = super::super::request::untyped(&route, &body, &overlay, charged);
        let Ok(mut typed) = serde_json::from_slice::<Req>(&body) else {
            return Ok(false);
        };
        typed
            .merge(overlay.as_slice())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let Ok(descriptors) = descriptors else {
            return Err(TestCaseError::fail(format!(
                "the typed codec took what the descriptors refuse: {body:?}"
            )));
        };
        // Compared as decoded from the wire (where a field set to its default and an unset one
        // are the same), then as JSON values (where NaN is "NaN" and maps have no order).
        let decode = |wire: Vec<u8>| {
            DynamicMessage::decode(route.method.input(), wire.as_slice())
                .map_err(|e| TestCaseError::fail(e.to_string()))
        };
        let as_json = |message: &DynamicMessage| {
            serde_json::to_value(message).map_err(|e| TestCaseError::fail(e.to_string()))
        };
        let (typed, descriptors) = (
            as_json(&decode(typed.encode_to_vec())?)?,
            as_json(&decode(descriptors.encode_to_vec())?)?,
        );
        prop_assert!(
            typed == descriptors,
            "the typed codec and the descriptors differ on {:?}: {} against {}",
            body,
            typed,
            descriptors
        );
        Ok(true)
    }

    fn input(method: Method, path: &str) -> MessageDescriptor {
        route_for(method, path).0.method.input()
    }

    /// Runs [`agree`] on 1,000 generated bodies, of which the typed codec must build 40 at least.
    fn run<Req>(method: Method, path: &str, depth: u32)
    where
        Req: prost::Message + Default + serde::de::DeserializeOwned,
    {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 1000,
            ..ProptestConfig::default()
        });
        let typed = std::cell::Cell::new(0);
        let strategy = object(&input(method.clone(), path), depth, 2);
        let outcome = runner.run(&strategy, |body| {
            if agree::<Req>(method.clone(), path, &body)? {
                typed.set(typed.get() + 1);
            }
            Ok(())
        });
        if let Err(failure) = outcome {
            panic!("{failure}");
        }
        // The generator reaches the typed codec often enough to mean something.
        let typed = typed.get();
        assert!(
            typed >= 40,
            "only {typed} of 1000 bodies reached the typed codec"
        );
    }

    #[test]
    fn sends() {
        run::<proto::SendMessagesRequest>(Method::POST, "/v1/streams/s/topics/t/messages", 3);
    }

    #[test]
    fn topic_changes() {
        run::<proto::UpdateTopicRequest>(Method::PATCH, "/v1/streams/s/topics/t", 2);
    }

    #[test]
    fn events() {
        run::<proto::PublishEventsRequest>(Method::POST, "/v1/streams/s/topics/t/events:batch", 3);
    }

    #[test]
    fn offsets() {
        run::<proto::StoreConsumerOffsetRequest>(
            Method::PUT,
            "/v1/streams/s/topics/t/consumers/c/offsets/1",
            2,
        );
    }

    /// Writes 500 generated answers of type `Res` (maps of one entry at most, whose order
    /// nothing fixes) both ways: the typed codec's JSON must be the descriptors' byte for
    /// byte. Returns how many answers were compared.
    fn written<Res>(method: Method, path: &str) -> usize
    where
        Res: prost::Message + Default + serde::Serialize,
    {
        each_answer::<Res>(method, path, |message, typed| {
            let descriptors = render::json_bytes(message).map_err(TestCaseError::fail)?;
            let typed = crate::rest::typed_json_bytes(&typed).map_err(TestCaseError::fail)?;
            prop_assert_eq!(
                String::from_utf8_lossy(&typed),
                String::from_utf8_lossy(&descriptors)
            );
            Ok(())
        })
    }

    /// Runs `check` on 500 generated answers of `method path` (maps of one entry at most),
    /// each as its dynamic message and as the typed `Res`; returns how many parsed.
    fn each_answer<Res>(
        method: Method,
        path: &str,
        check: impl Fn(&DynamicMessage, Res) -> Result<(), TestCaseError>,
    ) -> usize
    where
        Res: prost::Message + Default,
    {
        let output = route_for(method, path).0.method.output();
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: 500,
            ..ProptestConfig::default()
        });
        let compared = std::cell::Cell::new(0);
        let outcome = runner.run(&object(&output, 3, 1), |json| {
            let Ok(message) = DynamicMessage::deserialize(output.clone(), &json) else {
                return Ok(());
            };
            let typed = Res::decode(message.encode_to_vec().as_slice())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            check(&message, typed)?;
            compared.set(compared.get() + 1);
            Ok(())
        });
        if let Err(failure) = outcome {
            panic!("{failure}");
        }
        compared.get()
    }

    #[test]
    fn answers_the_typed_codec_writes_are_written_as_before() {
        let sends =
            written::<proto::SendMessagesResponse>(Method::POST, "/v1/streams/s/topics/t/messages");
        let stored = written::<proto::StoreConsumerOffsetResponse>(
            Method::PUT,
            "/v1/streams/s/topics/t/consumers/c/offsets/1",
        );
        let offsets = written::<proto::GetConsumerOffsetResponse>(
            Method::GET,
            "/v1/streams/s/topics/t/consumers/c/offsets/1",
        );
        let polls =
            written::<proto::PollMessagesResponse>(Method::GET, "/v1/streams/s/topics/t/messages");
        let events =
            written::<proto::PollEventsResponse>(Method::GET, "/v1/streams/s/topics/t/events");
        let published = written::<proto::PublishEventsResponse>(
            Method::POST,
            "/v1/streams/s/topics/t/events:batch",
        );
        let topics = written::<proto::ListTopicsResponse>(Method::GET, "/v1/streams/s/topics");
        let streams = written::<proto::ListStreamsResponse>(Method::GET, "/v1/streams");
        let stats = written::<proto::GetStatsResponse>(Method::GET, "/v1/stats");
        for (what, compared) in [
            ("sends", sends),
            ("stored", stored),
            ("offsets", offsets),
            ("polls", polls),
            ("event polls", events),
            ("published events", published),
            ("topic lists", topics),
            ("stream lists", streams),
        ] {
            assert!(compared >= 100, "only {compared} {what} answers parsed");
        }
        // Its many counters, each often generated out of range, leave fewer that parse.
        assert!(stats >= 40, "only {stats} stats answers parsed");
    }

    /// The answers REST reads before sending (for an `ETag`, a `Location`, one field), also
    /// written by the typed codec: byte for byte the descriptors' JSON.
    #[test]
    fn answers_read_before_sending_are_written_as_before() {
        const TOPIC: &str = "/v1/streams/s/topics/t";
        const OFFSET: &str = "/v1/streams/s/topics/t/consumers/c/offsets/1";
        let stream_answers = [
            written::<proto::CreateStreamResponse>(Method::POST, "/v1/streams"),
            written::<proto::GetStreamResponse>(Method::GET, "/v1/streams/s"),
            written::<proto::UpdateStreamResponse>(Method::PATCH, "/v1/streams/s"),
            written::<proto::DeleteStreamResponse>(Method::DELETE, "/v1/streams/s"),
            written::<proto::PurgeStreamResponse>(Method::POST, "/v1/streams/s:purge"),
        ];
        let topic_answers = [
            written::<proto::CreateTopicResponse>(Method::POST, "/v1/streams/s/topics"),
            written::<proto::GetTopicResponse>(Method::GET, TOPIC),
            written::<proto::UpdateTopicResponse>(Method::PATCH, TOPIC),
            written::<proto::DeleteTopicResponse>(Method::DELETE, TOPIC),
            written::<proto::PurgeTopicResponse>(Method::POST, &format!("{TOPIC}:purge")),
            written::<proto::CreatePartitionsResponse>(
                Method::POST,
                &format!("{TOPIC}/partitions"),
            ),
            written::<proto::DeletePartitionsResponse>(
                Method::DELETE,
                &format!("{TOPIC}/partitions"),
            ),
        ];
        let others = [
            written::<proto::DeleteConsumerOffsetResponse>(Method::DELETE, OFFSET),
            written::<proto::PublishEventResponse>(Method::POST, &format!("{TOPIC}/events")),
        ];
        for (what, compared) in stream_answers
            .iter()
            .map(|n| ("stream", n))
            .chain(topic_answers.iter().map(|n| ("topic", n)))
            .chain(others.iter().map(|n| ("other", n)))
        {
            assert!(*compared >= 40, "only {compared} {what} answers parsed");
        }
    }

    /// Every unary route answers the typed codec's JSON, read from its text
    /// (`respond_written`), as it answers the descriptors' message (`respond_message`): the
    /// same status, body, `ETag` and `Location`, on 300 generated answers a route. The JSON is
    /// the descriptors' (`json_bytes`), which the typed codec's is byte for byte for every
    /// answer type (`answers_read_before_sending_are_written_as_before` and the test above it).
    #[test]
    fn answers_read_from_their_json_are_answered_as_from_their_message() {
        use std::cell::Cell;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        let table = crate::rest::route_table().expect("routes");
        let (etags, locations, fields) = (Cell::new(0), Cell::new(0), Cell::new(0));
        for route in table.routes() {
            if route.method.is_server_streaming() {
                continue;
            }
            let output = route.method.output();
            // A create's request: every string field a name a URL must escape.
            let mut request = DynamicMessage::new(route.method.input());
            for field in route.method.input().fields() {
                if field.kind() == Kind::String && !field.is_list() {
                    request.set_field(&field, prost_reflect::Value::String("a b/é".into()));
                }
            }
            let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
                cases: 300,
                ..ProptestConfig::default()
            });
            let outcome = runner.run(&object(&output, 3, 1), |json| {
                let Ok(message) = DynamicMessage::deserialize(output.clone(), &json) else {
                    return Ok(());
                };
                let written = render::json_bytes(&message).map_err(TestCaseError::fail)?;
                let answered =
                    |response: Result<axum::response::Response, crate::answer::Problem>| {
                        let response =
                            response.map_err(|problem| TestCaseError::fail(problem.to_json()))?;
                        let (parts, body) = response.into_parts();
                        let body = runtime
                            .block_on(axum::body::to_bytes(body, usize::MAX))
                            .map_err(|err| TestCaseError::fail(err.to_string()))?;
                        Ok::<_, TestCaseError>((parts.status, parts.headers, body))
                    };
                let by_message = answered(render::respond_message(route, message, Some(&request)))?;
                let by_json = answered(render::respond_written(route, written, Some(&request)))?;
                prop_assert_eq!(by_json.0, by_message.0);
                prop_assert_eq!(&by_json.1, &by_message.1);
                prop_assert_eq!(
                    String::from_utf8_lossy(&by_json.2),
                    String::from_utf8_lossy(&by_message.2)
                );
                let count =
                    |cell: &Cell<usize>, counted: bool| cell.set(cell.get() + usize::from(counted));
                count(&etags, by_json.1.contains_key(http::header::ETAG));
                count(&locations, by_json.1.contains_key(http::header::LOCATION));
                count(&fields, route.response_body.is_some());
                Ok(())
            });
            if let Err(failure) = outcome {
                panic!("{} {}: {failure}", route.http_method, route.template);
            }
        }
        let (etags, locations, fields) = (etags.get(), locations.get(), fields.get());
        // Each part was compared where it is set, not only where it is absent.
        assert!(etags >= 20, "only {etags} answers carried an ETag");
        assert!(
            locations >= 40,
            "only {locations} answers carried a Location"
        );
        assert!(
            fields >= 100,
            "only {fields} answers were one field of the message"
        );
    }

    /// A server stream's answers, written by the typed codec (a direct stream) and by the
    /// descriptors (as REST wrote them before the typed codecs): the same NDJSON line and the same
    /// SSE event (its id, name and data), byte for byte.
    #[test]
    fn streamed_answers_are_written_as_before() {
        let compared = each_answer::<proto::SubscribeResponse>(
            Method::GET,
            "/v1/streams/s/topics/t/messages:subscribe",
            |message, typed| {
                let mut line =
                    crate::rest::typed_json_bytes(&typed).map_err(TestCaseError::fail)?;
                let event = super::super::render::sse_event(&line)
                    .map_err(|problem| TestCaseError::fail(problem.to_json()))?;
                let (sse, ndjson) = (
                    super::super::render::stream_item(true, message),
                    super::super::render::stream_item(false, message),
                );
                prop_assert_eq!(
                    String::from_utf8_lossy(&event),
                    String::from_utf8_lossy(&sse)
                );
                line.push(b'\n');
                prop_assert_eq!(
                    String::from_utf8_lossy(&line),
                    String::from_utf8_lossy(&ndjson)
                );
                Ok(())
            },
        );
        assert!(compared >= 100, "only {compared} streamed answers parsed");
    }

    /// A large answer written in pieces ([`render::Pieces`]) is the answer written whole, byte
    /// for byte, however the pieces fall: each item a piece of its own, a few together, all
    /// in one.
    #[test]
    fn answers_in_pieces_are_written_as_whole() {
        fn agree<Res, I>(method: Method, path: &str, take: fn(&mut Res) -> Vec<I>) -> usize
        where
            Res: prost::Message + Default + serde::Serialize,
            I: serde::Serialize + Clone,
        {
            each_answer::<Res>(method, path, |_, mut typed| {
                let whole = crate::rest::typed_json_bytes(&typed).map_err(TestCaseError::fail)?;
                let items = take(&mut typed);
                for piece_bytes in [1, 100, render::PIECE_BYTES] {
                    let pieces =
                        render::Pieces::new(&typed, "messages", items.clone(), piece_bytes)
                            .map_err(TestCaseError::fail)?
                            .collect::<Result<Vec<Bytes>, _>>()
                            .map_err(|err| TestCaseError::fail(err.to_string()))?;
                    let written = pieces.concat();
                    prop_assert_eq!(
                        String::from_utf8_lossy(&written),
                        String::from_utf8_lossy(&whole)
                    );
                    if piece_bytes == 1 {
                        // The head with the first item, a piece per item after it, the tail
                        // (with the head when there are no items).
                        prop_assert_eq!(pieces.len(), items.len() + 1);
                    }
                }
                Ok(())
            })
        }
        let polls = agree::<proto::PollMessagesResponse, _>(
            Method::GET,
            "/v1/streams/s/topics/t/messages",
            |answer| std::mem::take(&mut answer.messages),
        );
        let events = agree::<proto::PollEventsResponse, _>(
            Method::GET,
            "/v1/streams/s/topics/t/events",
            |answer| std::mem::take(&mut answer.messages),
        );
        assert!(polls >= 100, "only {polls} polls parsed");
        assert!(events >= 100, "only {events} event polls parsed");
    }

    /// An item that cannot be written (a time past year 9999) ends the pieces with an error,
    /// after those written before it, and nothing follows: the body is cut, never closed as a
    /// whole answer.
    #[test]
    fn an_item_that_cannot_be_written_ends_the_pieces_with_an_error() {
        let item = |seconds| proto::PolledEvent {
            timestamp: Some(pbjson_types::Timestamp { seconds, nanos: 0 }),
            ..Default::default()
        };
        let answer = proto::PollEventsResponse::default();
        let items = vec![item(0), item(253_402_300_800), item(0)];
        let mut pieces = render::Pieces::new(&answer, "messages", items, 1).expect("pieces");
        let first = pieces.next().expect("a first piece").expect("written");
        assert!(first.starts_with(b"{\"messages\":[{"), "{first:?}");
        assert!(pieces.next().expect("a second piece").is_err());
        assert!(pieces.next().is_none(), "nothing after the error");
    }

    /// What `Writable` says of a polled item is what the typed codec does with it: each thing
    /// it refuses (a time past year 9999, a non-finite number in a `Value`, wherever they sit)
    /// and items just inside. An answer holding one such item is refused before a piece is
    /// sent, as the whole answer would be.
    #[test]
    fn writable_items_are_those_the_codec_writes() {
        use pbjson_types::value::Kind;

        use crate::proto::wkt::Writable;
        let time = |seconds| Some(pbjson_types::Timestamp { seconds, nanos: 0 });
        let value = |kind| pbjson_types::Value { kind: Some(kind) };
        let nested = |number: f64| {
            let list = value(Kind::ListValue(pbjson_types::ListValue {
                values: vec![value(Kind::NumberValue(number))],
            }));
            value(Kind::StructValue(pbjson_types::Struct {
                fields: [("k".to_owned(), list)].into(),
            }))
        };
        let message = |seconds, number| proto::PolledMessage {
            timestamp: time(seconds),
            body: Some(proto::polled_message::Body::Json(nested(number))),
            ..Default::default()
        };
        let event = |outer, inner, data: f64, generic: f64| proto::PolledEvent {
            timestamp: time(outer),
            event: Some(proto::Event {
                timestamp: time(inner),
                payload: Some(proto::EventPayload {
                    data: Some(nested(data)),
                    event: Some(proto::event_payload::Event::Generic(nested(generic))),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        const LAST: i64 = 253_402_300_799;
        fn check<T: serde::Serialize + Writable>(item: &T, writable: bool) {
            assert_eq!(item.is_writable(), writable);
            assert_eq!(crate::rest::typed_json_bytes(item).is_ok(), writable);
        }
        check(&message(LAST, 1.5), true);
        check(&message(LAST + 1, 1.5), false);
        check(&message(0, f64::NAN), false);
        check(&message(0, f64::INFINITY), false);
        check(&event(LAST, LAST, 1.5, -2.0), true);
        check(&event(LAST + 1, 0, 1.5, 1.5), false);
        check(&event(0, LAST + 1, 1.5, 1.5), false);
        check(&event(0, 0, f64::NEG_INFINITY, 1.5), false);
        check(&event(0, 0, 1.5, f64::NAN), false);

        let answer = proto::PollMessagesResponse::default();
        let items = |last| vec![message(0, 1.5), message(last, 1.5)];
        assert!(crate::rest::typed_json_pieces(&answer, "messages", items(LAST)).is_ok());
        assert!(crate::rest::typed_json_pieces(&answer, "messages", items(LAST + 1)).is_err());
    }

    /// An answer without the list it is to be written around is refused before anything is
    /// written.
    #[test]
    fn pieces_need_the_answers_list() {
        let answer = proto::PollEventsResponse::default();
        let pieces = render::Pieces::new(&answer, "events", Vec::<proto::PolledEvent>::new(), 1);
        assert!(pieces.is_err());
    }

    /// Which answers the typed codec writes: the plain ones, timestamps and all; not one with
    /// an `ETag` or a `Location`, not one field of it, not a stream.
    #[test]
    fn the_typed_codec_writes_plain_answers_only() {
        let writes =
            |method: Method, path: &str| super::super::json_answer(&route_for(method, path).0);
        assert!(writes(Method::POST, "/v1/streams/s/topics/t/messages"));
        assert!(writes(
            Method::GET,
            "/v1/streams/s/topics/t/consumers/c/offsets/1"
        ));
        // 204: nothing to write.
        assert!(!writes(
            Method::PUT,
            "/v1/streams/s/topics/t/consumers/c/offsets/1"
        ));
        assert!(writes(Method::POST, "/v1/streams/s/topics/t/events:batch"));
        assert!(writes(Method::GET, "/v1/streams/s/topics/t/messages"));
        assert!(writes(Method::GET, "/v1/streams/s/topics/t/events"));
        assert!(writes(Method::GET, "/v1/stats"));
        // An ETag, a Location, one field of the answer, a stream.
        assert!(!writes(Method::GET, "/v1/streams/s"));
        assert!(!writes(Method::POST, "/v1/streams"));
        assert!(!writes(Method::GET, "/streams"));
        assert!(!writes(
            Method::GET,
            "/v1/streams/s/topics/t/messages:subscribe"
        ));
    }

    /// The generator reaches the typed codec's success often enough to mean something.
    #[test]
    fn most_valid_sends_are_left_for_the_typed_codec() {
        let body = json!({"messages": [{"payload": "aGk="}, {"json": {"a": [1, "x", true]}}]});
        let agreed = agree::<proto::SendMessagesRequest>(
            Method::POST,
            "/v1/streams/s/topics/t/messages",
            &body,
        );
        assert!(matches!(agreed, Ok(true)), "{agreed:?}");
        let null = json!({"messages": [{"json": null}]});
        let agreed = agree::<proto::SendMessagesRequest>(
            Method::POST,
            "/v1/streams/s/topics/t/messages",
            &null,
        );
        assert!(
            matches!(agreed, Ok(false)),
            "a null Value field is left to the descriptors"
        );
    }

    /// Connect's JSON goes through each method's typed codec as start-up builds the table. For
    /// every method of the API: 300 generated requests, each read with its typed codec where
    /// REST would use one and by the descriptors alone, must give the same message or the same
    /// refusal; 300 generated answers must be written as the descriptors write them, byte for
    /// byte.
    #[test]
    fn connect_json_is_read_and_written_by_each_methods_typed_codec_as_by_the_descriptors() {
        use crate::rest::transcode::{JsonRequest, json_request, untyped_json};

        /// A request as Connect's direct call reads it: protobuf from the typed codec, or a
        /// message from the descriptors (left to them, or handed back by the codec).
        enum Read {
            Typed(Vec<u8>),
            Parsed(DynamicMessage),
        }

        let codecs = crate::startup::json_codecs();
        let pool = prost_reflect::DescriptorPool::decode(proto::FILE_DESCRIPTOR_SET)
            .expect("the descriptor set");
        let methods: Vec<_> = pool
            .services()
            .filter(|service| service.package_name() == crate::rest::API_PACKAGE)
            .flat_map(|service| service.methods().collect::<Vec<_>>())
            .collect();
        assert_eq!(methods.len(), codecs.len(), "one codec for each method");
        let config = ProptestConfig {
            cases: 300,
            ..ProptestConfig::default()
        };
        let as_json = |message: &DynamicMessage| {
            serde_json::to_value(message).map_err(|e| TestCaseError::fail(e.to_string()))
        };
        for method in methods {
            let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
            let codec = codecs
                .get(&path)
                .unwrap_or_else(|| panic!("{path} has no codec"));
            let (input, output) = (method.input(), method.output());

            let typed_reads = std::cell::Cell::new(0);
            let mut runner = proptest::test_runner::TestRunner::new(config.clone());
            let outcome = runner.run(&object(&input, 2, 2), |body| {
                let text = Bytes::from(body.to_string());
                let typed = json_request(&input, &text, true).and_then(|read| match read {
                    JsonRequest::Typed { charged } => match (codec.request)(&text) {
                        Some(wire) => Ok(Read::Typed(wire)),
                        None => untyped_json(&input, &text, charged).map(Read::Parsed),
                    },
                    JsonRequest::Parsed(message) => Ok(Read::Parsed(message)),
                });
                let descriptors = json_request(&input, &text, false);
                match (typed, descriptors) {
                    (Ok(Read::Typed(wire)), Ok(JsonRequest::Parsed(message))) => {
                        let decoded = DynamicMessage::decode(input.clone(), wire.as_slice())
                            .map_err(|e| TestCaseError::fail(e.to_string()))?;
                        prop_assert_eq!(as_json(&decoded)?, as_json(&message)?, "{}", body);
                        typed_reads.set(typed_reads.get() + 1);
                    }
                    (Ok(Read::Parsed(typed)), Ok(JsonRequest::Parsed(message))) => {
                        prop_assert_eq!(as_json(&typed)?, as_json(&message)?, "{}", body);
                    }
                    (Err(typed), Err(descriptors)) => {
                        let (typed, descriptors) = (typed.to_status(), descriptors.to_status());
                        prop_assert_eq!(typed.message(), descriptors.message());
                    }
                    (typed, descriptors) => prop_assert!(
                        false,
                        "{path} on {body}: typed {:?}, descriptors {:?}",
                        typed.map(|_| ()).map_err(|p| p.to_status()),
                        descriptors.map(|_| ()).map_err(|p| p.to_status()),
                    ),
                }
                Ok(())
            });
            if let Err(failure) = outcome {
                panic!("{path}: {failure}");
            }
            // Bodies with a time or a `null` are the descriptors' to read: of those generated
            // for a poll, a tenth or so are left for the typed codec.
            assert!(
                typed_reads.get() >= 15,
                "{path}: only {} of 300 requests were read by the typed codec",
                typed_reads.get()
            );

            let written = std::cell::Cell::new(0);
            let mut runner = proptest::test_runner::TestRunner::new(config.clone());
            let outcome = runner.run(&object(&output, 3, 1), |json| {
                let Ok(message) = DynamicMessage::deserialize(output.clone(), &json) else {
                    return Ok(());
                };
                let wire = message.encode_to_vec();
                let descriptors = render::json_bytes(&message).map_err(TestCaseError::fail)?;
                let typed = (codec.answer)(&wire).map_err(TestCaseError::fail)?;
                prop_assert_eq!(
                    String::from_utf8_lossy(&typed),
                    String::from_utf8_lossy(&descriptors)
                );
                written.set(written.get() + 1);
                Ok(())
            });
            if let Err(failure) = outcome {
                panic!("{path}: {failure}");
            }
            // Most answer types parse about half of what is generated; the stats' answer
            // (maps of counters by name) about a tenth.
            assert!(
                written.get() >= 10,
                "{path}: only {} of 300 answers were compared",
                written.get()
            );
        }
    }
}
