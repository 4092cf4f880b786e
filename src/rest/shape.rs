//! A JSON body's shape, measured before it is parsed into a message: how many values it holds
//! and how deeply they nest, walked without building anything. Each JSON value becomes a
//! node of a dynamic message, so a body of many tiny values (`[{},{},…]`) costs many times
//! its size: the transcoder charges the count to the call's memory budget first.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// What one JSON value is counted as once parsed into a dynamic message, in bytes.
pub const JSON_VALUE_COST: usize = 128;

/// Deepest nesting of a whole request body (a message's `json` body sits three levels down).
pub const MAX_BODY_DEPTH: usize = 40;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeRefusal {
    TooDeep,
    /// Not JSON at all; the parser that follows names the error.
    Malformed,
}

/// Counts the values in `body`, refusing nesting past [`MAX_BODY_DEPTH`].
pub fn count_values(body: &[u8]) -> Result<usize, ShapeRefusal> {
    let mut walk = Walk {
        values: 0,
        refusal: None,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let walked = Level {
        walk: &mut walk,
        depth: 0,
    }
    .deserialize(&mut deserializer);
    match (walked, walk.refusal) {
        (_, Some(refusal)) => Err(refusal),
        (Ok(()), None) => Ok(walk.values),
        (Err(_), None) => Err(ShapeRefusal::Malformed),
    }
}

struct Walk {
    values: usize,
    refusal: Option<ShapeRefusal>,
}

struct Level<'a> {
    walk: &'a mut Walk,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Level<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        self.walk.values += 1;
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Level<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut items: A) -> Result<(), A::Error> {
        let depth = self.enter()?;
        while items
            .next_element_seed(Level {
                walk: self.walk,
                depth,
            })?
            .is_some()
        {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut fields: A) -> Result<(), A::Error> {
        let depth = self.enter()?;
        while fields.next_key::<IgnoredAny>()?.is_some() {
            fields.next_value_seed(Level {
                walk: self.walk,
                depth,
            })?;
        }
        Ok(())
    }
}

impl Level<'_> {
    fn enter<E: serde::de::Error>(&mut self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > MAX_BODY_DEPTH {
            self.walk.refusal = Some(ShapeRefusal::TooDeep);
            return Err(E::custom("too deep"));
        }
        Ok(depth)
    }
}

impl fmt::Display for ShapeRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ShapeRefusal::TooDeep => write!(f, "nests deeper than {MAX_BODY_DEPTH} levels"),
            ShapeRefusal::Malformed => f.write_str("is not valid JSON"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_BODY_DEPTH, ShapeRefusal, count_values};

    #[test]
    fn every_value_is_counted() {
        assert_eq!(count_values(br#"{"a":[1,{"b":null}],"c":"d"}"#), Ok(6));
        assert_eq!(count_values(b"{}"), Ok(1));
        assert_eq!(count_values(b"{"), Err(ShapeRefusal::Malformed));
    }

    #[test]
    fn ordinary_bodies_pass() {
        let batch = format!(
            "{{\"messages\":[{}]}}",
            vec![
                r#"{"json":{"order":1,"items":[1,2,3]},"headers":{"k":{"string_value":"v"}}}"#;
                1000
            ]
            .join(",")
        );
        assert_eq!(count_values(batch.as_bytes()), Ok(1 + 1 + 1000 * 10));
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i32>().prop_map(|n| serde_json::json!(n)),
            "\\PC{0,8}".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(6, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..8)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn nodes(value: &serde_json::Value) -> usize {
        1 + match value {
            serde_json::Value::Array(items) => items.iter().map(nodes).sum(),
            serde_json::Value::Object(fields) => fields.values().map(nodes).sum(),
            _ => 0,
        }
    }

    proptest::proptest! {
        #[test]
        fn the_count_is_the_number_of_values(value in json_value()) {
            let text = serde_json::to_vec(&value).expect("serializes");
            proptest::prop_assert_eq!(count_values(&text), Ok(nodes(&value)));
        }

        #[test]
        fn any_bytes_are_measured_without_panicking(body in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = count_values(&body);
        }
    }

    #[test]
    fn nesting_past_the_limit_is_refused() {
        let deep = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        assert_eq!(
            count_values(deep(MAX_BODY_DEPTH).as_bytes()),
            Ok(MAX_BODY_DEPTH)
        );
        assert_eq!(
            count_values(deep(MAX_BODY_DEPTH + 1).as_bytes()),
            Err(ShapeRefusal::TooDeep)
        );
    }
}
