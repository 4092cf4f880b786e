//! A JSON body's shape, walked before it is parsed into a message: how many values it holds
//! and how deeply they nest, and what the parser would let pass silently (a key given twice,
//! or one field under both its names: the last would win; two members of one oneof) or needs
//! help with (scalars spelled as `scalars` describes). Each JSON value becomes a node of a
//! message, so a body of many tiny values (`[{},{},…]`) costs many times its size: the walk
//! has the call's memory budget pay for each block of values before it walks them, so what it
//! keeps (the keys of an object) is paid for first. [`count_values`] measures alone,
//! allocating nothing, for the answers that name a body's size.

use std::{collections::HashSet, fmt};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor, OneofDescriptor};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::scalars;

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

/// What a JSON value stands for in the request message.
#[derive(Debug, Clone)]
pub enum Expect {
    /// Any JSON (`google.protobuf.Struct`, `Value` and kin, or an unknown field): only keys
    /// given twice are looked for.
    Any,
    Message(MessageDescriptor),
    /// An integer, which may be written as an integral number in a string.
    Integer,
    Timestamp,
    Duration,
    /// Any other scalar: nothing to look at.
    Scalar,
    List(Box<Expect>),
    /// A map field: an object whose values are this.
    Map(Box<Expect>),
}

impl Expect {
    /// A message whose JSON form is an object of its fields (not a well-known type, which
    /// has a JSON form of its own).
    pub fn is_plain_message(message: &MessageDescriptor) -> bool {
        !message.full_name().starts_with("google.protobuf.")
    }

    pub fn of_field(field: &FieldDescriptor) -> Self {
        if field.is_map() {
            let value = match field.kind() {
                Kind::Message(entry) => Self::of_kind(&entry.map_entry_value_field().kind()),
                _ => Self::Any,
            };
            return Self::Map(Box::new(value));
        }
        let item = Self::of_kind(&field.kind());
        if field.is_list() {
            Self::List(Box::new(item))
        } else {
            item
        }
    }

    fn of_kind(kind: &Kind) -> Self {
        match kind {
            Kind::Int32
            | Kind::Int64
            | Kind::Uint32
            | Kind::Uint64
            | Kind::Sint32
            | Kind::Sint64
            | Kind::Fixed32
            | Kind::Fixed64
            | Kind::Sfixed32
            | Kind::Sfixed64 => Self::Integer,
            Kind::Message(message) => match message.full_name() {
                "google.protobuf.Timestamp" => Self::Timestamp,
                "google.protobuf.Duration" => Self::Duration,
                "google.protobuf.Int32Value"
                | "google.protobuf.Int64Value"
                | "google.protobuf.UInt32Value"
                | "google.protobuf.UInt64Value" => Self::Integer,
                _ if Self::is_plain_message(message) => Self::Message(message.clone()),
                // The other well-known types have JSON forms of their own.
                _ => Self::Any,
            },
            Kind::Double
            | Kind::Float
            | Kind::Bool
            | Kind::String
            | Kind::Bytes
            | Kind::Enum(_) => Self::Scalar,
        }
    }
}

/// What the inspection found that the parse must know.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inspection {
    /// Some scalar is spelled in a way the parser does not take as written: [`respell`] it.
    pub respell: bool,
    /// The numbers of the fields the outermost object sets (when it is a message), so path
    /// and query fields can be known not to meet them.
    pub top_fields: Vec<u32>,
    /// The body holds a `null`, a timestamp or a duration: spellings the typed codec reads
    /// otherwise than the descriptors (a null `Value` as unset, a timestamp with a space for
    /// its `T`), so the descriptors parse it.
    pub needs_descriptors: bool,
}

/// A value the request cannot take as sent, named by its path in the body (`a.b[2].c`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: String,
    pub reason: String,
}

/// A walk of a body: what the inspection found, and how many values it walked.
#[derive(Debug)]
pub struct Walked {
    pub found: Inspection,
    pub values: usize,
    /// The whole first JSON value was walked. Not so when the JSON is malformed, nests past
    /// [`MAX_BODY_DEPTH`], or the meter refused: then `values` is a part of the count.
    pub finished: bool,
}

/// How many values the walk pays for at a time, ahead of walking them: the keys it keeps are
/// never more than the values paid for.
pub const METER_BLOCK: usize = 64;

