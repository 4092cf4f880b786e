//! Model tests (`cargo test --test model_tests`), no server needed: every API message survives
//! binary protobuf and both proto3 JSON forms (lowerCamelCase and proto field names); the event
//! rules accept and refuse what their tables say, naming the field; and the event shapes that
//! README.md shows are read out of README.md and checked byte for byte, so the doc cannot drift.

use std::collections::HashMap;

use iggy_gateway::{
    grpc::{TypedPayload, check_event, check_payload, read_event},
    proto::{self, FILE_DESCRIPTOR_SET, event_payload},
};
use proptest::prelude::*;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DynamicMessage, Kind, MapKey, MessageDescriptor, SerializeOptions,
    Value as Field,
};
use serde_json::{Value, json};
use tonic_types::StatusExt;

const EVENT_ID: &str = "6f1c2a3e-1111-4a2b-9c3d-0123456789ab";
const USER_ID: &str = "0b6f3a52-4a8e-4c43-9d3e-8f1a2b3c4d5e";
const ORDER_ID: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
const PRODUCT_A: &str = "9b2d7c1a-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const PRODUCT_B: &str = "c7e8f9a0-1b2c-4d3e-9f4a-5b6c7d8e9f0a";

fn pool() -> DescriptorPool {
    DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("the API's descriptors")
}

fn descriptor(name: &str) -> MessageDescriptor {
    pool()
        .get_message_by_name(&format!("iggy.gateway.v1.{name}"))
        .unwrap_or_else(|| panic!("no message {name}"))
}

/// proto3 JSON as the gateway writes it: proto field names (`proto_names`) or lowerCamelCase.
fn to_json(message: &DynamicMessage, proto_names: bool) -> String {
    let options = SerializeOptions::new().use_proto_field_name(proto_names);
    let mut out = serde_json::Serializer::new(Vec::new());
    message
        .serialize_with_options(&mut out, &options)
        .expect("serializable");
    String::from_utf8(out.into_inner()).expect("UTF-8")
}

fn from_json(descriptor: MessageDescriptor, text: &str) -> DynamicMessage {
    let mut reader = serde_json::Deserializer::from_str(text);
    let message = DynamicMessage::deserialize(descriptor, &mut reader)
        .unwrap_or_else(|err| panic!("{text}: {err}"));
    reader.end().expect("nothing after the JSON");
    message
}

fn dynamic<M: Message>(name: &str, message: &M) -> DynamicMessage {
    DynamicMessage::decode(descriptor(name), message.encode_to_vec().as_slice()).expect("decodes")
}

/// The three round trips every message must survive, as the generated type.
fn assert_round_trips<M: Message + Default + PartialEq + std::fmt::Debug>(name: &str, message: &M) {
    let binary = M::decode(message.encode_to_vec().as_slice()).expect("binary decodes");
    assert_eq!(&binary, message, "binary protobuf");
    let as_dynamic = dynamic(name, message);
    for proto_names in [false, true] {
        let text = to_json(&as_dynamic, proto_names);
        let back: M = from_json(descriptor(name), &text)
            .transcode_to()
            .expect("transcodes");
        assert_eq!(&back, message, "JSON (proto names: {proto_names}): {text}");
    }
}

fn user() -> proto::UserEvent {
    proto::UserEvent {
        action: "Created".into(),
        user_id: USER_ID.into(),
        email: "ada@example.com".into(),
        name: "Ada Lovelace".into(),
        ip_address: String::new(),
    }
}

fn order() -> proto::OrderEvent {
    proto::OrderEvent {
        action: "Created".into(),
        order_id: ORDER_ID.into(),
        user_id: USER_ID.into(),
        items: vec![
            proto::OrderItem {
                product_id: PRODUCT_A.into(),
                quantity: 2,
                unit_price: "29.99".into(),
            },
            proto::OrderItem {
                product_id: PRODUCT_B.into(),
                quantity: 1,
                unit_price: "0.02".into(),
            },
        ],
        total_amount: "60.00".into(),
        currency: "EUR".into(),
        ..Default::default()
    }
}

/// Every action of both typed events, as the original service wrote them.
fn every_action() -> Vec<event_payload::Event> {
    let user_as = |change: &dyn Fn(&mut proto::UserEvent)| {
        let mut user = user();
        change(&mut user);
        event_payload::Event::User(user)
    };
    let order_as = |action: &str, change: &dyn Fn(&mut proto::OrderEvent)| {
        let mut order = proto::OrderEvent {
            action: action.into(),
            order_id: ORDER_ID.into(),
            ..Default::default()
        };
        change(&mut order);
        event_payload::Event::Order(order)
    };
    vec![
        user_as(&|_| {}),
        user_as(&|u| {
            u.action = "Updated".into();
            u.name.clear();
        }),
        user_as(&|u| {
            u.action = "Deleted".into();
            u.email.clear();
            u.name.clear();
        }),
        user_as(&|u| {
            u.action = "LoggedIn".into();
            u.email.clear();
            u.name.clear();
            u.ip_address = "2001:db8::1".into();
        }),
        event_payload::Event::Order(order()),
        order_as("Updated", &|o| o.status = "processing".into()),
        order_as("Cancelled", &|o| o.reason = "changed my mind".into()),
        order_as("Shipped", &|o| {
            o.tracking_number = "JJD000390007".into();
            o.carrier = "DHL".into();
        }),
    ]
}

