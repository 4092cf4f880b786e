//! What REST accepts and refuses on the way in, as HTTP clients, proxies and browsers send it:
//! required values, parse errors that name their field, fields given twice, unknown query
//! parameters, percent-encoded paths, the usual spellings of booleans, integers and times, and
//! compressed bodies. Where a rule is the service's own, gRPC is checked to refuse alike.

use iggy_gateway::proto;
use serde_json::{Value, json};
use tonic::Code;
use tonic_types::StatusExt;

use crate::helpers::{TestApp, spawn_app, spawn_app_with_default_topic, spawn_configured};

const OFFSETS: &str = "/v1/streams/orders/topics/created/consumers/billing/offsets/0";
const MESSAGES: &str = "/v1/streams/orders/topics/created/messages";

async fn app_with_messages() -> TestApp {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 2).await;
    app.send_texts("orders", "created", 0, &["a", "b", "c"])
        .await;
    app
}

/// The status, and the first violation's field (`Null` when there is none).
fn refused(answer: &(u16, Value)) -> (u16, Value) {
    (answer.0, answer.1["violations"][0]["field"].clone())
}

/// A request with a raw path and query (no client-side normalisation) and an optional body.
async fn send_raw(
    app: &TestApp,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let mut request = app
        .http1
        .request(method, app.url(path_and_query))
        .header("content-type", "application/json");
    if let Some(body) = body {
        request = request.body(body.to_owned());
    }
    let response = request.send().await.expect("sent");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.expect("body");
    let json = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).expect("a JSON answer")
    };
    (status, json)
}

fn grpc_field(err: &tonic::Status) -> String {
    err.get_details_bad_request()
        .map(|bad| bad.field_violations[0].field.clone())
        .unwrap_or_default()
}

// A missing required value is refused, naming it, never read as zero.