/// Inspects `body` as `expect`, counting its values as it goes; `prefix` names the field the
/// whole body is (a `body: "field"` rule). `meter` is asked to pay for each next
/// [`METER_BLOCK`] values before they are walked, and stops the walk when it cannot.
/// Malformed JSON passes: the parse names the error.
pub fn inspect(
    body: &[u8],
    expect: &Expect,
    prefix: Option<&str>,
    meter: &mut dyn FnMut(usize) -> bool,
) -> Result<Walked, Refusal> {
    let mut walk = Inspect {
        found: Inspection::default(),
        refusal: None,
        entered: false,
        values: 0,
        paid: 0,
        meter,
        spare: Vec::new(),
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let walked = Node {
        walk: &mut walk,
        expect,
        depth: 0,
    }
    .deserialize(&mut deserializer);
    match (walked, walk.refusal) {
        (_, Some((steps, reason))) => {
            let mut field = prefix.unwrap_or_default().to_owned();
            for step in steps.iter().rev() {
                match step {
                    Step::Key(key) if field.is_empty() => field.push_str(key),
                    Step::Key(key) => {
                        field.push('.');
                        field.push_str(key);
                    }
                    Step::Index(index) => field.push_str(&format!("[{index}]")),
                    Step::MapKey(key) => field.push_str(&format!("[{key}]")),
                }
            }
            if field.is_empty() {
                field.push_str("body");
            }
            Err(Refusal { field, reason })
        }
        (walked, None) => Ok(Walked {
            found: walk.found,
            values: walk.values,
            finished: walked.is_ok(),
        }),
    }
}

/// Rewrites, in a parsed body, the scalars [`inspect`] found respellable.
pub fn respell(value: &mut serde_json::Value, expect: &Expect) {
    use serde_json::Value;
    match (expect, value) {
        (Expect::Message(message), Value::Object(fields)) => {
            for (key, value) in fields.iter_mut() {
                if let Some(field) = message
                    .get_field_by_json_name(key)
                    .or_else(|| message.get_field_by_name(key))
                {
                    respell(value, &Expect::of_field(&field));
                }
            }
        }
        (Expect::List(item), Value::Array(items)) => {
            items.iter_mut().for_each(|value| respell(value, item));
        }
        (Expect::Map(item), Value::Object(entries)) => {
            entries.values_mut().for_each(|value| respell(value, item));
        }
        (Expect::Integer, Value::String(text)) => {
            if let Some(plain) = scalars::integer(text) {
                *text = plain;
            }
        }
        (Expect::Timestamp, Value::String(text)) => {
            if let Ok(Some(upper)) = scalars::timestamp(text) {
                *text = upper;
            }
        }
        _ => {}
    }
}

/// A field a message object has set: under which name, and which oneof it set (not `null`).
struct Seen {
    number: u32,
    by_proto_name: bool,
    oneof: Option<OneofDescriptor>,
}

/// One step of the path to a refused value, recorded from the inside out.
enum Step {
    Key(String),
    Index(usize),
    MapKey(String),
}

struct Inspect<'m> {
    found: Inspection,
    refusal: Option<(Vec<Step>, String)>,
    /// Whether a message object has been entered yet: the first one is the outermost.
    entered: bool,
    values: usize,
    /// Values the meter has paid for.
    paid: usize,
    meter: &'m mut dyn FnMut(usize) -> bool,
    /// The fields' lists of message objects walked and done with, for the next to reuse.
    spare: Vec<Vec<Seen>>,
}

impl Inspect<'_> {
    /// Counts one more value, paying for the next block first when it is the first past
    /// what is paid for.
    fn count<E: serde::de::Error>(&mut self) -> Result<(), E> {
        if self.values == self.paid {
            if !(self.meter)(METER_BLOCK) {
                return Err(E::custom("unpaid"));
            }
            self.paid += METER_BLOCK;
        }
        self.values += 1;
        Ok(())
    }

    fn refuse<E: serde::de::Error>(&mut self, reason: String) -> E {
        self.refusal = Some((Vec::new(), reason));
        E::custom("refused")
    }

    /// Records the step through which a refusal deeper down was reached.
    fn through(&mut self, step: impl FnOnce() -> Step) {
        if let Some((steps, _)) = &mut self.refusal {
            steps.push(step());
        }
    }
}

/// One value, and whether it was `null`; `depth` is how deep it nests in the body.
struct Node<'a, 'w, 'm> {
    walk: &'w mut Inspect<'m>,
    expect: &'a Expect,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Node<'_, '_, '_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        self.walk.count()?;
        deserializer.deserialize_any(self)
    }
}