fn json_value(json: Value) -> pbjson_types::Value {
    let text = json.to_string();
    from_json(
        pool()
            .get_message_by_name("google.protobuf.Value")
            .expect("Value"),
        &text,
    )
    .transcode_to()
    .expect("a Value")
}

fn event(payload: proto::EventPayload) -> proto::Event {
    proto::Event {
        id: EVENT_ID.into(),
        event_type: "order.created".into(),
        timestamp: Some(serde_json::from_value(json!("2026-11-25T10:00:00Z")).expect("a time")),
        payload: Some(payload),
        correlation_id: Some("9a1e4c1e-7f0d-4d5c-8a55-2d0b7c6e1f00".into()),
        source: Some("shop".into()),
    }
}

fn typed(member: event_payload::Event) -> proto::EventPayload {
    proto::EventPayload {
        event: Some(member),
        ..Default::default()
    }
}

fn in_data_form(kind: &str, data: Value) -> proto::EventPayload {
    proto::EventPayload {
        r#type: kind.into(),
        data: Some(json_value(data)),
        event: None,
    }
}

// ---------------------------------------------------------------------------------------
// Round trips of the event types.

#[test]
fn every_event_type_survives_binary_and_both_json_forms() {
    assert_round_trips("UserEvent", &user());
    assert_round_trips("OrderEvent", &order());
    assert_round_trips("OrderItem", &order().items[0]);
    let mut payloads: Vec<proto::EventPayload> = every_action().into_iter().map(typed).collect();
    payloads.extend([
        typed(event_payload::Event::Generic(json_value(
            json!({"any": ["json", 1.5, null, true]}),
        ))),
        in_data_form("User", json!({"action": "Deleted", "user_id": USER_ID})),
        in_data_form("Generic", json!([1, 2, 3])),
    ]);
    for payload in payloads {
        assert_round_trips("EventPayload", &payload);
        assert_round_trips("Event", &event(payload.clone()));
        assert_round_trips(
            "PublishEventRequest",
            &proto::PublishEventRequest {
                stream: "sample-stream".into(),
                topic: "events".into(),
                event: Some(event(payload)),
                partition_key: "customer-42".into(),
            },
        );
    }
}

#[test]
fn both_json_forms_spell_the_fields_as_documented() {
    let order = dynamic("OrderEvent", &order());
    let snake: Value = serde_json::from_str(&to_json(&order, true)).expect("JSON");
    let camel: Value = serde_json::from_str(&to_json(&order, false)).expect("JSON");
    assert_eq!(snake["order_id"], ORDER_ID);
    assert_eq!(snake["total_amount"], "60.00");
    assert_eq!(snake["items"][0]["unit_price"], "29.99");
    assert_eq!(camel["orderId"], ORDER_ID);
    assert_eq!(camel["userId"], USER_ID);
    assert_eq!(camel["items"][0]["productId"], PRODUCT_A);
    // Amounts stay strings in both forms: no float ever holds a price.
    assert_eq!(camel["items"][0]["unitPrice"], "29.99");
    assert_eq!(camel["totalAmount"], "60.00");
}

