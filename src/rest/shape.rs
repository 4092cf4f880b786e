//! A JSON body's shape, walked before it is parsed into a message: how many values it holds
//! and how deeply they nest, and what the parser would let pass silently (a key given twice,
//! or one field under both its names: the last would win; two members of one oneof) or needs
//! help with (scalars spelled as `scalars` describes). Each JSON value becomes a node of a
//! message, so a body of many tiny values (`[{},{},…]`) costs many times its size: the walk
//! has the call's memory budget pay for each block of values before it walks them, so what it
//! keeps (the keys of an object) is paid for first. [`count_values`] measures alone,
//! allocating nothing, for the answers that name a body's size. The walk steps through the
//! body with a reader of its own (`reader.rs`), which takes and refuses what serde_json does
//! but passes over the strings it does not look at (payloads) without decoding them.

mod reader;

use std::{borrow::Cow, collections::HashSet, fmt};

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor, OneofDescriptor};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use self::reader::Reader;
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
        json: Reader::new(body),
        found: Inspection::default(),
        refusal: None,
        entered: false,
        values: 0,
        paid: 0,
        meter,
        spare: Vec::new(),
    };
    let walked = walk.value(expect, 0);
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

/// Why a walk ended before the end of the body's first value.
enum Stop {
    /// Not JSON as far as the reader goes, or nested past [`MAX_BODY_DEPTH`].
    Malformed,
    /// The meter would not pay for the next block.
    Unpaid,
    /// Something to refuse, held in [`Inspect::refusal`].
    Refused,
}

struct Inspect<'a, 'm> {
    json: Reader<'a>,
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

impl<'a> Inspect<'a, '_> {
    /// Counts one more value, paying for the next block first when it is the first past
    /// what is paid for.
    fn count(&mut self) -> Result<(), Stop> {
        if self.values == self.paid {
            if !(self.meter)(METER_BLOCK) {
                return Err(Stop::Unpaid);
            }
            self.paid += METER_BLOCK;
        }
        self.values += 1;
        Ok(())
    }

    fn refuse(&mut self, reason: String) -> Stop {
        self.refusal = Some((Vec::new(), reason));
        Stop::Refused
    }

    /// Records the step through which a refusal deeper down was reached.
    fn through(&mut self, step: impl FnOnce() -> Step) {
        if let Some((steps, _)) = &mut self.refusal {
            steps.push(step());
        }
    }

    /// One value, `depth` deep in the body, as `expect`; whether it was `null`.
    fn value(&mut self, expect: &Expect, depth: usize) -> Result<bool, Stop> {
        self.count()?;
        let first = self.json.peek().ok_or(Stop::Malformed)?;
        match first {
            b'{' | b'[' => {
                self.json.bump();
                // The depth of what this array or object holds; too deep ends the walk.
                let inner = depth + 1;
                if inner > MAX_BODY_DEPTH {
                    return Err(Stop::Malformed);
                }
                match (first, expect) {
                    (b'[', Expect::List(item)) => self.array(item, inner),
                    (b'[', _) => self.array(&Expect::Any, inner),
                    (_, Expect::Message(message)) => self.message(message, inner),
                    (_, Expect::Map(value)) => self.object(value, inner, true),
                    _ => self.object(&Expect::Any, inner, false),
                }?;
                Ok(false)
            }
            b'"' => {
                self.json.bump();
                self.string(expect)?;
                Ok(false)
            }
            b'-' | b'0'..=b'9' => {
                let text = self.json.number().ok_or(Stop::Malformed)?;
                match expect {
                    Expect::Integer => self.integer(text)?,
                    Expect::Any => self.exact_as_double(text)?,
                    _ => {}
                }
                Ok(false)
            }
            b't' => self
                .json
                .literal(b"true")
                .map(|()| false)
                .ok_or(Stop::Malformed),
            b'f' => self
                .json
                .literal(b"false")
                .map(|()| false)
                .ok_or(Stop::Malformed),
            b'n' => {
                self.json.literal(b"null").ok_or(Stop::Malformed)?;
                self.found.needs_descriptors = true;
                Ok(true)
            }
            _ => Err(Stop::Malformed),
        }
    }

    /// An object member's value, after the colon: a key is looked at (given twice?) before
    /// the colon is read, as serde_json hands keys over.
    fn member(&mut self, expect: &Expect, depth: usize) -> Result<bool, Stop> {
        self.json.colon().ok_or(Stop::Malformed)?;
        self.value(expect, depth)
    }