/// A key, borrowed from the body when it has no escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, value: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(value)))
            }
            fn visit_str<E>(self, value: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(value.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Visitor<'de> for Node<'_, '_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<bool, E> {
        // A JSON integer beyond 64 bits arrives as a float, and the parser would round 2^64 to
        // u64::MAX rather than refuse it.
        const RANGE: std::ops::Range<f64> =
            -9_223_372_036_854_775_808.0..18_446_744_073_709_551_616.0;
        if matches!(self.expect, Expect::Integer) && !RANGE.contains(&value) {
            return Err(self
                .walk
                .refuse("is out of range for a 64-bit integer".to_owned()));
        }
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        self.walk.found.needs_descriptors = true;
        Ok(true)
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<bool, E> {
        if matches!(self.expect, Expect::Timestamp | Expect::Duration) {
            self.walk.found.needs_descriptors = true;
        }
        match self.expect {
            Expect::Integer => {
                self.walk.found.respell |= scalars::integer(text).is_some();
            }
            Expect::Timestamp => match scalars::timestamp(text) {
                Ok(upper) => self.walk.found.respell |= upper.is_some(),
                Err(reason) => return Err(self.walk.refuse(reason)),
            },
            Expect::Duration => {
                scalars::duration(text).map_err(|reason| self.walk.refuse(reason))?;
            }
            _ => {}
        }
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<bool, A::Error> {
        let depth = self.enter()?;
        let any = Expect::Any;
        let item = match self.expect {
            Expect::List(item) => item,
            _ => &any,
        };
        let mut index = 0;
        loop {
            let node = Node {
                walk: &mut *self.walk,
                expect: item,
                depth,
            };
            match items.next_element_seed(node) {
                Ok(Some(_)) => index += 1,
                Ok(None) => return Ok(false),
                Err(err) => {
                    self.walk.through(|| Step::Index(index));
                    return Err(err);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, fields: A) -> Result<bool, A::Error> {
        self.enter::<A::Error>()?;
        match self.expect {
            Expect::Message(message) => self.message(message, fields),
            Expect::Map(value) => self.object(value, fields, true),
            _ => self.object(&Expect::Any, fields, false),
        }
    }
}

impl<'de> Node<'_, '_, '_> {
    /// The depth of what this array or object holds; too deep ends the walk unfinished.
    fn enter<E: serde::de::Error>(&self) -> Result<usize, E> {
        let depth = self.depth + 1;
        if depth > MAX_BODY_DEPTH {
            return Err(E::custom("too deep"));
        }
        Ok(depth)
    }

    /// An object that is a message: each field once, under either of its names, and one
    /// member of a oneof at most (a `null` member counts as unset, as the parser has it).
    fn message<A: MapAccess<'de>>(
        self,
        message: &MessageDescriptor,
        mut fields: A,
    ) -> Result<bool, A::Error> {
        let outermost = !std::mem::replace(&mut self.walk.entered, true);
        // A batch is a thousand messages: their lists are reused, not allocated each.
        let mut seen = self.walk.spare.pop().unwrap_or_default();
        seen.clear();
        while let Some(Key(key)) = fields.next_key::<Key<'de>>()? {
            let Some(field) = message
                .get_field_by_json_name(&key)
                .or_else(|| message.get_field_by_name(&key))
            else {
                // Unknown: the parser refuses it by name; its value is only walked.
                let unknown = Node {
                    walk: &mut *self.walk,
                    expect: &Expect::Any,
                    depth: self.depth + 1,
                };
                fields.next_value_seed(unknown)?;
                continue;
            };
            let by_proto_name = field.name() == key.as_ref();
            if let Some(first) = seen.iter().find(|seen| seen.number == field.number()) {
                let reason = if first.by_proto_name == by_proto_name {
                    "is given more than once".to_owned()
                } else {
                    format!(
                        "is given twice, as {} and {}",
                        field.name(),
                        field.json_name()
                    )
                };
                let refused = self.walk.refuse(reason);
                self.walk.through(|| Step::Key(key.into_owned()));
                return Err(refused);
            }
            seen.push(Seen {
                number: field.number(),
                by_proto_name,
                oneof: None,
            });
            let expect = Expect::of_field(&field);
            let node = Node {
                walk: &mut *self.walk,
                expect: &expect,
                depth: self.depth + 1,
            };
            let is_null = match fields.next_value_seed(node) {
                Ok(is_null) => is_null,
                Err(err) => {
                    self.walk.through(|| Step::Key(key.into_owned()));
                    return Err(err);
                }
            };

            if let Some(oneof) = field.containing_oneof()
                && !is_null
            {
                if let Some(other) = seen
                    .iter()
                    .find(|seen| seen.oneof.as_ref() == Some(&oneof))
                    .and_then(|seen| message.get_field(seen.number))
                {
                    let refused = self.walk.refuse(format!(
                        "conflicts with {}: set one of {}",
                        other.name(),
                        oneof
                            .fields()
                            .map(|f| f.name().to_owned())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    self.walk.through(|| Step::Key(key.into_owned()));
                    return Err(refused);
                }
                if let Some(this) = seen.last_mut() {
                    this.oneof = Some(oneof);
                }
            }
        }
        if outermost {
            self.walk.found.top_fields = seen.iter().map(|seen| seen.number).collect();
        }
        self.walk.spare.push(seen);
        Ok(false)
    }

    /// Any other object (a map, a `Struct`, unknown JSON): each key once.
    fn object<A: MapAccess<'de>>(
        self,
        value: &Expect,
        mut entries: A,
        map: bool,
    ) -> Result<bool, A::Error> {
        let mut keys: HashSet<std::borrow::Cow<'de, str>> = HashSet::new();
        while let Some(Key(key)) = entries.next_key::<Key<'de>>()? {
            let step = |key: std::borrow::Cow<'de, str>| {
                if map {
                    Step::MapKey(key.into_owned())
                } else {
                    Step::Key(key.into_owned())
                }
            };
            if keys.contains(&key) {
                let refused = self.walk.refuse("is given more than once".to_owned());
                self.walk.through(|| step(key));
                return Err(refused);
            }
            let node = Node {
                walk: &mut *self.walk,
                expect: value,
                depth: self.depth + 1,
            };
            if let Err(err) = entries.next_value_seed(node) {
                self.walk.through(|| step(key));
                return Err(err);
            }
            keys.insert(key);
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::{Expect, MAX_BODY_DEPTH, METER_BLOCK, ShapeRefusal, Walked, count_values, inspect};

    /// Walks `body` as any JSON with a meter that pays for `blocks` blocks at most, counting
    /// what it was asked.
    fn walk(body: &[u8], blocks: usize) -> (Walked, usize) {
        let mut asked = 0;
        let walked = inspect(body, &Expect::Any, None, &mut |values| {
            assert_eq!(values, METER_BLOCK);
            asked += 1;
            asked <= blocks
        })
        .expect("nothing to refuse in any JSON");
        (walked, asked)
    }

    #[test]
    fn the_walk_pays_for_each_block_before_walking_it() {
        let items = |n: usize| format!("[{}]", vec!["{}"; n].join(","));
        // The array and 63 objects: one block.
        let (walked, asked) = walk(items(63).as_bytes(), usize::MAX);
        assert!(walked.finished);
        assert_eq!((walked.values, asked), (64, 1));
        // One more value: a second block, paid before the 65th value is walked.
        let (walked, asked) = walk(items(64).as_bytes(), usize::MAX);
        assert_eq!((walked.values, asked), (65, 2));
        // A meter that pays for one block stops the walk at the 65th value.
        let (walked, asked) = walk(items(200).as_bytes(), 1);
        assert!(!walked.finished);
        assert_eq!((walked.values, asked), (METER_BLOCK, 2));
    }

    /// Each message object of a batch is checked on its own, though their lists are reused:
    /// a oneof set in one message does not conflict with the next, and one set twice within a
    /// later message is refused by its path.
    #[test]
    fn each_message_of_a_batch_is_checked_on_its_own() {
        let pool = prost_reflect::DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the API's descriptors");
        let send = Expect::Message(
            pool.get_message_by_name("iggy.gateway.v1.SendMessagesRequest")
                .expect("SendMessagesRequest"),
        );
        let walk = |body: &str| inspect(body.as_bytes(), &send, None, &mut |_| true);
        let fine = walk(r#"{"messages":[{"text":"a"},{"payload":"QQ=="},{"id":"x","text":"c"}]}"#)
            .expect("one body each");
        assert!(fine.finished);
        assert_eq!(fine.found.top_fields, vec![5], "messages");
        let refused =
            walk(r#"{"messages":[{"text":"a"},{"text":"b"},{"text":"c","payload":"QQ=="}]}"#)
                .expect_err("two bodies in the third");
        assert_eq!(refused.field, "messages[2].payload");
        assert!(
            refused.reason.starts_with("conflicts with text"),
            "{refused:?}"
        );
        let twice = walk(r#"{"messages":[{"id":"a"},{"id":"b","id":"c"}]}"#).expect_err("id twice");
        assert_eq!(twice.field, "messages[1].id");
    }

    #[test]
    fn the_walk_ends_unfinished_past_the_depth_limit_or_on_malformed_json() {
        let deep = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));
        assert!(walk(deep(MAX_BODY_DEPTH).as_bytes(), usize::MAX).0.finished);
        assert!(
            !walk(deep(MAX_BODY_DEPTH + 1).as_bytes(), usize::MAX)
                .0
                .finished
        );
        assert!(!walk(b"{\"a\":[1,", usize::MAX).0.finished);
    }

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

        /// The walk counts what [`count_values`] counts, so one walk can charge what two did.
        #[test]
        fn the_walk_counts_every_value(value in json_value()) {
            let text = serde_json::to_vec(&value).expect("serializes");
            let (walked, _) = walk(&text, usize::MAX);
            proptest::prop_assert!(walked.finished);
            proptest::prop_assert_eq!(Ok(walked.values), count_values(&text));
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
