//! The typed JSON codecs' writing of the well-known types, doubles and enums the API's answers
//! hold, as the descriptors (`prost-reflect`) write them, so an answer reads the same whichever
//! writes it: pbjson writes a timestamp's zone as `+00:00` and every fraction digit, a
//! `Struct`'s keys in hash order, a NaN as `null`, and refuses an enum number no value has;
//! REST writes `Z`, 0, 3, 6 or 9 digits, the keys sorted, `"NaN"`, and the number.
//! `build.rs` points each such field of the generated codecs here; `tests` and the answer
//! parity tests (`rest::transcode::tests`) hold the two writers to the same bytes.

use serde::{
    Serialize, Serializer,
    ser::{Error, SerializeMap, SerializeSeq},
};

/// The range proto3 JSON allows: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;
/// ±10,000 years.
const MAX_DURATION_SECONDS: u64 = 315_576_000_000;
const MAX_DURATION_NANOS: u32 = 999_999_999;

/// Whether the typed codec can write a polled item, checked before an answer is written in
/// pieces (`rest::typed_json_pieces`): once a piece is sent, an item it refuses could only cut
/// the body short, where an answer written whole is refused as an internal error. What it
/// refuses in these messages: a timestamp outside years 1 to 9999, a non-finite number in a
/// `Value` (doubles of headers are written as `"NaN"` and the like).
pub trait Writable {
    fn is_writable(&self) -> bool;
}

impl Writable for crate::proto::PolledMessage {
    fn is_writable(&self) -> bool {
        use crate::proto::polled_message::Body;
        timestamp_is_writable(self.timestamp.as_ref())
            && match &self.body {
                Some(Body::Json(value)) => value_is_writable(value),
                Some(Body::Payload(_) | Body::Text(_)) | None => true,
            }
    }
}

impl Writable for crate::proto::PolledEvent {
    fn is_writable(&self) -> bool {
        use crate::proto::event_payload::Event;
        let payload_is_writable = |payload: &crate::proto::EventPayload| {
            payload.data.as_ref().is_none_or(value_is_writable)
                && match &payload.event {
                    Some(Event::Generic(value)) => value_is_writable(value),
                    Some(Event::User(_) | Event::Order(_)) | None => true,
                }
        };
        timestamp_is_writable(self.timestamp.as_ref())
            && self.event.as_ref().is_none_or(|event| {
                timestamp_is_writable(event.timestamp.as_ref())
                    && event.payload.as_ref().is_none_or(payload_is_writable)
            })
    }
}

fn timestamp_is_writable(timestamp: Option<&pbjson_types::Timestamp>) -> bool {
    timestamp.is_none_or(|timestamp| Timestamp(timestamp).is_writable())
}

fn value_is_writable(value: &pbjson_types::Value) -> bool {
    use pbjson_types::value::Kind;
    match &value.kind {
        Some(Kind::NumberValue(number)) => number.is_finite(),
        Some(Kind::ListValue(list)) => list.values.iter().all(value_is_writable),
        Some(Kind::StructValue(object)) => object.fields.values().all(value_is_writable),
        Some(Kind::NullValue(_) | Kind::BoolValue(_) | Kind::StringValue(_)) | None => true,
    }
}

/// A `google.protobuf.Timestamp` field, written as RFC 3339 in UTC with a `Z`.
pub struct Timestamp<'a>(pub &'a pbjson_types::Timestamp);

impl Timestamp<'_> {
    /// Whether proto3 JSON can write it: from 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z
    /// (its nanos normalised first, as it is written).
    pub fn is_writable(&self) -> bool {
        let mut timestamp = prost_types::Timestamp {
            seconds: self.0.seconds,
            nanos: self.0.nanos,
        };
        timestamp.normalize();
        (MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&timestamp.seconds)
    }
}

impl Serialize for Timestamp<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Self(timestamp) = self;
        // The descriptors check the seconds as given, before the nanos are normalised.
        if !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&timestamp.seconds) {
            return Err(S::Error::custom("timestamp out of range"));
        }
        serializer.collect_str(&prost_types::Timestamp {
            seconds: timestamp.seconds,
            nanos: timestamp.nanos,
        })
    }
}