#[test]
fn every_action_stored_and_read_back_is_the_same_event_in_the_original_form() {
    let mut sent: Vec<proto::EventPayload> = every_action().into_iter().map(typed).collect();
    sent.push(in_data_form("Generic", json!({"n": 1})));
    for payload in sent {
        let expected = check_payload("event.payload", payload.clone()).expect("valid");
        let checked = check_event("event", event(payload)).expect("valid");
        let stored = serde_json::to_vec(&checked.envelope).expect("JSON");
        let read = read_event(&stored).expect("an event");
        let polled = read.payload.clone().expect("payload");
        assert_eq!(polled.r#type, expected.type_name());
        assert_eq!(polled.data, Some(json_value(expected.data())));
        assert_eq!(polled.event, None, "polls answer the original form only");
        // What a poll answers is accepted back as it is, and means the same event.
        assert_eq!(
            check_payload("event.payload", polled).expect("valid"),
            expected
        );
        assert_eq!(read.id, EVENT_ID);
        assert_eq!(read.source.as_deref(), Some("shop"));
    }
}

#[test]
fn the_original_services_order_json_is_read_as_it_wrote_it() {
    // rust_decimal wrote amounts as strings and serde tagged variants with `action`.
    let original = json!({"action": "Created", "order_id": ORDER_ID, "user_id": USER_ID,
        "items": [{"product_id": PRODUCT_A, "quantity": 2, "unit_price": "29.99"}],
        "total_amount": "59.98"});
    let typed = check_payload("event.payload", in_data_form("Order", original.clone()))
        .expect("the original's JSON is accepted");
    assert_eq!(typed.data(), original, "and stored as written");
}

// ---------------------------------------------------------------------------------------
// Round trips of every API message, over arbitrary values.

/// A random value of any field's type, from `rng`, within what proto3 JSON can carry (finite
/// doubles, timestamps in years 1 to 9999, durations within ±10,000 years).
fn arbitrary_field(
    kind: &Kind,
    rng: &mut fastrand::Rng,
    depth: u32,
    pool: &DescriptorPool,
) -> Option<Field> {
    Some(match kind {
        Kind::Double => Field::F64(rng.f64() * 1e6 - 5e5),
        Kind::Float => Field::F32(f32::from(rng.u16(..)) / 8.0),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Field::I32(rng.i32(..)),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Field::I64(rng.i64(..)),
        Kind::Uint32 | Kind::Fixed32 => Field::U32(rng.u32(..)),
        Kind::Uint64 | Kind::Fixed64 => Field::U64(rng.u64(..)),
        Kind::Bool => Field::Bool(rng.bool()),
        Kind::String => Field::String(
            (0..rng.usize(0..12))
                .map(|_| {
                    rng.choice(['a', 'Z', '0', ' ', 'é', '"', '\\', '✓', '\n'])
                        .unwrap_or('a')
                })
                .collect(),
        ),
        Kind::Bytes => Field::Bytes(
            (0..rng.usize(0..12))
                .map(|_| rng.u8(..))
                .collect::<Vec<_>>()
                .into(),
        ),
        Kind::Enum(enumeration) => {
            let values: Vec<i32> = enumeration.values().map(|v| v.number()).collect();
            Field::EnumNumber(rng.choice(values)?)
        }
        Kind::Message(message) => Field::Message(arbitrary_message(message, rng, depth + 1, pool)?),
    })
}

fn arbitrary_message(
    descriptor: &MessageDescriptor,
    rng: &mut fastrand::Rng,
    depth: u32,
    pool: &DescriptorPool,
) -> Option<DynamicMessage> {
    let mut message = DynamicMessage::new(descriptor.clone());
    match descriptor.full_name() {
        "google.protobuf.Timestamp" => {
            message.set_field_by_name(
                "seconds",
                Field::I64(rng.i64(-62_135_596_800..253_402_300_799)),
            );
            message.set_field_by_name("nanos", Field::I32(rng.i32(0..1_000_000_000)));
            return Some(message);
        }
        "google.protobuf.Duration" => {
            let seconds = rng.i64(-315_576_000_000..315_576_000_000);
            let nanos = rng.i32(0..1_000_000_000);
            message.set_field_by_name("seconds", Field::I64(seconds));
            message.set_field_by_name(
                "nanos",
                Field::I32(if seconds < 0 { -nanos } else { nanos }),
            );
            return Some(message);
        }
        "google.protobuf.Value" => {
            let kind = if depth > 3 {
                rng.usize(0..4)
            } else {
                rng.usize(0..6)
            };
            let (name, value) = match kind {
                0 => ("null_value", Field::EnumNumber(0)),
                1 => ("number_value", Field::F64(f64::from(rng.i32(..)) / 4.0)),
                2 => (
                    "string_value",
                    arbitrary_field(&Kind::String, rng, depth, pool)?,
                ),
                3 => ("bool_value", Field::Bool(rng.bool())),
                4 => (
                    "struct_value",
                    Field::Message(arbitrary_message(
                        &pool.get_message_by_name("google.protobuf.Struct")?,
                        rng,
                        depth + 1,
                        pool,
                    )?),
                ),
                _ => (
                    "list_value",
                    Field::Message(arbitrary_message(
                        &pool.get_message_by_name("google.protobuf.ListValue")?,
                        rng,
                        depth + 1,
                        pool,
                    )?),
                ),
            };
            message.set_field_by_name(name, value);
            return Some(message);
        }
        _ => {}
    }
    if depth > 4 {
        return Some(message);
    }
    for field in descriptor.fields() {
        if rng.bool() {
            continue;
        }
        let value = if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                continue;
            };
            let key_kind = entry.map_entry_key_field().kind();
            let value_kind = entry.map_entry_value_field().kind();
            let mut map = HashMap::new();
            for _ in 0..rng.usize(0..3) {
                let key = match arbitrary_field(&key_kind, rng, depth, pool)? {
                    Field::String(s) => MapKey::String(s),
                    Field::I32(v) => MapKey::I32(v),
                    Field::I64(v) => MapKey::I64(v),
                    Field::U32(v) => MapKey::U32(v),
                    Field::U64(v) => MapKey::U64(v),
                    Field::Bool(v) => MapKey::Bool(v),
                    _ => continue,
                };
                map.insert(key, arbitrary_field(&value_kind, rng, depth, pool)?);
            }
            Field::Map(map)
        } else if field.is_list() {
            Field::List(
                (0..rng.usize(0..3))
                    .map(|_| arbitrary_field(&field.kind(), rng, depth, pool))
                    .collect::<Option<_>>()?,
            )
        } else {
            arbitrary_field(&field.kind(), rng, depth, pool)?
        };
        message.set_field(&field, value);
    }
    Some(message)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every message of the API, filled with arbitrary values, comes back equal from binary
    /// protobuf and from proto3 JSON in both spellings.
    #[test]
    fn every_api_message_survives_binary_and_both_json_forms(seed in any::<u64>()) {
        let pool = pool();
        let mut rng = fastrand::Rng::with_seed(seed);
        let messages: Vec<MessageDescriptor> = pool
            .all_messages()
            .filter(|m| m.package_name() == "iggy.gateway.v1" && !m.is_map_entry())
            .collect();
        prop_assert!(messages.len() > 20, "{} messages", messages.len());
        for descriptor in messages {
            let Some(generated) = arbitrary_message(&descriptor, &mut rng, 0, &pool) else {
                continue;
            };
            // Binary once, so fields set to their default (which proto3 does not write)
            // compare equal: the canonical form.
            let message = DynamicMessage::decode(descriptor.clone(), generated.encode_to_vec().as_slice())
                .expect("decodes");
            let binary = DynamicMessage::decode(descriptor.clone(), message.encode_to_vec().as_slice())
                .expect("decodes");
            prop_assert_eq!(&binary, &message, "{} in binary", descriptor.full_name());
            for proto_names in [false, true] {
                let text = to_json(&message, proto_names);
                let back = from_json(descriptor.clone(), &text);
                prop_assert_eq!(&back, &message, "{} as {}", descriptor.full_name(), text);
            }
        }
    }

    /// Any valid User or Order event is accepted, stored, read back and accepted again as the
    /// same typed event.
    #[test]
    fn any_valid_typed_event_survives_being_stored_and_polled(
        user_id in any::<u128>().prop_filter("not nil", |id| *id != 0),
        order_id in any::<u128>().prop_filter("not nil", |id| *id != 0),
        email in "[a-z0-9]{1,10}([.+_-][a-z0-9]{1,10}){0,2}@[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?\\.[a-z]{2,6}",
        name in "[^\\p{Cc}]{1,40}",
        items in prop::collection::vec((any::<u128>().prop_filter("not nil", |id| *id != 0), 1..=u32::MAX, "[0-9]{1,18}(\\.[0-9]{1,9})?"), 1..5),
        total in "[0-9]{1,18}(\\.[0-9]{1,9})?",
        currency in prop::sample::select(vec!["", "EUR", "USD", "JPY", "GBP", "CHF", "BHD"]),
        as_user in any::<bool>(),
    ) {
        let id = |n: u128| uuid::Uuid::from_u128(n).hyphenated().to_string();
        let member = if as_user {
            event_payload::Event::User(proto::UserEvent {
                action: "Created".into(),
                user_id: id(user_id),
                email: email.clone(),
                name: name.clone(),
                ip_address: String::new(),
            })
        } else {
            event_payload::Event::Order(proto::OrderEvent {
                action: "Created".into(),
                order_id: id(order_id),
                user_id: id(user_id),
                items: items
                    .iter()
                    .map(|(product, quantity, price)| proto::OrderItem {
                        product_id: id(*product),
                        quantity: *quantity,
                        unit_price: price.clone(),
                    })
                    .collect(),
                total_amount: total.clone(),
                currency: currency.into(),
                ..Default::default()
            })
        };
        let sent = typed(member);
        let expected = check_payload("event.payload", sent.clone()).expect("valid");
        let checked = check_event("event", event(sent)).expect("valid");
        let stored = serde_json::to_vec(&checked.envelope).expect("JSON");
        let polled = read_event(&stored).and_then(|e| e.payload).expect("an event");
        prop_assert_eq!(check_payload("event.payload", polled).expect("valid"), expected);
    }
}

