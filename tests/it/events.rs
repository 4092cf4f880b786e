//! Typed domain events over real sockets: User and Order events are checked by their rules on
//! every protocol, refused naming the field path, and stored in the original service's JSON
//! shape whichever form (`type` + `data`, or a typed member) they were sent in.

use iggy_gateway::proto::{self, event_service_client::EventServiceClient};
use serde_json::{Value, json};
use tonic_types::StatusExt;

use crate::helpers::{TestApp, spawn_app_with_default_topic};

const EVENT_ID: &str = "6f1c2a3e-1111-4a2b-9c3d-0123456789ab";
const USER_ID: &str = "0b6f3a52-4a8e-4c43-9d3e-8f1a2b3c4d5e";
const ORDER_ID: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
const PRODUCT_ID: &str = "9b2d7c1a-5e4f-4a3b-8c2d-1e0f9a8b7c6d";

fn envelope(payload: Value) -> Value {
    json!({"id": EVENT_ID, "event_type": "order.created", "timestamp": "2026-11-25T10:00:00Z",
           "payload": payload})
}

/// An order as the original service wrote one (plus the new, optional `currency`).
fn order_data() -> Value {
    json!({"action": "Created", "order_id": ORDER_ID, "user_id": USER_ID,
           "items": [{"product_id": PRODUCT_ID, "quantity": 2, "unit_price": "29.99"}],
           "total_amount": "59.98", "currency": "EUR"})
}

/// Every event stored on the default topic (three partitions), in offset order per partition.
async fn stored_events(app: &TestApp) -> Vec<Value> {
    let mut events = Vec::new();
    for partition in 0..3 {
        let (status, polled) = app
            .get_json(&format!(
                "/messages?partition_id={partition}&offset=0&count=10"
            ))
            .await;
        assert_eq!(status, 200, "{polled}");
        for message in polled["messages"].as_array().cloned().unwrap_or_default() {
            events.push(message["event"].clone());
        }
    }
    events
}

fn typed_order() -> proto::OrderEvent {
    proto::OrderEvent {
        action: "Created".into(),
        order_id: ORDER_ID.into(),
        user_id: USER_ID.into(),
        items: vec![proto::OrderItem {
            product_id: PRODUCT_ID.into(),
            quantity: 2,
            unit_price: "29.99".into(),
        }],
        total_amount: "59.98".into(),
        currency: "EUR".into(),
        ..Default::default()
    }
}

fn grpc_event(payload: proto::EventPayload) -> proto::Event {
    proto::Event {
        id: EVENT_ID.into(),
        event_type: "order.created".into(),
        timestamp: Some(
            serde_json::from_value(serde_json::json!("2026-11-25T10:00:00Z")).expect("a time"),
        ),
        payload: Some(payload),
        correlation_id: None,
        source: None,
    }
}