/// A `google.protobuf.Duration` field, written as seconds with an `s`.
pub struct Duration<'a>(pub &'a pbjson_types::Duration);

impl Serialize for Duration<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let Self(duration) = self;
        if duration.seconds.unsigned_abs() > MAX_DURATION_SECONDS
            || duration.nanos.unsigned_abs() > MAX_DURATION_NANOS
        {
            return Err(S::Error::custom("duration out of range"));
        }
        serializer.collect_str(&prost_types::Duration {
            seconds: duration.seconds,
            nanos: duration.nanos,
        })
    }
}

/// A `double` field: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"` as proto3 JSON spells
/// what JSON cannot, where pbjson writes them as `null`.
pub struct Double<'a>(pub &'a f64);

impl Serialize for Double<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let value = *self.0;
        if value.is_nan() {
            serializer.serialize_str("NaN")
        } else if value == f64::INFINITY {
            serializer.serialize_str("Infinity")
        } else if value == f64::NEG_INFINITY {
            serializer.serialize_str("-Infinity")
        } else {
            serializer.serialize_f64(value)
        }
    }
}

/// An enum field: its value's name, or the number when no value has it (a newer client's, or a
/// stored event's), which pbjson would refuse to write.
pub enum Enum<E> {
    Known(E),
    Unknown(i32),
}

impl<E: Serialize> Serialize for Enum<E> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Known(value) => value.serialize(serializer),
            Self::Unknown(number) => serializer.serialize_i32(*number),
        }
    }
}

/// A `google.protobuf.Value` field: any JSON, an object's keys in sorted order.
pub struct Value<'a>(pub &'a pbjson_types::Value);