// ---------------------------------------------------------------------------------------
// Validation tables.

/// The field a refusal names and its description, or `None` when accepted.
fn verdict(payload: proto::EventPayload) -> Option<(String, String)> {
    match check_event("event", event(payload)) {
        Ok(_) => None,
        Err(status) => {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
            let violation = status
                .get_details_bad_request()
                .and_then(|b| b.field_violations.into_iter().next())
                .expect("a field violation");
            Some((violation.field, violation.description))
        }
    }
}

fn user_with(change: impl Fn(&mut proto::UserEvent)) -> proto::EventPayload {
    let mut user = user();
    change(&mut user);
    typed(event_payload::Event::User(user))
}

fn order_with(change: impl Fn(&mut proto::OrderEvent)) -> proto::EventPayload {
    let mut order = order();
    change(&mut order);
    typed(event_payload::Event::Order(order))
}

fn order_data_with(change: impl Fn(&mut Value)) -> proto::EventPayload {
    let mut data = TypedPayload::Order(order()).data();
    change(&mut data);
    in_data_form("Order", data)
}

#[test]
fn valid_events_are_accepted() {
    let mut accepted: Vec<proto::EventPayload> = every_action().into_iter().map(typed).collect();
    accepted.extend([
        user_with(|u| u.email = "o'brien+tag@mail.example.co.uk".into()),
        user_with(|u| u.email = "x@xn--bcher-kva.example".into()),
        user_with(|u| u.user_id = USER_ID.to_uppercase()),
        user_with(|u| u.user_id = USER_ID.replace('-', "")),
        user_with(|u| u.name = "Zoë 李".into()),
        user_with(|u| {
            u.action = "LoggedIn".into();
            u.email.clear();
            u.name.clear();
            u.ip_address = "192.0.2.7".into();
        }),
        order_with(|o| o.total_amount = "0".into()),
        order_with(|o| o.items[0].unit_price = "0.000000001".into()),
        order_with(|o| o.items[0].unit_price = "999999999999999999.99".into()),
        order_with(|o| o.currency = "JPY".into()),
        order_with(|o| o.currency = "XAU".into()),
        // Currency is new, so optional: the original service had none.
        order_with(|o| o.currency.clear()),
        // The total is not checked against the items (shipping, taxes, discounts).
        order_with(|o| o.total_amount = "1.00".into()),
        order_with(|o| o.items[0].quantity = u32::MAX),
        order_data_with(|_| {}),
        order_data_with(|d| d["items"][0]["quantity"] = json!("2")),
        in_data_form(
            "User",
            json!({"action": "Created", "userId": USER_ID, "email": "a@b.io", "name": "A"}),
        ),
        in_data_form(
            "User",
            json!({"action": "Deleted", "user_id": USER_ID, "name": null}),
        ),
        in_data_form("Generic", json!("a bare string")),
        proto::EventPayload {
            r#type: "Generic".into(),
            ..Default::default()
        },
        proto::EventPayload {
            r#type: "Order".into(),
            data: Some(json_value(TypedPayload::Order(order()).data())),
            event: Some(event_payload::Event::Order(order())),
        },
    ]);
    for payload in accepted {
        assert_eq!(verdict(payload.clone()), None, "{payload:?}");
    }
}