#[tokio::test]
async fn storing_a_consumer_offset_without_an_offset_is_refused_naming_it_not_read_as_zero() {
    let app = app_with_messages().await;
    assert_eq!(app.put_json(OFFSETS, json!({"offset": "2"})).await.0, 204);

    for body in [None, Some("{}"), Some(r#"{"offset": null}"#)] {
        let answer = send_raw(&app, reqwest::Method::PUT, OFFSETS, body).await;
        assert_eq!(
            refused(&answer),
            (400, json!("offset")),
            "{body:?}: {}",
            answer.1
        );
        assert_eq!(answer.1["reason"], "INVALID_ARGUMENT");
        assert_eq!(answer.1["violations"][0]["description"], "is required");
    }
    assert_eq!(
        app.stored_offset("orders", "created", "billing", 0).await,
        Some(2),
        "the stored offset is untouched"
    );

    // gRPC refuses alike; an explicit 0 is an offset like any other.
    let mut client = app.messages.clone();
    let request = |offset| proto::StoreConsumerOffsetRequest {
        stream: "orders".into(),
        topic: "created".into(),
        consumer: "billing".into(),
        partition_id: 0,
        offset,
    };
    let err = client
        .store_consumer_offset(request(None))
        .await
        .expect_err("no offset");
    assert_eq!(
        (err.code(), grpc_field(&err)),
        (Code::InvalidArgument, "offset".into())
    );
    assert_eq!(err.message(), "offset: is required");
    client
        .store_consumer_offset(request(Some(0)))
        .await
        .expect("offset 0 stored");
    assert_eq!(
        app.stored_offset("orders", "created", "billing", 0).await,
        Some(0)
    );
    assert_eq!(app.put_json(OFFSETS, json!({"offset": 1})).await.0, 204);
    assert_eq!(
        app.stored_offset("orders", "created", "billing", 0).await,
        Some(1)
    );
}

// Every parse error names its field: query, path or body.

#[tokio::test]
async fn values_that_do_not_parse_are_refused_naming_their_field() {
    let app = app_with_messages().await;
    let cases = [
        (format!("{MESSAGES}?count=1.5"), "count"),
        (format!("{MESSAGES}?count=ten"), "count"),
        (format!("{MESSAGES}?count=1&strategy=soonest"), "strategy"),
        (
            format!("{MESSAGES}?count=1&strategy=POLLING_STRATEGY_TIMESTAMP&timestamp=yesterday"),
            "timestamp",
        ),
        (
            format!("{MESSAGES}?count=1&partition_id=-1"),
            "partition_id",
        ),
        (
            "/v1/streams/orders/topics/created/consumers/billing/offsets/abc".to_owned(),
            "partition_id",
        ),
    ];
    for (path, field) in cases {
        let answer = app.get_json(&path).await;
        assert_eq!(
            refused(&answer),
            (400, json!(field)),
            "{path}: {}",
            answer.1
        );
        let detail = answer.1["detail"].as_str().unwrap_or_default();
        assert!(
            detail.starts_with(&format!("{field}: must be ")),
            "{detail}"
        );
    }
    let answer = app
        .get_json(&format!("{MESSAGES}?count=1&strategy=soonest"))
        .await;
    assert!(
        answer.1["violations"][0]["description"]
            .as_str()
            .is_some_and(|d| d.contains("POLLING_STRATEGY_FIRST")),
        "the values an enum takes are listed: {}",
        answer.1
    );

    let bodies = [
        (
            "/v1/streams/orders/topics",
            json!({"name": "t", "partitions_count": 2.5}),
            "partitions_count",
        ),
        (
            "/v1/streams/orders/topics",
            json!({"name": "t", "partitionsCount": "two"}),
            "partitionsCount",
        ),
        (
            MESSAGES,
            json!({"messages": [{"text": "a"}, {"text": "b", "headers": {"h": {"int64_value": "x"}}}]}),
            "messages[1].headers[h].int64_value",
        ),
        (
            MESSAGES,
            json!({"messages": [{"text": "a"}, 5]}),
            "messages[1]",
        ),
        (
            MESSAGES,
            json!({"messages": [{"text": "a", "colour": "red"}]}),
            "messages[0].colour",
        ),
        (
            MESSAGES,
            json!({"messages": [{"text": ""}]}),
            "messages[0].text",
        ),
        (
            "/v1/streams/orders/topics/created/partitions/0/messages",
            json!([{"json": {"n": 1}}, {"text": ""}]),
            "messages[1].text",
        ),
        (
            "/v1/streams/orders/topics/created/partitions/abc/messages",
            json!([{"text": "a"}]),
            "partition_id",
        ),
    ];
    for (path, body, field) in bodies {
        let answer = app.post_json(path, body.clone()).await;
        assert_eq!(
            refused(&answer),
            (400, json!(field)),
            "{body}: {}",
            answer.1
        );
        let detail = answer.1["detail"].as_str().unwrap_or_default();
        assert!(
            !detail.contains(" at line "),
            "no parser positions: {detail}"
        );
    }
    assert_eq!(app.list_topics("orders").await.len(), 1, "nothing created");
}

// A field set twice is refused, naming it; a list field takes one parameter per value.

#[tokio::test]
async fn a_field_given_twice_is_refused_naming_it() {
    let app = app_with_messages().await;
    for query in [
        "count=1&partition_id=1&partition_id=0",
        "count=1&partitionId=1&partition_id=0",
        "count=1&count=2",
    ] {
        let answer = app.get_json(&format!("{MESSAGES}?{query}")).await;
        let field = query.rsplit('&').next().and_then(|p| p.split('=').next());
        assert_eq!(
            refused(&answer),
            (400, json!(field)),
            "{query}: {}",
            answer.1
        );
    }

    for (body, field) in [
        (r#"{"name":"a","name":"b"}"#, "name"),
        (
            r#"{"name":"t","partitionsCount":1,"partitions_count":2}"#,
            "partitions_count",
        ),
        (
            r#"{"name":"t","partitions_count":1,"message_expiry":"1s","message_expiry":"2s"}"#,
            "message_expiry",
        ),
    ] {
        let answer = send_raw(
            &app,
            reqwest::Method::POST,
            "/v1/streams/orders/topics",
            Some(body),
        )
        .await;
        assert_eq!(
            refused(&answer),
            (400, json!(field)),
            "{body}: {}",
            answer.1
        );
    }
    let answer = send_raw(
        &app,
        reqwest::Method::POST,
        MESSAGES,
        Some(r#"{"messages":[{"json":{"n":1,"n":2}}]}"#),
    )
    .await;
    assert_eq!(
        refused(&answer),
        (400, json!("messages[0].json.n")),
        "{}",
        answer.1
    );
    let answer = app
        .post_json(
            MESSAGES,
            json!({"partition_id": 1, "partition_key": "k", "messages": [{"text": "x"}]}),
        )
        .await;
    assert_eq!(
        refused(&answer),
        (400, json!("partition_key")),
        "{}",
        answer.1
    );
    let answer = app
        .post_json(
            "/v1/streams/orders/topics/created/partitions/1/messages?partition_key=k",
            json!([{"text": "x"}]),
        )
        .await;
    assert_eq!(
        refused(&answer),
        (400, json!("partition_key")),
        "{}",
        answer.1
    );

    assert_eq!(app.list_topics("orders").await.len(), 1, "nothing created");
    assert!(
        app.poll_from("orders", "created", 1, 0, 10)
            .await
            .messages
            .is_empty(),
        "nothing sent"
    );
}

// Unknown query parameters: ignored by default, refused when strict.

#[tokio::test]
async fn unknown_query_parameters_are_ignored_by_default() {
    let app = app_with_messages().await;
    let (status, polled) = app
        .get_json(&format!(
            "{MESSAGES}?partition_id=0&count=10&strategy=POLLING_STRATEGY_FIRST&_=1712345&utm_source=mail&a.b=1"
        ))
        .await;
    assert_eq!(status, 200, "{polled}");
    assert_eq!(polled["messages"].as_array().map(Vec::len), Some(3));
    let (status, _) = app.get_json("/v1/streams/orders?_=1712345").await;
    assert_eq!(status, 200);
    // Known fields are still checked.
    let answer = app.get_json(&format!("{MESSAGES}?count=x&_=1")).await;
    assert_eq!(refused(&answer), (400, json!("count")));
}

#[tokio::test]
async fn strict_query_strings_refuse_unknown_parameters_naming_them() {
    let app = spawn_configured(|config| config.edge.rest_strict_query = true).await;
    app.create_stream("orders").await;
    let answer = app.get_json("/v1/streams/orders?_=1712345").await;
    assert_eq!(refused(&answer), (400, json!("_")), "{}", answer.1);
    assert_eq!(
        answer.1["violations"][0]["description"],
        "unknown query parameter"
    );
    assert_eq!(app.get_json("/v1/streams/orders").await.0, 200);
}

// Percent-encoding and dot-segments.

#[tokio::test]
async fn percent_encoded_paths_are_normalised_and_bad_escapes_refused() {
    let app = app_with_messages().await;
    let (status, stream) = app.get_json("/v1/%73tre%61ms/%6Frders").await;
    assert_eq!(
        (status, stream["stream"]["name"].clone()),
        (200, json!("orders"))
    );
    let (status, polled) = app
        .get_json("/v1/streams/orders/topics/created/messages?count=1&consumer=c%2B1%20x")
        .await;
    assert_eq!(status, 200, "{polled}");

    for (path, field) in [
        ("/v1/streams/a%zz", "stream"),
        ("/v1/streams/a%FF", "stream"),
        ("/v1/streams/orders/topics/%C3", "topic"),
        ("/v1/%zztreams", "path"),
        (
            "/v1/streams/orders/topics/created/messages?count=1&consumer=%FF",
            "consumer",
        ),
    ] {
        let answer = app.get_json(path).await;
        assert_eq!(
            refused(&answer),
            (400, json!(field)),
            "{path}: {}",
            answer.1
        );
    }
}

#[tokio::test]
async fn dot_segments_cannot_name_streams_or_topics_on_any_protocol() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    for name in [".", ".."] {
        let answer = app.post_json("/v1/streams", json!({"name": name})).await;
        assert_eq!(refused(&answer), (400, json!("name")), "{}", answer.1);
        let answer = app
            .post_json(
                "/v1/streams/orders/topics",
                json!({"name": name, "partitions_count": 1}),
            )
            .await;
        assert_eq!(refused(&answer), (400, json!("name")), "{}", answer.1);

        let err = app
            .streams
            .clone()
            .create_stream(proto::CreateStreamRequest { name: name.into() })
            .await
            .expect_err("refused");
        assert_eq!(
            (err.code(), grpc_field(&err)),
            (Code::InvalidArgument, "name".into())
        );
        let err = app
            .streams
            .clone()
            .update_stream(proto::UpdateStreamRequest {
                stream: "orders".into(),
                name: name.into(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(
            (err.code(), grpc_field(&err)),
            (Code::InvalidArgument, "name".into())
        );
        let err = app
            .topics
            .clone()
            .create_topic(proto::CreateTopicRequest {
                stream: "orders".into(),
                name: name.into(),
                partitions_count: 1,
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(
            (err.code(), grpc_field(&err)),
            (Code::InvalidArgument, "name".into())
        );
    }
    assert_eq!(app.list_streams().await.len(), 1);
    assert!(app.list_topics("orders").await.is_empty());
}

// The usual spellings of booleans, integers and times.

#[tokio::test]
async fn query_booleans_take_the_usual_spellings() {
    let app = app_with_messages().await;
    for (spelling, committed) in [
        ("true", true),
        ("True", true),
        ("TRUE", true),
        ("t", true),
        ("1", true),
        ("false", false),
        ("False", false),
        ("FALSE", false),
        ("f", false),
        ("0", false),
    ] {
        let consumer = format!("c-{spelling}");
        let (status, polled) = app
            .get_json(&format!(
                "{MESSAGES}?partition_id=0&count=1&strategy=POLLING_STRATEGY_FIRST&consumer={consumer}&auto_commit={spelling}"
            ))
            .await;
        assert_eq!(status, 200, "{spelling}: {polled}");
        assert_eq!(
            app.stored_offset("orders", "created", &consumer, 0).await,
            committed.then_some(0),
            "{spelling}"
        );
    }
    let answer = app
        .get_json(&format!("{MESSAGES}?count=1&consumer=c&auto_commit=yes"))
        .await;
    assert_eq!(refused(&answer), (400, json!("auto_commit")));
}

#[tokio::test]
async fn integral_numbers_are_integers_quoted_or_not() {
    let app = app_with_messages().await;
    for (name, count) in [
        ("t1", json!(2e0)),
        ("t2", json!("2e0")),
        ("t3", json!("2.0")),
    ] {
        let (status, topic) = app
            .post_json(
                "/v1/streams/orders/topics",
                json!({"name": name, "partitions_count": count}),
            )
            .await;
        assert_eq!(
            (status, topic["topic"]["partitions_count"].clone()),
            (201, json!(2)),
            "{count}: {topic}"
        );
    }
    let (status, polled) = app
        .get_json(&format!(
            "{MESSAGES}?partition_id=0&count=2e0&offset=1.0&strategy=POLLING_STRATEGY_OFFSET"
        ))
        .await;
    assert_eq!(status, 200, "{polled}");
    assert_eq!(polled["messages"].as_array().map(Vec::len), Some(2));
    assert_eq!(polled["messages"][0]["offset"], "1");
    for count in [json!(1.5), json!("1.5"), json!("1e-1")] {
        let answer = app
            .post_json(
                "/v1/streams/orders/topics",
                json!({"name": "t4", "partitions_count": count}),
            )
            .await;
        assert_eq!(
            refused(&answer),
            (400, json!("partitions_count")),
            "{count}"
        );
    }
}

#[tokio::test]
async fn times_take_lower_case_letters_and_refuse_digits_past_nanoseconds() {
    let app = spawn_app_with_default_topic().await;
    let query = |at: &str| {
        format!(
            "/v1/streams/sample-stream/topics/events/messages?count=1&strategy=POLLING_STRATEGY_TIMESTAMP&timestamp={at}"
        )
    };
    assert_eq!(app.get_json(&query("2026-01-01t00:00:00z")).await.0, 200);
    assert_eq!(
        app.get_json(&query("2026-01-01T00:00:00.123456789Z"))
            .await
            .0,
        200
    );
    let answer = app
        .get_json(&query("2026-01-01T00:00:00.1234567891Z"))
        .await;
    assert_eq!(refused(&answer), (400, json!("timestamp")), "{}", answer.1);

    let event = |at: &str| {
        json!({"event": {"id": "6f1c2a3e-1111-4a2b-9c3d-0123456789ab", "event_type": "x",
                         "timestamp": at, "payload": {"type": "Generic"}}})
    };
    let answer = app
        .post_json("/messages", event("2026-01-01t10:00:00.0000000001z"))
        .await;
    assert_eq!(
        refused(&answer),
        (400, json!("event.timestamp")),
        "{}",
        answer.1
    );
    let answer = app
        .post_json("/messages", event("2026-01-01t10:00:00.5z"))
        .await;
    assert_eq!(answer.0, 201, "{}", answer.1);
    let (_, polled) = app.get_json("/messages?partition_id=0&offset=0").await;
    let (_, polled_1) = app.get_json("/messages?partition_id=1&offset=0").await;
    let (_, polled_2) = app.get_json("/messages?partition_id=2&offset=0").await;
    let stored: Vec<Value> = [polled, polled_1, polled_2]
        .iter()
        .flat_map(|p| p["messages"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(stored.len(), 1);
    let at = stored[0]["event"]["timestamp"].as_str().unwrap_or_default();
    assert!(
        at.starts_with("2026-01-01T10:00:00.5") && at.ends_with('Z'),
        "{at}"
    );

    let answer = app
        .post_json(
            "/v1/streams/sample-stream/topics",
            json!({"name": "t", "partitions_count": 1, "message_expiry": "1.0000000001s"}),
        )
        .await;
    assert_eq!(
        refused(&answer),
        (400, json!("message_expiry")),
        "{}",
        answer.1
    );
}

// Compressed bodies.

#[tokio::test]
async fn bodies_in_a_coding_the_gateway_cannot_inflate_are_refused_with_415() {
    let app = spawn_app().await;
    for coding in ["compress", "deflate", "identity, gzip, br"] {
        let response = app
            .http1
            .post(app.url("/v1/streams"))
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(vec![0x1f, 0x8b, 0x08, 0x00])
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 415, "{coding}");
        assert_eq!(
            response.headers()["accept-encoding"],
            "gzip, zstd, br, identity"
        );
        let problem: Value = response.json().await.expect("problem");
        assert_eq!(problem["reason"], "UNSUPPORTED_CONTENT_ENCODING");
        // As Connect answers it: a coding the gateway lacks.
        assert_eq!(problem["code"], "UNIMPLEMENTED");
    }
    // A body that is not what its coding says is a 400, not a malformed JSON body.
    let response = app
        .http1
        .post(app.url("/v1/streams"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(r#"{"name":"not-gzip"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["reason"], "MALFORMED_CONTENT_ENCODING");
    let response = app
        .http1
        .post(app.url("/v1/streams"))
        .header("content-type", "application/json")
        .header("content-encoding", "identity")
        .body(r#"{"name":"plain"}"#)
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 201);
    assert_eq!(app.list_streams().await.len(), 1);
}

/// A string the JSON may not hold (bytes that are not UTF-8, a raw control character) is a 400
/// that says where the JSON broke, on the typed path of a send as on a field body's path, and
/// nothing is stored.
#[tokio::test]
async fn a_string_that_is_not_json_text_is_refused_where_it_breaks() {
    let app = app_with_messages().await;
    let not_utf8 = [
        &br#"{"messages":[{"text":"ok"},{"text":"caf"#[..],
        b"\xff\"}]}",
    ]
    .concat();
    let control = [&br#"{"messages":[{"text":"a"#[..], b"\x01b\"}]}"].concat();
    // Past an integer written as a string, which the descriptors' path respells first.
    let respelled = [
        &br#"{"partition_id":"1","messages":[{"text":"a"#[..],
        b"\x01b\"}]}",
    ]
    .concat();
    for (body, detail) in [
        (
            not_utf8,
            "the body is not valid JSON: invalid unicode code point at line 1 column 40",
        ),
        (
            control,
            "the body is not valid JSON: control character (\\u0000-\\u001F) found while parsing a string at line 1 column 24",
        ),
        (
            respelled,
            "the body is not valid JSON: control character (\\u0000-\\u001F) found while parsing a string at line 1 column 43",
        ),
    ] {
        let (status, problem) = app.post_raw_json(MESSAGES, body).await;
        assert_eq!(status, 400, "{problem}");
        assert_eq!(problem["code"], "INVALID_ARGUMENT", "{problem}");
        assert_eq!(problem["reason"], "MALFORMED_JSON", "{problem}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(detail),
            "{problem}"
        );
    }
    for (partition, stored) in [(0, 3), (1, 0)] {
        let polled = app.poll_from("orders", "created", partition, 0, 10).await;
        assert_eq!(polled.messages.len(), stored, "partition {partition}");
    }
}

// A JSON value holds its numbers as doubles: an integer it cannot keep exactly is refused,
// never stored changed.

#[tokio::test]
async fn an_integer_a_json_value_cannot_keep_exactly_is_refused_naming_it() {
    let app = app_with_messages().await;
    for (body, field) in [
        (
            r#"{"partition_id":0,"messages":[{"json":{"id":9007199254740993}}]}"#,
            "messages[0].json.id",
        ),
        (
            r#"{"partition_id":0,"messages":[{"text":"a"},{"json":[1,-12345678901234567891]}]}"#,
            "messages[1].json[1]",
        ),
        (
            r#"{"partition_id":0,"messages":[{"json":123456789012345678901234567890123456789012345}]}"#,
            "messages[0].json",
        ),
    ] {
        let answer = send_raw(&app, reqwest::Method::POST, MESSAGES, Some(body)).await;
        assert_eq!(
            refused(&answer),
            (400, json!(field)),
            "{body}: {}",
            answer.1
        );
        let detail = answer.1["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains("send it as a string"), "{detail}");
        assert!(
            detail.len() < 400,
            "a long number is not echoed whole: {detail}"
        );
    }
    // Beside the three messages the topic starts with.
    let polled = app.poll_from("orders", "created", 0, 0, 10).await;
    assert_eq!(polled.messages.len(), 3, "nothing stored: {polled:?}");

    // What a double holds exactly is taken, and read back as sent.
    let body = r#"{"partition_id":0,"messages":[{"json":{"id":9007199254740992,"big":18446744073709551616,"f":0.1,"e":1e300}}]}"#;
    let (status, answer) = send_raw(&app, reqwest::Method::POST, MESSAGES, Some(body)).await;
    assert_eq!(status, 201, "{answer}");
    let (status, polled) = app
        .get_json("/v1/streams/orders/topics/created/messages?partition_id=0&offset=3&count=1")
        .await;
    assert_eq!(status, 200, "{polled}");
    let stored = &polled["messages"][0]["json"];
    assert_eq!(
        (
            stored["id"].as_f64(),
            stored["f"].as_f64(),
            stored["e"].as_f64()
        ),
        (Some(9_007_199_254_740_992.0), Some(0.1), Some(1e300)),
        "{stored}"
    );
    assert_eq!(
        stored["big"].as_f64(),
        Some(18_446_744_073_709_551_616.0),
        "{stored}"
    );

    // Connect's JSON is read by the same rules.
    let response = app
        .http1
        .post(app.url("/iggy.gateway.v1.MessageService/SendMessages"))
        .header("content-type", "application/json")
        .header("connect-protocol-version", "1")
        .body(
            r#"{"stream":"orders","topic":"created","partitionId":0,"messages":[{"json":{"id":9007199254740993}}]}"#,
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.expect("a Connect error");
    assert_eq!(error["code"], "invalid_argument", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("9007199254740993"),
        "{error}"
    );
}