    /// A string whose opening quote is read: what is checked is decoded, the rest (payloads'
    /// base64 among it) only passed over.
    fn string(&mut self, expect: &Expect) -> Result<(), Stop> {
        if !matches!(
            expect,
            Expect::Integer | Expect::Timestamp | Expect::Duration
        ) {
            return self.json.skip_string().ok_or(Stop::Malformed);
        }
        let text = self.json.string().ok_or(Stop::Malformed)?;
        match expect {
            Expect::Integer => {
                self.found.respell |= scalars::integer(&text).is_some();
            }
            Expect::Timestamp => {
                self.found.needs_descriptors = true;
                match scalars::timestamp(&text) {
                    Ok(upper) => self.found.respell |= upper.is_some(),
                    Err(reason) => return Err(self.refuse(reason)),
                }
            }
            _ => {
                self.found.needs_descriptors = true;
                scalars::duration(&text).map_err(|reason| self.refuse(reason))?;
            }
        }
        Ok(())
    }

    /// A number (in JSON's grammar and a float's range) where an integer is expected. A JSON
    /// integer beyond 64 bits is read as a float, and the parser would round 2^64 to u64::MAX
    /// rather than refuse it.
    /// A number in any JSON (`google.protobuf.Value` and kin) is held as a double: an integer
    /// written out that a double cannot hold exactly would be stored changed, so it is refused.
    /// (A fraction or an exponent asks for a double as written.)
    fn exact_as_double(&mut self, text: &str) -> Result<(), Stop> {
        // Every integer of up to 15 digits is exact; only longer ones are checked.
        let digits = text.strip_prefix('-').unwrap_or(text);
        if digits.len() <= 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(());
        }
        let exact = text
            .parse::<f64>()
            .is_ok_and(|value| value.is_finite() && format!("{value:.0}") == text);
        if exact {
            return Ok(());
        }
        // Digits only (and a sign), so any cut is on a character boundary.
        let shown = match text.get(..40) {
            Some(head) if text.len() > 40 => format!("{head}… ({} digits)", digits.len()),
            _ => text.to_owned(),
        };
        Err(self.refuse(format!(
            "is the integer {shown}, which a JSON value holds as a double and cannot keep \
             exactly (integers beyond 2^53 = 9007199254740992 may not be); send it as a string"
        )))
    }

    fn integer(&mut self, text: &str) -> Result<(), Stop> {
        const RANGE: std::ops::Range<f64> =
            -9_223_372_036_854_775_808.0..18_446_744_073_709_551_616.0;
        if text.parse::<u64>().is_ok() || text.parse::<i64>().is_ok() {
            return Ok(());
        }
        match text.parse::<f64>() {
            Ok(value) if !RANGE.contains(&value) => {
                Err(self.refuse("is out of range for a 64-bit integer".to_owned()))
            }
            _ => Ok(()),
        }
    }

    /// The items of an array just opened, each as `item`.
    fn array(&mut self, item: &Expect, depth: usize) -> Result<(), Stop> {
        let mut index = 0;
        while self.json.more(b']', index == 0).ok_or(Stop::Malformed)? {
            if let Err(stop) = self.value(item, depth) {
                self.through(|| Step::Index(index));
                return Err(stop);
            }
            index += 1;
        }
        Ok(())
    }

    /// An object just opened that is a message: each field once, under either of its names,
    /// and one member of a oneof at most (a `null` member counts as unset, as the parser has
    /// it).
    fn message(&mut self, message: &MessageDescriptor, depth: usize) -> Result<(), Stop> {
        let outermost = !std::mem::replace(&mut self.entered, true);
        // A batch is a thousand messages: their lists are reused, not allocated each.
        let mut seen = self.spare.pop().unwrap_or_default();
        seen.clear();
        let mut first = true;
        while self.json.more(b'}', first).ok_or(Stop::Malformed)? {
            first = false;
            let key = self.json.key().ok_or(Stop::Malformed)?;
            let Some(field) = message
                .get_field_by_json_name(&key)
                .or_else(|| message.get_field_by_name(&key))
            else {
                // Unknown: the parser refuses it by name; its value is only walked.
                self.member(&Expect::Any, depth)?;
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
                let refused = self.refuse(reason);
                self.through(|| Step::Key(key.into_owned()));
                return Err(refused);
            }
            seen.push(Seen {
                number: field.number(),
                by_proto_name,
                oneof: None,
            });
            let is_null = match self.member(&Expect::of_field(&field), depth) {
                Ok(is_null) => is_null,
                Err(stop) => {
                    self.through(|| Step::Key(key.into_owned()));
                    return Err(stop);
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
                    let refused = self.refuse(format!(
                        "conflicts with {}: set one of {}",
                        other.name(),
                        oneof
                            .fields()
                            .map(|f| f.name().to_owned())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                    self.through(|| Step::Key(key.into_owned()));
                    return Err(refused);
                }
                if let Some(this) = seen.last_mut() {
                    this.oneof = Some(oneof);
                }
            }
        }
        if outermost {
            self.found.top_fields = seen.iter().map(|seen| seen.number).collect();
        }
        self.spare.push(seen);
        Ok(())
    }

    /// Any other object just opened (a map, a `Struct`, unknown JSON): each key once.
    fn object(&mut self, value: &Expect, depth: usize, map: bool) -> Result<(), Stop> {
        let mut keys: HashSet<Cow<'a, str>> = HashSet::new();
        while self
            .json
            .more(b'}', keys.is_empty())
            .ok_or(Stop::Malformed)?
        {
            let key = self.json.key().ok_or(Stop::Malformed)?;
            let step = |key: Cow<'a, str>| {
                if map {
                    Step::MapKey(key.into_owned())
                } else {
                    Step::Key(key.into_owned())
                }
            };
            if keys.contains(&key) {
                let refused = self.refuse("is given more than once".to_owned());
                self.through(|| step(key));
                return Err(refused);
            }
            if let Err(stop) = self.member(value, depth) {
                self.through(|| step(key));
                return Err(stop);
            }
            keys.insert(key);
        }
        Ok(())
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

    /// The API's request message `name` (in `iggy.gateway.v1`), as a body is expected.
    fn message(name: &str) -> Expect {
        let pool = prost_reflect::DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the API's descriptors");
        Expect::Message(
            pool.get_message_by_name(&format!("iggy.gateway.v1.{name}"))
                .expect("a request message of the API"),
        )
    }

    /// Each message object of a batch is checked on its own, though their lists are reused:
    /// a oneof set in one message does not conflict with the next, and one set twice within a
    /// later message is refused by its path.
    #[test]
    fn each_message_of_a_batch_is_checked_on_its_own() {
        let send = message("SendMessagesRequest");
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

    /// Where the walk stops on broken JSON is where serde_json stops: a trailing comma before
    /// the item it promises is counted, a key given twice before its colon is read.
    #[test]
    fn the_walk_stops_where_serde_json_does() {
        for (body, values) in [
            (&b"[0,]"[..], 2),
            (b"[0,", 2),
            (b"[0 1]", 2),
            (b"{\"a\":", 2),
        ] {
            let (walked, _) = walk(body, usize::MAX);
            assert!(!walked.finished, "{body:?}");
            assert_eq!(walked.values, values, "{body:?}");
        }
        let twice = inspect(br#"{"a":1,"a"}"#, &Expect::Any, None, &mut |_| true)
            .expect_err("a twice, refused before its missing value");
        assert_eq!(
            (twice.field.as_str(), twice.reason.as_str()),
            ("a", "is given more than once")
        );
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

        /// The walk reads JSON however it is spelled (whitespace anywhere, any character
        /// escaped) as serde_json reads it.
        #[test]
        fn the_walk_takes_json_however_it_is_spelled(value in json_value(), seed in proptest::num::u64::ANY) {
            let text = spelled(&value, seed);
            let read: serde_json::Value = serde_json::from_str(&text).expect("spelled as JSON");
            proptest::prop_assert_eq!(&read, &value, "{}", text);
            let (walked, _) = walk(text.as_bytes(), usize::MAX);
            proptest::prop_assert!(walked.finished, "{}", text);
            proptest::prop_assert_eq!(Ok(walked.values), count_values(text.as_bytes()));
        }

        /// Of JSON broken anywhere, the walk takes whole what serde_json takes, so nothing it
        /// looks for hides past a point where it alone would stop, and stops where serde_json
        /// would, so a body is never charged for what it can never become.
        #[test]
        fn the_walk_never_stops_short_of_what_serde_json_takes(
            value in json_value(),
            seed in proptest::num::u64::ANY,
            at in proptest::num::usize::ANY,
            byte in proptest::num::u8::ANY,
            cut in proptest::bool::ANY,
        ) {
            let mut text = spelled(&value, seed).into_bytes();
            let at = at % (text.len() + 1);
            if cut && at < text.len() {
                text.remove(at);
            } else {
                text.insert(at, byte);
            }
            // A change may make two keys one: refused, which is a finding, not a stop.
            let Ok(walked) = inspect(&text, &Expect::Any, None, &mut |_| true) else {
                return Ok(());
            };
            let counted = count_values(&text);
            proptest::prop_assert_eq!(walked.finished, counted.is_ok(), "{:?}", String::from_utf8_lossy(&text));
            if let Ok(values) = counted {
                proptest::prop_assert_eq!(walked.values, values);
            }
        }
    }

    /// `value` written as JSON with whitespace between its tokens and some characters of its
    /// strings escaped, each chosen by a generator seeded with `seed`.
    fn spelled(value: &serde_json::Value, seed: u64) -> String {
        struct Choices(u64);
        impl Choices {
            fn next(&mut self, n: u64) -> u64 {
                // xorshift64*
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
            }
            fn space(&mut self, out: &mut String) {
                for _ in 0..self.next(4).saturating_sub(1) {
                    out.push([' ', '\n', '\t', '\r'][self.next(4) as usize]);
                }
            }
            fn string(&mut self, text: &str, out: &mut String) {
                use std::fmt::Write;
                out.push('"');
                for c in text.chars() {
                    let short = match c {
                        '"' => Some('"'),
                        '\\' => Some('\\'),
                        '/' => Some('/'),
                        '\u{8}' => Some('b'),
                        '\u{c}' => Some('f'),
                        '\n' => Some('n'),
                        '\r' => Some('r'),
                        '\t' => Some('t'),
                        _ => None,
                    };
                    let must = c < ' ' || c == '"' || c == '\\';
                    match (must || self.next(3) == 0, short, self.next(2)) {
                        (false, _, _) => out.push(c),
                        (true, Some(short), 0) => {
                            out.push('\\');
                            out.push(short);
                        }
                        (true, _, _) => {
                            let mut units = [0; 2];
                            for unit in c.encode_utf16(&mut units) {
                                let _ = write!(out, "\\u{unit:04x}");
                            }
                        }
                    }
                }
                out.push('"');
            }
            fn value(&mut self, value: &serde_json::Value, out: &mut String) {
                use serde_json::Value;
                self.space(out);
                match value {
                    Value::String(text) => self.string(text, out),
                    Value::Array(items) => {
                        out.push('[');
                        for (i, item) in items.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            self.value(item, out);
                        }
                        self.space(out);
                        out.push(']');
                    }
                    Value::Object(fields) => {
                        out.push('{');
                        for (i, (key, item)) in fields.iter().enumerate() {
                            if i > 0 {
                                out.push(',');
                            }
                            self.space(out);
                            self.string(key, out);
                            self.space(out);
                            out.push(':');
                            self.value(item, out);
                        }
                        self.space(out);
                        out.push('}');
                    }
                    scalar => out.push_str(&scalar.to_string()),
                }
                self.space(out);
            }
        }
        let mut out = String::new();
        Choices(seed | 1).value(value, &mut out);
        out
    }

    /// Keys are read with their escapes undone, so a field is known under any spelling of
    /// its name, and an integer out of range is refused however it is written.
    #[test]
    fn escaped_keys_and_long_numbers_are_read_as_the_parser_reads_them() {
        let send = message("SendMessagesRequest");
        let walk = |body: &str| inspect(body.as_bytes(), &send, None, &mut |_| true);
        let refused = walk(r#"{"messages":[{"t\u0065xt":"a","p\u0061yload":"QQ=="}]}"#)
            .expect_err("two bodies, their names escaped");
        assert_eq!(refused.field, "messages[0].payload");
        let twice = walk(r#"{"stream":"a","\u0073tream":"b"}"#).expect_err("stream twice");
        assert_eq!(twice.field, "stream");

        let consumer = message("StoreConsumerOffsetRequest");
        let offset = |number: &str| {
            let body = format!(r#"{{"offset":{number}}}"#);
            inspect(body.as_bytes(), &consumer, None, &mut |_| true).map(|walked| walked.finished)
        };
        for fits in [
            "18446744073709551615",
            "-9223372036854775808",
            "-9223372036854775809",
            "1.5",
            "1e3",
        ] {
            assert_eq!(offset(fits), Ok(true), "{fits}");
        }
        for beyond in ["18446744073709551616", "1e20", "-1e19"] {
            let refused = offset(beyond).expect_err(beyond);
            assert_eq!(
                (refused.field.as_str(), refused.reason.as_str()),
                ("offset", "is out of range for a 64-bit integer")
            );
        }
        // Beyond any float: not JSON serde_json takes, so the parse names it.
        assert_eq!(offset("1e400"), Ok(false));
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