#[test]
fn invalid_events_are_refused_naming_the_field() {
    let refused: Vec<(proto::EventPayload, &str, &str)> = vec![
        (
            proto::EventPayload::default(),
            "event.payload.type",
            "is required",
        ),
        (
            in_data_form("Robot", json!({})),
            "event.payload.type",
            "must be one of",
        ),
        (
            proto::EventPayload {
                r#type: "User".into(),
                ..Default::default()
            },
            "event.payload.data",
            "is required for a User event",
        ),
        (
            in_data_form("User", json!([1])),
            "event.payload.data",
            "must be a JSON object",
        ),
        (
            user_with(|u| u.action = "Renamed".into()),
            "event.payload.user.action",
            "must be one of",
        ),
        (
            user_with(|u| u.action = "created".into()),
            "event.payload.user.action",
            "must be one of",
        ),
        (
            user_with(|u| u.action.clear()),
            "event.payload.user.action",
            "is required",
        ),
        (
            user_with(|u| u.user_id = "u-1".into()),
            "event.payload.user.user_id",
            "must be a UUID",
        ),
        (
            user_with(|u| u.user_id.clear()),
            "event.payload.user.user_id",
            "is required",
        ),
        (
            user_with(|u| u.user_id = "00000000-0000-0000-0000-000000000000".into()),
            "event.payload.user.user_id",
            "nil",
        ),
        (
            user_with(|u| u.email.clear()),
            "event.payload.user.email",
            "is required",
        ),
        (
            user_with(|u| u.email = "ada".into()),
            "event.payload.user.email",
            "no `@`",
        ),
        (
            user_with(|u| u.email = "a@b@c.io".into()),
            "event.payload.user.email",
            "more than one",
        ),
        (
            user_with(|u| u.email = "@example.com".into()),
            "event.payload.user.email",
            "before `@`",
        ),
        (
            user_with(|u| u.email = "a..b@example.com".into()),
            "event.payload.user.email",
            "before `@`",
        ),
        (
            user_with(|u| u.email = ".a@example.com".into()),
            "event.payload.user.email",
            "before `@`",
        ),
        (
            user_with(|u| u.email = "a b@example.com".into()),
            "event.payload.user.email",
            "before `@`",
        ),
        (
            user_with(|u| u.email = "ada@localhost".into()),
            "event.payload.user.email",
            "after `@`",
        ),
        (
            user_with(|u| u.email = "ada@-x.io".into()),
            "event.payload.user.email",
            "after `@`",
        ),
        (
            user_with(|u| u.email = "ada@x..io".into()),
            "event.payload.user.email",
            "after `@`",
        ),
        (
            user_with(|u| u.email = "ada@10.0.0.1".into()),
            "event.payload.user.email",
            "after `@`",
        ),
        (
            user_with(|u| u.email = format!("a@{}.io", "x".repeat(250))),
            "event.payload.user.email",
            "254",
        ),
        (
            user_with(|u| {
                u.action = "Updated".into();
                u.email = "not-an-address".into();
            }),
            "event.payload.user.email",
            "e-mail",
        ),
        (
            user_with(|u| u.name.clear()),
            "event.payload.user.name",
            "is required",
        ),
        (
            user_with(|u| u.name = "a\u{7}b".into()),
            "event.payload.user.name",
            "control",
        ),
        (
            user_with(|u| u.name = "x".repeat(257)),
            "event.payload.user.name",
            "1 to 256",
        ),
        (
            user_with(|u| u.ip_address = "10.0.0.1".into()),
            "event.payload.user.ip_address",
            "not a field of a Created User event",
        ),
        (
            user_with(|u| {
                u.action = "Deleted".into();
                u.email.clear();
            }),
            "event.payload.user.name",
            "not a field of a Deleted User event",
        ),
        (
            user_with(|u| {
                u.action = "LoggedIn".into();
                u.email.clear();
                u.name.clear();
            }),
            "event.payload.user.ip_address",
            "is required",
        ),
        (
            user_with(|u| {
                u.action = "LoggedIn".into();
                u.email.clear();
                u.name.clear();
                u.ip_address = "300.1.1.1".into();
            }),
            "event.payload.user.ip_address",
            "IPv4 or IPv6",
        ),
        (
            order_with(|o| o.action = "Paid".into()),
            "event.payload.order.action",
            "must be one of",
        ),
        (
            order_with(|o| o.order_id = "42".into()),
            "event.payload.order.order_id",
            "UUID",
        ),
        (
            order_with(|o| o.user_id.clear()),
            "event.payload.order.user_id",
            "is required",
        ),
        (
            order_with(|o| o.items.clear()),
            "event.payload.order.items",
            "at least one item",
        ),
        (
            order_with(|o| o.items[1].quantity = 0),
            "event.payload.order.items[1].quantity",
            "at least 1",
        ),
        (
            order_with(|o| o.items[0].product_id = "SKU-1".into()),
            "event.payload.order.items[0].product_id",
            "UUID",
        ),
        (
            order_with(|o| o.items[0].unit_price = "-1".into()),
            "event.payload.order.items[0].unit_price",
            "non-negative",
        ),
        (
            order_with(|o| o.items[0].unit_price = "1.".into()),
            "event.payload.order.items[0].unit_price",
            "decimal",
        ),
        (
            order_with(|o| o.items[0].unit_price = ".5".into()),
            "event.payload.order.items[0].unit_price",
            "decimal",
        ),
        (
            order_with(|o| o.items[0].unit_price = "1e3".into()),
            "event.payload.order.items[0].unit_price",
            "decimal",
        ),
        (
            order_with(|o| o.items[0].unit_price = "1,50".into()),
            "event.payload.order.items[0].unit_price",
            "decimal",
        ),
        (
            order_with(|o| o.items[0].unit_price = "+1".into()),
            "event.payload.order.items[0].unit_price",
            "decimal",
        ),
        (
            order_with(|o| o.items[0].unit_price = "1.0000000001".into()),
            "event.payload.order.items[0].unit_price",
            "9 after",
        ),
        (
            order_with(|o| o.items[0].unit_price = "1".repeat(19)),
            "event.payload.order.items[0].unit_price",
            "18 digits",
        ),
        (
            order_with(|o| o.items[0].unit_price.clear()),
            "event.payload.order.items[0].unit_price",
            "is required",
        ),
        (
            order_with(|o| o.total_amount = "NaN".into()),
            "event.payload.order.total_amount",
            "decimal",
        ),
        (
            order_with(|o| o.total_amount.clear()),
            "event.payload.order.total_amount",
            "is required",
        ),
        (
            order_with(|o| o.currency = "eur".into()),
            "event.payload.order.currency",
            "ISO 4217",
        ),
        (
            order_with(|o| o.currency = "ABC".into()),
            "event.payload.order.currency",
            "ISO 4217",
        ),
        (
            order_with(|o| o.currency = "XXX".into()),
            "event.payload.order.currency",
            "ISO 4217",
        ),
        (
            order_with(|o| o.status = "pending".into()),
            "event.payload.order.status",
            "not a field of a Created Order event",
        ),
        (
            order_with(|o| {
                *o = proto::OrderEvent {
                    action: "Updated".into(),
                    order_id: ORDER_ID.into(),
                    status: "Lost".into(),
                    ..Default::default()
                };
            }),
            "event.payload.order.status",
            "must be one of",
        ),
        (
            order_with(|o| {
                *o = proto::OrderEvent {
                    action: "Updated".into(),
                    order_id: ORDER_ID.into(),
                    ..Default::default()
                };
            }),
            "event.payload.order.status",
            "is required",
        ),
        (
            order_with(|o| {
                *o = proto::OrderEvent {
                    action: "Cancelled".into(),
                    order_id: ORDER_ID.into(),
                    reason: "x\ny".into(),
                    ..Default::default()
                };
            }),
            "event.payload.order.reason",
            "control",
        ),
        (
            order_with(|o| {
                *o = proto::OrderEvent {
                    action: "Shipped".into(),
                    order_id: ORDER_ID.into(),
                    carrier: "DHL".into(),
                    ..Default::default()
                };
            }),
            "event.payload.order.tracking_number",
            "is required",
        ),
        (
            order_with(|o| o.action = "Shipped".into()),
            "event.payload.order.user_id",
            "not a field of a Shipped Order event",
        ),
        (
            order_data_with(|d| d["items"][0]["quantity"] = json!(-1)),
            "event.payload.data.items[0].quantity",
            "integer",
        ),
        (
            order_data_with(|d| d["items"][0]["quantity"] = json!(1.5)),
            "event.payload.data.items[0].quantity",
            "integer",
        ),
        (
            order_data_with(|d| d["items"][0]["quantity"] = json!(0)),
            "event.payload.data.items[0].quantity",
            "at least 1",
        ),
        (
            order_data_with(|d| d["items"][0]["unit_price"] = json!(29.99)),
            "event.payload.data.items[0].unit_price",
            "not a JSON number",
        ),
        (
            order_data_with(|d| d["total_amount"] = json!(59.98)),
            "event.payload.data.total_amount",
            "not a JSON number",
        ),
        (
            order_data_with(|d| d["items"] = json!({})),
            "event.payload.data.items",
            "array",
        ),
        (
            order_data_with(|d| d["items"] = json!([])),
            "event.payload.data.items",
            "at least one item",
        ),
        (
            order_data_with(|d| d["items"][0]["colour"] = json!("red")),
            "event.payload.data.items[0].colour",
            "not a field",
        ),
        (
            order_data_with(|d| d["orderId"] = json!(ORDER_ID)),
            "event.payload.data.order_id",
            "given twice",
        ),
        (
            order_data_with(|d| d["currency"] = json!(978)),
            "event.payload.data.currency",
            "must be a string",
        ),
        (
            order_data_with(|d| d["customer_id"] = json!(USER_ID)),
            "event.payload.data.customer_id",
            "not a field",
        ),
        (
            proto::EventPayload {
                r#type: "Order".into(),
                event: Some(event_payload::Event::User(user())),
                ..Default::default()
            },
            "event.payload.type",
            "but `user` is set",
        ),
        (
            proto::EventPayload {
                r#type: String::new(),
                data: Some(json_value(json!({"action": "Updated", "user_id": USER_ID}))),
                event: Some(event_payload::Event::User(user())),
            },
            "event.payload.data",
            "disagrees with `user`",
        ),
    ];
    for (payload, field, description) in refused {
        let (named, why) =
            verdict(payload.clone()).unwrap_or_else(|| panic!("accepted: {payload:?}"));
        assert_eq!(named, field, "{payload:?}: {why}");
        assert!(
            why.contains(description),
            "{field}: {why:?} lacks {description:?}"
        );
    }
}