impl Serialize for Value<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use pbjson_types::value::Kind;
        match &self.0.kind {
            None | Some(Kind::NullValue(_)) => serializer.serialize_none(),
            Some(Kind::BoolValue(value)) => serializer.serialize_bool(*value),
            Some(Kind::NumberValue(number)) if number.is_finite() => {
                serializer.serialize_f64(*number)
            }
            // JSON has no spelling for them.
            Some(Kind::NumberValue(_)) => Err(S::Error::custom(
                "cannot serialize non-finite double in google.protobuf.Value",
            )),
            Some(Kind::StringValue(value)) => serializer.serialize_str(value),
            Some(Kind::ListValue(list)) => {
                let mut seq = serializer.serialize_seq(Some(list.values.len()))?;
                for value in &list.values {
                    seq.serialize_element(&Value(value))?;
                }
                seq.end()
            }
            Some(Kind::StructValue(object)) => {
                let mut keys: Vec<&String> = object.fields.keys().collect();
                keys.sort_unstable();
                let mut map = serializer.serialize_map(Some(keys.len()))?;
                for key in keys {
                    if let Some(value) = object.fields.get(key) {
                        map.serialize_entry(key, &Value(value))?;
                    }
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::LazyLock;

    use proptest::prelude::*;

    static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
        DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).expect("decodes")
    });
    use prost_reflect::{DescriptorPool, DynamicMessage};

    /// The descriptors (as REST's answers are written) and the typed writer here write
    /// `message` (a `google.protobuf.{name}`) as the same text, or both refuse it.
    fn agree(
        name: &str,
        message: &impl prost::Message,
        typed: impl serde::Serialize,
    ) -> Result<(), TestCaseError> {
        let descriptor = POOL
            .get_message_by_name(&format!("google.protobuf.{name}"))
            .expect("imported by the API");
        let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
            .expect("decodes");
        let dynamic = serde_json::to_string(&dynamic).map_err(|err| err.to_string());
        let typed = serde_json::to_string(&typed).map_err(|err| err.to_string());
        prop_assert_eq!(typed.is_ok(), dynamic.is_ok(), "{:?} {:?}", typed, dynamic);
        if let (Ok(typed), Ok(dynamic)) = (typed, dynamic) {
            prop_assert_eq!(typed, dynamic);
        }
        Ok(())
    }

    fn json_value() -> impl Strategy<Value = pbjson_types::Value> {
        use pbjson_types::value::Kind;
        let leaf = prop_oneof![
            Just(Kind::NullValue(0)),
            any::<bool>().prop_map(Kind::BoolValue),
            any::<f64>().prop_map(Kind::NumberValue),
            (-1e6f64..1e6).prop_map(Kind::NumberValue),
            "[a-zé\"\\\\]{0,4}".prop_map(Kind::StringValue),
        ]
        .prop_map(|kind| pbjson_types::Value { kind: Some(kind) });
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(|values| {
                    pbjson_types::Value {
                        kind: Some(Kind::ListValue(pbjson_types::ListValue { values })),
                    }
                }),
                proptest::collection::hash_map("[a-dA-D_]{0,3}", inner, 0..5).prop_map(|fields| {
                    pbjson_types::Value {
                        kind: Some(Kind::StructValue(pbjson_types::Struct { fields })),
                    }
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// In range and out of it, nanos normalised or not: the same text, or both refuse.
        #[test]
        fn a_timestamp_is_written_as_the_descriptors_write_it(
            seconds in prop_oneof![
                -62_135_596_801i64..=-62_135_596_700,
                -1_000_000_000i64..4_000_000_000,
                253_402_300_700i64..=253_402_300_800,
                any::<i64>(),
            ],
            nanos in prop_oneof![
                0i32..1_000_000_000,
                Just(0), Just(500_000_000), Just(120_000), Just(7),
                any::<i32>(),
            ],
        ) {
            let timestamp = pbjson_types::Timestamp { seconds, nanos };
            agree("Timestamp", &timestamp, super::Timestamp(&timestamp))?;
        }

        #[test]
        fn a_duration_is_written_as_the_descriptors_write_it(
            seconds in prop_oneof![
                -400_000i64..400_000,
                315_575_999_999i64..=315_576_000_001,
                any::<i64>(),
            ],
            nanos in prop_oneof![
                -999_999_999i32..=999_999_999,
                Just(0), Just(1_000_000_000), Just(-1_000_000_000),
                any::<i32>(),
            ],
        ) {
            let duration = pbjson_types::Duration { seconds, nanos };
            agree("Duration", &duration, super::Duration(&duration))?;
        }

        /// Objects of several keys (sorted, not in hash order), nesting, escapes, and numbers
        /// JSON cannot hold (refused by both).
        #[test]
        fn a_value_is_written_as_the_descriptors_write_it(value in json_value()) {
            agree("Value", &value, super::Value(&value))?;
        }
    }

    #[test]
    fn a_double_is_written_as_the_descriptors_write_it() {
        for value in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.0,
            -0.0,
            1.5,
            1e300,
            f64::MIN_POSITIVE,
        ] {
            let header = crate::proto::HeaderValue {
                kind: Some(crate::proto::header_value::Kind::DoubleValue(value)),
            };
            let descriptor = POOL
                .get_message_by_name("iggy.gateway.v1.HeaderValue")
                .expect("in the API");
            let dynamic = DynamicMessage::decode(
                descriptor,
                prost::Message::encode_to_vec(&header).as_slice(),
            )
            .expect("decodes");
            let dynamic = serde_json::to_value(&dynamic).expect("writes");
            let typed = serde_json::to_value(super::Double(&value)).expect("writes");
            assert_eq!(Some(&typed), dynamic.get("doubleValue"), "{value}");
        }
    }

    #[test]
    fn a_timestamp_reads_as_rest_has_always_written_it() {
        let at = |seconds, nanos| {
            serde_json::to_string(&super::Timestamp(&pbjson_types::Timestamp {
                seconds,
                nanos,
            }))
            .ok()
        };
        assert_eq!(at(0, 0).as_deref(), Some("\"1970-01-01T00:00:00Z\""));
        assert_eq!(
            at(1_795_000_000, 120_000_000).as_deref(),
            Some("\"2026-11-18T11:06:40.120Z\"")
        );
        assert_eq!(
            at(1_795_000_000, 1).as_deref(),
            Some("\"2026-11-18T11:06:40.000000001Z\"")
        );
        assert_eq!(at(253_402_300_800, 0), None);
    }
}