#[tokio::test]
async fn a_typed_order_sent_over_grpc_is_polled_over_rest_in_the_original_shape() {
    let app = spawn_app_with_default_topic().await;
    let mut events = EventServiceClient::new(app.channel.clone());
    let published = events
        .publish_event(proto::PublishEventRequest {
            event: Some(grpc_event(proto::EventPayload {
                event: Some(proto::event_payload::Event::Order(typed_order())),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("a valid order is published")
        .into_inner();
    assert_eq!(published.event_id, EVENT_ID);

    let stored = stored_events(&app).await;
    assert_eq!(
        stored,
        [envelope(json!({"type": "Order", "data": order_data()}))]
    );
}

#[tokio::test]
async fn the_original_json_shape_and_the_typed_member_are_one_event() {
    let app = spawn_app_with_default_topic().await;
    // Keys in lowerCamelCase, as a proto3 JSON writer sends them, are read too.
    let camel = json!({"action": "Created", "orderId": ORDER_ID, "userId": USER_ID,
        "items": [{"productId": PRODUCT_ID, "quantity": 2, "unitPrice": "29.99"}],
        "totalAmount": "59.98", "currency": "EUR"});
    for payload in [
        json!({"type": "Order", "data": order_data()}),
        json!({"type": "Order", "data": camel}),
        json!({"order": order_data()}),
        json!({"type": "Order", "order": order_data(), "data": order_data()}),
    ] {
        let (status, answer) = app
            .post_json("/messages", json!({"event": envelope(payload.clone())}))
            .await;
        assert_eq!(status, 201, "{payload}: {answer}");
    }
    let stored = stored_events(&app).await;
    assert_eq!(stored.len(), 4);
    let expected = envelope(json!({"type": "Order", "data": order_data()}));
    assert!(stored.iter().all(|event| *event == expected), "{stored:?}");
}

#[tokio::test]
async fn a_bad_order_is_refused_over_rest_naming_the_field_path() {
    let app = spawn_app_with_default_topic().await;
    let with = |change: &dyn Fn(&mut Value)| {
        let mut data = order_data();
        change(&mut data);
        data
    };
    let cases = [
        (
            with(&|d| d["items"][0]["quantity"] = json!(0)),
            "event.payload.data.items[0].quantity",
        ),
        (
            with(&|d| d["items"][0]["quantity"] = json!(-1)),
            "event.payload.data.items[0].quantity",
        ),
        (
            with(&|d| d["items"][0]["unit_price"] = json!("-1.00")),
            "event.payload.data.items[0].unit_price",
        ),
        (
            with(&|d| d["items"][0]["unit_price"] = json!(29.99)),
            "event.payload.data.items[0].unit_price",
        ),
        (
            with(&|d| d["items"] = json!([])),
            "event.payload.data.items",
        ),
        (
            with(&|d| d["currency"] = json!("eur")),
            "event.payload.data.currency",
        ),
        (
            with(&|d| d["currency"] = json!("ABC")),
            "event.payload.data.currency",
        ),
        (
            with(&|d| d["order_id"] = json!("o-1")),
            "event.payload.data.order_id",
        ),
        (
            with(&|d| d["total_amount"] = json!("1e3")),
            "event.payload.data.total_amount",
        ),
        (
            with(&|d| d["discount"] = json!("5")),
            "event.payload.data.discount",
        ),
        (
            with(&|d| d["reason"] = json!("changed my mind")),
            "event.payload.data.reason",
        ),
    ];
    for (data, field) in cases {
        let (status, problem) = app
            .post_json(
                "/messages",
                json!({"event": envelope(json!({"type": "Order", "data": data}))}),
            )
            .await;
        assert_eq!(status, 400, "{field}: {problem}");
        assert_eq!(problem["violations"][0]["field"], field, "{problem}");
        assert_eq!(problem["reason"], "INVALID_ARGUMENT");
    }

    // The typed member names its own path, and a batch names the event's index.
    let mut order = order_data();
    order["items"][0]["quantity"] = json!(0);
    let (status, problem) = app
        .post_json(
            "/v1/streams/sample-stream/topics/events/events:batch",
            json!({"events": [envelope(json!({"type": "Order", "data": order_data()})),
                              envelope(json!({"order": order}))]}),
        )
        .await;
    assert_eq!(
        (status, problem["violations"][0]["field"].clone()),
        (400, json!("events[1].payload.order.items[0].quantity")),
        "{problem}"
    );
    assert!(
        stored_events(&app).await.is_empty(),
        "a refused batch stores nothing"
    );
}

#[tokio::test]
async fn a_bad_user_is_refused_over_grpc_with_a_field_violation() {
    let app = spawn_app_with_default_topic().await;
    let mut events = EventServiceClient::new(app.channel.clone());
    let user = |email: &str, user_id: &str| proto::UserEvent {
        action: "Created".into(),
        user_id: user_id.into(),
        email: email.into(),
        name: "Ada".into(),
        ip_address: String::new(),
    };
    let cases = [
        (user("ada.example.com", USER_ID), "event.payload.user.email"),
        (user("ada@example", USER_ID), "event.payload.user.email"),
        (user("", USER_ID), "event.payload.user.email"),
        (user("ada@example.com", "u-1"), "event.payload.user.user_id"),
    ];
    for (user, field) in cases {
        let err = events
            .publish_event(proto::PublishEventRequest {
                event: Some(grpc_event(proto::EventPayload {
                    event: Some(proto::event_payload::Event::User(user)),
                    ..Default::default()
                })),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        let violations = err
            .get_details_bad_request()
            .expect("a field violation")
            .field_violations;
        assert_eq!(violations[0].field, field, "{err:?}");
    }

    // A type that contradicts the member set is refused too.
    let err = events
        .publish_event(proto::PublishEventRequest {
            event: Some(grpc_event(proto::EventPayload {
                r#type: "User".into(),
                event: Some(proto::event_payload::Event::Order(typed_order())),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    let violations = err
        .get_details_bad_request()
        .expect("a field violation")
        .field_violations;
    assert_eq!(violations[0].field, "event.payload.type");
}

#[tokio::test]
async fn generic_events_still_take_any_json() {
    let app = spawn_app_with_default_topic().await;
    for payload in [
        json!({"type": "Generic", "data": {"anything": [1, "two", null, {"deep": true}]}}),
        json!({"generic": {"anything": [1, "two", null, {"deep": true}]}}),
    ] {
        let (status, answer) = app
            .post_json("/messages", json!({"event": envelope(payload)}))
            .await;
        assert_eq!(status, 201, "{answer}");
    }
    let stored = stored_events(&app).await;
    let expected = envelope(
        json!({"type": "Generic", "data": {"anything": [1, "two", null, {"deep": true}]}}),
    );
    assert_eq!(stored, [expected.clone(), expected]);
}

#[tokio::test]
async fn a_generic_event_with_an_integer_a_double_cannot_keep_is_refused_not_changed() {
    let app = spawn_app_with_default_topic().await;
    for (payload, field) in [
        (
            r#"{"type":"Generic","data":{"account":12345678901234567891}}"#,
            "event.payload.data.account",
        ),
        (
            r#"{"generic":[9007199254740993]}"#,
            "event.payload.generic[0]",
        ),
    ] {
        let envelope = json!({"event": envelope(json!("PAYLOAD"))}).to_string();
        let body = envelope.replace(r#""PAYLOAD""#, payload);
        let (status, answer) = app.post_raw_json("/messages", body.into_bytes()).await;
        assert_eq!(status, 400, "{answer}");
        assert_eq!(answer["violations"][0]["field"], field, "{answer}");
    }
    assert!(stored_events(&app).await.is_empty(), "nothing stored");
}

#[tokio::test]
async fn openapi_documents_the_event_shapes_from_the_proto_comments() {
    let app = spawn_app_with_default_topic().await;
    let (status, document) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    let schemas = &document["components"]["schemas"];
    let payload = &schemas["iggy.gateway.v1.EventPayload".replace('.', "_")];
    for member in ["type", "data", "user", "order", "generic"] {
        assert!(
            payload["properties"].get(member).is_some(),
            "EventPayload lacks {member}: {payload}"
        );
    }
    let order = &schemas["iggy_gateway_v1_OrderEvent"];
    let total = order["properties"]["total_amount"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(total.contains("decimal string"), "{order}");
    let currency = order["properties"]["currency"]["description"]
        .as_str()
        .unwrap_or_default();
    assert!(currency.contains("ISO 4217"), "{order}");
    let rules = order["description"].as_str().unwrap_or_default();
    assert!(
        rules.contains("Shipped: order_id, tracking_number, carrier"),
        "{rules}"
    );
    let user = &schemas["iggy_gateway_v1_UserEvent"];
    assert!(
        user["properties"]["email"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("e-mail")),
        "{user}"
    );
    assert!(schemas.get("iggy_gateway_v1_OrderItem").is_some());
}

/// An event time no JSON answer can write (year 10000, or before year 1) is refused when
/// published, over gRPC as over REST, and nothing is stored: stored, it would fail every REST
/// poll that reaches it, and an auto-committing poller would lose the events around it.
#[tokio::test]
async fn an_event_time_json_cannot_write_is_refused_and_nothing_is_stored() {
    let app = spawn_app_with_default_topic().await;
    let mut events = EventServiceClient::new(app.channel.clone());
    for (seconds, nanos) in [
        (253_402_300_800, 0),
        (-62_135_596_801, 0),
        (253_402_300_799, 1_000_000_000),
    ] {
        let mut event = grpc_event(proto::EventPayload {
            event: Some(proto::event_payload::Event::Order(typed_order())),
            ..Default::default()
        });
        event.timestamp = Some(pbjson_types::Timestamp { seconds, nanos });
        let refused = events
            .publish_event(proto::PublishEventRequest {
                event: Some(event),
                partition_key: "k".into(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("event.timestamp"),
            "{}",
            refused.message()
        );
    }
    let (status, body) = app
        .post_json(
            "/v1/streams/sample-stream/topics/events/events",
            json!({"event": {"id": EVENT_ID, "event_type": "order.created",
                "timestamp": "9999-12-31T23:59:59Z", "payload": {"type": "Order", "data": order_data()}},
                "partition_key": "k"}),
        )
        .await;
    // The last second JSON can write is taken.
    assert_eq!(status, 201, "{body}");
    let stored = stored_events(&app).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["timestamp"], "9999-12-31T23:59:59Z", "{stored:?}");
}

/// An event poll whose answer is large is sent in pieces (chunked, no `Content-Length`) and
/// reads as the whole answer: every event, in order, with its data.
#[tokio::test]
async fn a_large_event_poll_is_sent_in_pieces_and_reads_whole() {
    let app = spawn_app_with_default_topic().await;
    let mut events = EventServiceClient::new(app.channel.clone());
    // 200 events of 2 KiB of data each, on one partition (one key).
    let batch = (0..200)
        .map(|i| {
            let mut event = grpc_event(proto::EventPayload {
                r#type: "Generic".into(),
                event: Some(proto::event_payload::Event::Generic(pbjson_types::Value {
                    kind: Some(pbjson_types::value::Kind::StringValue(format!(
                        "{i:04}{}",
                        "x".repeat(2044)
                    ))),
                })),
                ..Default::default()
            });
            event.id = format!("6f1c2a3e-1111-4a2b-9c3d-{i:012}");
            event
        })
        .collect();
    events
        .publish_events(proto::PublishEventsRequest {
            events: batch,
            partition_key: "one".into(),
            ..Default::default()
        })
        .await
        .expect("published");
    let mut polled = None;
    for partition in 0..3 {
        let response = app
            .http1
            .get(app.url(&format!(
                "/v1/streams/sample-stream/topics/events/events?partition_id={partition}&strategy=first&count=200"
            )))
            .send()
            .await
            .expect("polled");
        assert_eq!(response.status(), 200);
        let chunked = response.headers().get("content-length").is_none()
            && response.headers()["transfer-encoding"] == "chunked";
        let answer: Value = response.json().await.expect("JSON");
        if answer["messages"].as_array().is_some_and(|m| !m.is_empty()) {
            polled = Some((chunked, answer));
        }
    }
    let (chunked, answer) = polled.expect("a partition with the events");
    assert!(chunked, "a large answer is sent in pieces");
    let messages = answer["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 200);
    for (i, message) in messages.iter().enumerate() {
        let data = message["event"]["payload"]["data"]
            .as_str()
            .unwrap_or_else(|| panic!("{message}"));
        assert!(
            data.starts_with(&format!("{i:04}")) && data.len() == 2048,
            "{i}"
        );
    }
    assert_eq!(answer["count"], 200, "{}", answer["count"]);
}

#[tokio::test]
async fn an_event_nested_as_deep_as_publishing_allows_is_read_back_by_every_poll() {
    let app = spawn_app_with_default_topic().await;
    // 32 levels of data, the most a publish takes; stored inside the envelope, 34.
    let mut data = json!("leaf");
    for _ in 0..32 {
        data = json!([data]);
    }
    let event = envelope(json!({"type": "Generic", "data": data}));
    let (status, answer) = app.post_json("/messages", json!({"event": event})).await;
    assert_eq!(status, 201, "{answer}");
    let stored = stored_events(&app).await;
    assert_eq!(
        stored,
        std::slice::from_ref(&event),
        "the legacy poll reads it back"
    );
    let mut found = Vec::new();
    for partition in 0..3 {
        let (status, polled) = app
            .get_json(&format!(
                "/v1/streams/sample-stream/topics/events/events?partition_id={partition}&strategy=first&count=10"
            ))
            .await;
        assert_eq!(status, 200, "{polled}");
        found.extend(polled["messages"].as_array().cloned().unwrap_or_default());
        let (status, messages) = app
            .get_json(&format!(
                "/v1/streams/sample-stream/topics/events/messages?partition_id={partition}&offset=0&count=10"
            ))
            .await;
        assert_eq!(status, 200, "{messages}");
        for message in messages["messages"].as_array().cloned().unwrap_or_default() {
            assert_eq!(
                message["json"], event,
                "read back as JSON, not raw bytes: {message}"
            );
        }
    }
    assert_eq!(found.len(), 1, "PollEvents reads it back");
    assert_eq!(found[0]["event"], event, "{}", found[0]);

    // One level more is refused when published, naming the field.
    let event = envelope(json!({"type": "Generic", "data": [data]}));
    let (status, answer) = app.post_json("/messages", json!({"event": event})).await;
    assert_eq!(status, 400, "{answer}");
}

#[tokio::test]
async fn typed_ids_are_stored_in_one_form_however_they_were_written_and_never_nil() {
    let app = spawn_app_with_default_topic().await;
    let upper = ORDER_ID.to_uppercase();
    let braced = format!("{{{USER_ID}}}");
    let simple = PRODUCT_ID.replace('-', "");
    let mut data = order_data();
    data["order_id"] = json!(upper);
    data["user_id"] = json!(braced);
    data["items"][0]["product_id"] = json!(simple);
    let mut event = envelope(json!({"type": "Order", "data": data}));
    event["correlation_id"] = json!(format!("urn:uuid:{USER_ID}"));
    let (status, answer) = app.post_json("/messages", json!({"event": event})).await;
    assert_eq!(status, 201, "{answer}");
    let stored = stored_events(&app).await;
    let mut expected = envelope(json!({"type": "Order", "data": order_data()}));
    expected["correlation_id"] = json!(USER_ID);
    assert_eq!(stored, [expected]);

    let mut nil = envelope(json!({"type": "Order", "data": order_data()}));
    nil["correlation_id"] = json!("00000000-0000-0000-0000-000000000000");
    let (status, problem) = app.post_json("/messages", json!({"event": nil})).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(
        problem["violations"][0]["field"], "event.correlation_id",
        "{problem}"
    );
}

/// An event whose data would make an answer larger than gRPC clients take (stored raw by
/// another client: a list of numbers is five times its text as a `Value`) is passed over, as a
/// message that is not an event is; the events after it come back, to tonic's 4 MiB client.
#[tokio::test]
async fn an_event_too_large_for_an_answer_is_passed_over_and_the_next_is_read() {
    let app = crate::helpers::spawn_app().await;
    app.create_stream("ev").await;
    app.create_topic("ev", "t", 1).await;
    let envelope = |id: &str, data: &str| {
        format!(
            r#"{{"id":"{id}","event_type":"x","timestamp":"2026-01-01T00:00:00Z","payload":{{"type":"Generic","data":{data}}}}}"#
        )
    };
    let large = envelope(
        "6f1c2a3e-1111-4a2b-9c3d-0123456789ab",
        &format!("[{}0]", "0,".repeat(400_000)),
    );
    let small = envelope("6f1c2a3e-2222-4a2b-9c3d-0123456789ab", r#"{"n":1}"#);
    let raw = |body: String| proto::Message {
        body: Some(proto::message::Body::Payload(body.into_bytes().into())),
        ..Default::default()
    };
    app.send_to("ev", "t", 0, vec![raw(large), raw(small)])
        .await;
    let mut events = EventServiceClient::new(app.channel.clone());
    let polled = events
        .poll_events(proto::PollEventsRequest {
            stream: "ev".into(),
            topic: "t".into(),
            partition_id: 0,
            count: Some(10),
            auto_commit: true,
            ..Default::default()
        })
        .await
        .expect("an answer a gRPC client takes")
        .into_inner();
    let offsets: Vec<u64> = polled.messages.iter().map(|event| event.offset).collect();
    assert_eq!(offsets, [1]);
}