#[test]
fn the_envelope_is_checked_before_its_payload() {
    let mut bad = event(typed(event_payload::Event::User(user())));
    bad.id = "nope".into();
    let err = check_event("events[3]", bad).expect_err("refused");
    let field = err
        .get_details_bad_request()
        .and_then(|b| b.field_violations.into_iter().next())
        .map(|v| v.field);
    assert_eq!(field.as_deref(), Some("events[3].id"));
}

// ---------------------------------------------------------------------------------------
// README's shapes, byte for byte.

/// The ```json blocks of README's "Typed events" section, each an event as it is stored.
fn readme_event_shapes() -> Vec<String> {
    let readme = std::fs::read_to_string("README.md").expect("README.md");
    let section = readme
        .split("\n### Typed events\n")
        .nth(1)
        .expect("README has a \"Typed events\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(start) = rest.find("```json\n") {
        let after = &rest[start + "```json\n".len()..];
        let end = after.find("```").expect("a closed block");
        blocks.push(after[..end].trim_end().to_owned());
        rest = &after[end..];
    }
    blocks
}

#[test]
fn the_event_shapes_readme_shows_are_what_the_gateway_stores_byte_for_byte() {
    let shapes = readme_event_shapes();
    assert!(shapes.len() >= 4, "found {} shapes", shapes.len());
    for shape in shapes {
        // Read as REST reads a body: proto3 JSON into the generated message.
        let event: proto::Event = from_json(descriptor("Event"), &shape)
            .transcode_to()
            .expect("an Event");
        let checked = check_event("event", event)
            .unwrap_or_else(|err| panic!("README's event is refused: {err:?}\n{shape}"));
        let stored = serde_json::to_string(&checked.envelope).expect("JSON");
        if shape.contains("\"payload\":{\"type\"") {
            assert_eq!(stored, shape, "README shows the stored form");
        } else {
            // A typed member: stored in the original form, as the block after it shows.
            assert!(stored.contains("\"payload\":{\"type\""), "{stored}");
        }
    }
}

