use super::*;

fn round_trip(body: proto::message::Body) -> proto::polled_message::Body {
    let mut headers = Headers::new();
    let payload = body_to_payload("messages[0]", Some(body), &mut headers).expect("valid body");
    payload_to_body(payload, &mut headers)
}

#[test]
fn json_bodies_are_stored_as_json_text_and_come_back_as_json() {
    let mut headers = Headers::new();
    let value = json_to_value(serde_json::json!({"user": "ada", "age": 36, "tags": ["a", null]}));
    let payload = body_to_payload(
        "messages[0]",
        Some(proto::message::Body::Json(value.clone())),
        &mut headers,
    )
    .expect("valid body");
    let stored: serde_json::Value = serde_json::from_slice(&payload).expect("stored as JSON");
    assert_eq!(stored["user"], "ada");
    assert_eq!(
        payload_to_body(payload, &mut headers),
        proto::polled_message::Body::Json(value)
    );
    assert!(
        headers.is_empty(),
        "the body-form header is not shown to clients"
    );
}

#[test]
fn text_and_bytes_keep_their_form() {
    assert_eq!(
        round_trip(proto::message::Body::Text("héllo".into())),
        proto::polled_message::Body::Text("héllo".into())
    );
    assert_eq!(
        round_trip(proto::message::Body::Payload(Bytes::from_static(
            b"\x00\x01"
        ))),
        proto::polled_message::Body::Payload(Bytes::from_static(b"\x00\x01"))
    );
}

#[test]
fn a_body_form_header_that_lies_falls_back_to_bytes() {
    let mut headers = Headers::new();
    headers.insert(
        BODY_FORM_HEADER.into(),
        HeaderValue::String(BODY_JSON.into()),
    );
    let body = payload_to_body(Bytes::from_static(b"not json"), &mut headers);
    assert_eq!(
        body,
        proto::polled_message::Body::Payload(Bytes::from_static(b"not json"))
    );
    assert!(headers.contains_key(BODY_FORM_HEADER));
}

#[test]
fn timestamps_keep_microseconds() {
    let ts = timestamp(1_700_000_000_123_456);
    assert_eq!(ts.seconds, 1_700_000_000);
    assert_eq!(ts.nanos, 123_456_000);
    assert_eq!(
        timestamp_micros("t", &ts).expect("valid"),
        1_700_000_000_123_456
    );
    assert!(
        timestamp_micros(
            "t",
            &Timestamp {
                seconds: -1,
                nanos: 0
            }
        )
        .is_err()
    );
}

#[test]
fn message_ids_are_uuids_and_never_nil() {
    let id = message_id(
        "id",
        "0190f7c4-7b8e-7c4a-9d2e-1234567890ab",
        &mut Ids::default(),
    )
    .expect("valid");
    assert_eq!(message_id_text(id), "0190f7c4-7b8e-7c4a-9d2e-1234567890ab");
    assert!(
        message_id(
            "id",
            "00000000-0000-0000-0000-000000000000",
            &mut Ids::default()
        )
        .is_err()
    );
    assert!(message_id("id", "nope", &mut Ids::default()).is_err());
    let assigned = message_id("id", "", &mut Ids::default()).expect("assigned");
    assert_eq!(uuid::Uuid::from_u128(assigned).get_version_num(), 7);
}

/// The ids of one request share a clock reading and still sort in the order assigned, within
/// a request and from one request to the next, each a UUIDv7 of the current millisecond.
#[test]
fn assigned_ids_are_v7_and_sort_in_the_order_assigned() {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    let mut ids: Vec<u128> = Vec::new();
    for _ in 0..3 {
        let mut request = Ids::default();
        ids.extend((0..1000).map(|_| request.next()));
    }
    assert!(
        ids.windows(2).all(|pair| pair[0] < pair[1]),
        "sorted, none twice"
    );
    for id in [ids[0], ids[2999]] {
        let uuid = uuid::Uuid::from_u128(id);
        assert_eq!(uuid.get_version_num(), 7);
        let (seconds, nanos) = uuid.get_timestamp().expect("v7").to_unix();
        let millis = u128::from(seconds) * 1000 + u128::from(nanos / 1_000_000);
        assert!(
            millis >= before && millis < before + 60_000,
            "{millis} vs {before}"
        );
    }
}

#[test]
fn json_integers_are_stored_as_written_not_as_doubles() {
    let mut headers = Headers::new();
    let value = json_to_value(
        serde_json::json!({"n": 3, "big": 9_007_199_254_740_992_i64, "x": 2.5, "neg": -7}),
    );
    let payload = body_to_payload(
        "messages[0]",
        Some(proto::message::Body::Json(value)),
        &mut headers,
    )
    .expect("valid body");
    assert_eq!(
        std::str::from_utf8(&payload).expect("UTF-8"),
        r#"{"big":9007199254740992,"n":3,"neg":-7,"x":2.5}"#
    );
}

#[test]
fn negative_zero_keeps_its_sign() {
    let mut headers = Headers::new();
    let value = json_to_value(serde_json::json!({"z": -0.0, "p": 0.0}));
    let payload = body_to_payload(
        "messages[0]",
        Some(proto::message::Body::Json(value)),
        &mut headers,
    )
    .expect("valid body");
    let stored: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
    let z = stored["z"].as_f64().expect("a number");
    assert!(z == 0.0 && z.is_sign_negative(), "{stored}");
    assert_eq!(stored["p"], serde_json::json!(0));
}

/// Around the edge of `max_bytes`, a JSON body (a list of numbers, five times its text as a
/// `Value`) comes back in a form whose answer, with a poll's fields around it, fits: as JSON
/// while that fits, as its stored bytes past it.
#[test]
fn a_polled_json_body_always_fits_its_answer() {
    use prost::Message;
    let max_bytes = 64 * 1024;
    let mut as_json = 0;
    let mut as_bytes = 0;
    for count in 5_800..6_100 {
        let text = format!("[{}0]", "0,".repeat(count));
        let mut headers = Headers::new();
        headers.insert(
            BODY_FORM_HEADER.to_owned(),
            HeaderValue::String(BODY_JSON.to_owned()),
        );
        let stored = StoredMessage {
            offset: u64::MAX,
            timestamp_micros: u64::MAX / 2,
            id: u128::MAX,
            headers,
            payload: Bytes::from(text.clone()),
        };
        let polled = polled_to_proto(u32::MAX, stored, max_bytes);
        match &polled.body {
            Some(proto::polled_message::Body::Json(_)) => as_json += 1,
            Some(proto::polled_message::Body::Payload(bytes)) => {
                assert_eq!(bytes.as_ref(), text.as_bytes());
                assert!(polled.headers.contains_key(BODY_FORM_HEADER), "{count}");
                as_bytes += 1;
            }
            other => panic!("{count}: {other:?}"),
        }
        let answer = proto::PollMessagesResponse {
            partition_id: u32::MAX,
            current_offset: u64::MAX,
            messages: vec![polled],
        };
        assert!(answer.encoded_len() <= max_bytes, "{count}");
    }
    assert!(
        as_json > 0 && as_bytes > 0,
        "{as_json} as JSON, {as_bytes} as bytes"
    );
}