/// Each event README sends with curl, with the answer README shows for it: the field a 400
/// names, or `None` for an event accepted.
fn readme_curl_events() -> Vec<(Value, Option<String>)> {
    let readme = std::fs::read_to_string("README.md").expect("README.md");
    let mut found = Vec::new();
    for example in readme.split("\n$ ").skip(1) {
        if !(example.starts_with("curl ") || example.starts_with("buf curl ")) {
            continue;
        }
        let example = example.split("\n```").next().unwrap_or(example);
        let Some((_, after)) = example.split_once("-d '") else {
            continue;
        };
        let Some((body, answer)) = after.split_once('\'') else {
            continue;
        };
        let Ok(request) = serde_json::from_str::<Value>(body) else {
            continue;
        };
        // REST shows a problem on one line; buf curl a gRPC status whose message starts with
        // the field.
        let problem: Option<Value> = answer
            .lines()
            .find_map(|line| serde_json::from_str(line).ok());
        let grpc_field = answer
            .contains("\"code\": \"invalid_argument\"")
            .then(|| answer.split("\"message\": \"").nth(1))
            .flatten()
            .and_then(|message| message.split(':').next())
            .map(str::to_owned);
        let refused = problem
            .and_then(|a| a["violations"][0]["field"].as_str().map(str::to_owned))
            .or(grpc_field);
        match (&request["event"], &request["events"]) {
            (event @ Value::Object(_), _) => found.push((event.clone(), refused)),
            (_, Value::Array(events)) => {
                found.extend(events.iter().map(|event| (event.clone(), refused.clone())));
            }
            _ => {}
        }
    }
    found
}

#[test]
fn every_event_readme_sends_with_curl_gets_the_answer_readme_shows() {
    let examples = readme_curl_events();
    assert!(
        examples.len() >= 2,
        "README sends {} events",
        examples.len()
    );
    assert!(
        examples.iter().any(|(_, refused)| refused.is_some()),
        "README shows a refusal"
    );
    for (json, refused) in examples {
        let event: proto::Event = from_json(descriptor("Event"), &json.to_string())
            .transcode_to()
            .expect("an Event");
        let verdict = check_event("event", event).err().map(|status| {
            status
                .get_details_bad_request()
                .and_then(|b| b.field_violations.into_iter().next())
                .map(|v| v.field)
                .unwrap_or_default()
        });
        assert_eq!(verdict, refused, "{json}");
    }
}

/// An event stored with a time no JSON answer can write (published before the rule) is read as
/// not an event, so a poll skips it instead of failing; the last writable second still reads.
#[test]
fn a_stored_event_whose_time_json_cannot_write_is_not_an_event() {
    let stored = |timestamp: &str| {
        serde_json::to_vec(
            &json!({"id": EVENT_ID, "event_type": "x", "timestamp": timestamp,
            "payload": {"type": "Generic", "data": {"n": 1}}}),
        )
        .expect("JSON")
    };
    assert!(read_event(&stored("+10000-01-01T00:00:00Z")).is_none());
    assert!(read_event(&stored("9999-12-31T23:59:59.999999999Z")).is_some());
    assert!(read_event(&stored("0001-01-01T00:00:00Z")).is_some());
}
