//! The protos' `buf.validate` field rules in JSON Schema terms: the same annotations that
//! `build.rs` turns into the request checks become `minLength`, `maxLength`, `pattern`,
//! `format`, `minimum`, `maximum`, `minItems`, `maxItems` and `required`, so the document
//! states what the server enforces.

use prost_reflect::{
    DynamicMessage, FieldDescriptor, MessageDescriptor, OneofDescriptor, Value as Proto,
};
use serde_json::{Map, Value, json};

use super::Limits;

/// base64 as proto3 JSON's parser reads it: the standard or the URL-safe alphabet (one of
/// them throughout), padding optional, never a lone character in the last group.
pub const BASE64: &str = "^(?:(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}(?:==?)?|[A-Za-z0-9+/]{3}=?)?\
     |(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2}(?:==?)?|[A-Za-z0-9_-]{3}=?)?)$";

/// A regular expression (no anchors) for the decimal numbers from 0 to `max`, written without
/// leading zeros.
pub fn decimal_at_most(max: &str) -> String {
    let digits: Vec<u32> = max.chars().filter_map(|c| c.to_digit(10)).collect();
    let mut alternatives = Vec::new();
    if digits.len() > 1 {
        alternatives.push(format!("[0-9]{{1,{}}}", digits.len() - 1));
    }
    for (index, digit) in digits.iter().enumerate() {
        let lowest = u32::from(index == 0 && digits.len() > 1);
        if *digit > lowest {
            let prefix: String = digits[..index].iter().map(ToString::to_string).collect();
            let rest = digits.len() - index - 1;
            let tail = if rest > 0 {
                format!("[0-9]{{{rest}}}")
            } else {
                String::new()
            };
            alternatives.push(format!("{prefix}[{lowest}-{}]{tail}", digit - 1));
        }
    }
    alternatives.push(max.to_owned());
    format!("(?:{})", alternatives.join("|"))
}

/// A `google.protobuf.Duration` in proto3 JSON within its range (±315,576,000,000 s, nine
/// fractional digits at most); `negative`: may be negative.
pub fn duration_pattern(negative: bool) -> String {
    format!(
        "^{}0*(?:{}(?:\\.[0-9]{{1,9}})?|315576000000(?:\\.0{{1,9}})?)s$",
        if negative { "-?" } else { "" },
        decimal_at_most("315575999999")
    )
}

/// `buf.validate.Ignore.IGNORE_IF_ZERO_VALUE`: the rules apply only to a value that is set.
const IGNORE_IF_ZERO_VALUE: i32 = 1;

/// The field's `(buf.validate.field)` rules, when it declares any.
fn rules(field: &FieldDescriptor) -> Option<DynamicMessage> {
    let extension = field
        .parent_pool()
        .get_extension_by_name("buf.validate.field")?;
    let options = field.options();
    if !options.has_extension(&extension) {
        return None;
    }
    match options.get_extension(&extension).into_owned() {
        Proto::Message(rules) => Some(rules),
        _ => None,
    }
}

fn set<'a>(rules: &'a DynamicMessage, name: &str) -> Option<std::borrow::Cow<'a, Proto>> {
    if rules.has_field_by_name(name) {
        rules.get_field_by_name(name)
    } else {
        None
    }
}

fn number(rules: &DynamicMessage, name: &str) -> Option<u64> {
    set(rules, name).and_then(|value| match value.as_ref() {
        Proto::U32(v) => Some(u64::from(*v)),
        Proto::U64(v) => Some(*v),
        _ => None,
    })
}

fn flag(rules: &DynamicMessage, name: &str) -> bool {
    set(rules, name).and_then(|value| value.as_bool()) == Some(true)
}

/// Whether the rules apply only to a set (non-zero) value.
fn ignores_zero(rules: &DynamicMessage) -> bool {
    set(rules, "ignore").and_then(|value| value.as_enum_number()) == Some(IGNORE_IF_ZERO_VALUE)
}

/// The JSON Schema keywords of a string's or an unsigned integer's rules.
fn scalar_keywords(rules: &DynamicMessage) -> Map<String, Value> {
    let mut keywords = Map::new();
    if let Some(Proto::Message(string)) = set(rules, "string").as_deref() {
        let min = number(string, "min_len")
            // A byte is at most a character; four bytes at most one (UTF-8).
            .or_else(|| number(string, "min_bytes").map(|bytes| bytes.div_ceil(4)));
        if let Some(min) = min {
            keywords.insert("minLength".into(), json!(min));
        }
        // JSON Schema counts characters; a byte bound is also a character bound.
        if let Some(max) = number(string, "max_len").or_else(|| number(string, "max_bytes")) {
            keywords.insert("maxLength".into(), json!(max));
        }
        if let Some(Proto::String(pattern)) = set(string, "pattern").as_deref() {
            keywords.insert("pattern".into(), json!(pattern));
        }
        if flag(string, "uuid") {
            keywords.insert("format".into(), json!("uuid"));
        }
        if let Some(Proto::List(values)) = set(string, "not_in").as_deref() {
            let values: Vec<&str> = values.iter().filter_map(Proto::as_str).collect();
            keywords.insert("not".into(), json!({"enum": values}));
        }
    }
    if let Some(Proto::Message(bytes)) = set(rules, "bytes").as_deref() {
        // In base64 text: 4 characters per 3 bytes, the last group unpadded at shortest.
        if let Some(min) = number(bytes, "min_len") {
            keywords.insert("minLength".into(), json!((min * 4).div_ceil(3)));
        }
        if let Some(max) = number(bytes, "max_len") {
            keywords.insert("maxLength".into(), json!(max.div_ceil(3) * 4));
        }
    }
    if let Some(Proto::Message(duration)) = set(rules, "duration").as_deref()
        && set(duration, "gte").is_some()
    {
        // The rules the gateway uses on durations: not negative.
        keywords.insert("pattern".into(), json!(duration_pattern(false)));
    }
    for kind in ["uint32", "uint64"] {
        if let Some(Proto::Message(range)) = set(rules, kind).as_deref() {
            if let Some(min) = number(range, "gte") {
                keywords.insert("minimum".into(), json!(min));
            }
            if let Some(max) = number(range, "lte") {
                keywords.insert("maximum".into(), json!(max));
            }
        }
    }
    keywords
}

/// The running value of the setting that bounds the field (`iggy.gateway.v1.configured_limit`).
fn configured_limit(field: &FieldDescriptor, limits: Limits) -> Option<(&'static str, u32)> {
    let extension = field
        .parent_pool()
        .get_extension_by_name("iggy.gateway.v1.configured_limit")?;
    let options = field.options();
    if !options.has_extension(&extension) {
        return None;
    }
    match options.get_extension(&extension).as_enum_number()? {
        1 => Some(("BATCH_MAX_SIZE", limits.batch_max)),
        2 => Some(("POLL_MAX_COUNT", limits.poll_max)),
        _ => None,
    }
}

/// Adds the field's rules, and the configured limit that bounds it, to its schema
/// (`field_schema`'s answer).
pub fn apply(field: &FieldDescriptor, schema: &mut Value, limits: Limits) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if let Some((setting, value)) = configured_limit(field, limits) {
        let keyword = if field.is_list() {
            "maxItems"
        } else {
            "maximum"
        };
        object.insert(keyword.into(), json!(value));
        object.insert(
            "x-configured-limit".into(),
            json!({"setting": setting, "value": value}),
        );
    }
    let Some(rules) = rules(field) else {
        return;
    };
    if field.is_map() {
        if let Some(Proto::Message(map)) = set(&rules, "map").as_deref() {
            if let Some(min) = number(map, "min_pairs") {
                object.insert("minProperties".into(), json!(min));
            }
            if let Some(max) = number(map, "max_pairs") {
                object.insert("maxProperties".into(), json!(max));
            }
            if let Some(Proto::Message(keys)) = set(map, "keys").as_deref() {
                object.insert("propertyNames".into(), Value::Object(scalar_keywords(keys)));
            }
        }
        return;
    }
    if field.is_list() {
        if let Some(Proto::Message(repeated)) = set(&rules, "repeated").as_deref() {
            if let Some(min) = number(repeated, "min_items") {
                object.insert("minItems".into(), json!(min));
            }
            if let Some(max) = number(repeated, "max_items") {
                object.insert("maxItems".into(), json!(max));
            }
        }
        if flag(&rules, "required") && !object.contains_key("minItems") {
            object.insert("minItems".into(), json!(1));
        }
        return;
    }
    let keywords = scalar_keywords(&rules);
    if keywords.is_empty() {
        return;
    }
    if ignores_zero(&rules) {
        // The zero value means "not given" and is always taken.
        let zero = match object.get("type").and_then(Value::as_str) {
            Some("string") => json!(""),
            _ => json!(0),
        };
        object.insert(
            "anyOf".into(),
            json!([{"const": zero}, Value::Object(keywords)]),
        );
    } else {
        object.extend(keywords);
    }
}

/// Whether a request with none of `message`'s fields but those `elsewhere` (filled from the
/// path) passes the rules: then a REST body is optional, as the server takes no body as `{}`.
pub fn empty_is_valid(message: &MessageDescriptor, elsewhere: impl Fn(&str) -> bool) -> bool {
    message
        .fields()
        .filter(|field| !elsewhere(field.name()))
        .all(|field| zero_is_valid(&field))
        && message
            .oneofs()
            .filter(|oneof| oneof.fields().all(|field| !elsewhere(field.name())))
            .all(|oneof| !oneof_required(&oneof))
        && message_oneofs(message).is_empty()
}

/// Whether the field may be left out (proto3 JSON reads it as its zero value).
pub fn zero_is_valid(field: &FieldDescriptor) -> bool {
    let Some(rules) = rules(field) else {
        return true;
    };
    if flag(&rules, "required") {
        return false;
    }
    if field.is_list() {
        return !matches!(set(&rules, "repeated").as_deref(),
            Some(Proto::Message(repeated)) if number(repeated, "min_items").unwrap_or(0) > 0);
    }
    // A member of a oneof, an `optional` field or a message left out is unset: its rules do
    // not apply.
    if ignores_zero(&rules)
        || field.containing_oneof().is_some()
        || matches!(field.kind(), prost_reflect::Kind::Message(_))
    {
        return true;
    }
    zero_passes(&scalar_keywords(&rules))
}

/// `(buf.validate.oneof).required` on a oneof.
pub fn oneof_required(oneof: &OneofDescriptor) -> bool {
    let Some(extension) = oneof
        .parent_message()
        .parent_pool()
        .get_extension_by_name("buf.validate.oneof")
    else {
        return false;
    };
    let options = oneof.options();
    options.has_extension(&extension)
        && matches!(options.get_extension(&extension).as_ref(),
            Proto::Message(rules) if flag(rules, "required"))
}

/// The message's `(buf.validate.message).oneof` rules as JSON Schema: at most one of the
/// fields is set (non-zero), and with `required` one is.
pub fn message_oneofs(message: &MessageDescriptor) -> Vec<Value> {
    let Some(extension) = message
        .parent_pool()
        .get_extension_by_name("buf.validate.message")
    else {
        return Vec::new();
    };
    let options = message.options();
    if !options.has_extension(&extension) {
        return Vec::new();
    }
    let Proto::Message(rules) = options.get_extension(&extension).into_owned() else {
        return Vec::new();
    };
    let Some(Proto::List(groups)) = set(&rules, "oneof").as_deref().cloned() else {
        return Vec::new();
    };
    groups
        .iter()
        .filter_map(|group| match group {
            Proto::Message(group) => Some(group),
            _ => None,
        })
        .map(|group| {
            let names: Vec<String> = match set(group, "fields").as_deref() {
                Some(Proto::List(names)) => names
                    .iter()
                    .filter_map(|name| name.as_str().map(str::to_owned))
                    .collect(),
                _ => Vec::new(),
            };
            // Set: given with a value other than zero or `null` (proto3 JSON's "unset").
            let given = |name: &String| {
                let zero =
                    message
                        .get_field_by_name(name)
                        .map_or(json!(0), |field| match field.kind() {
                            prost_reflect::Kind::String | prost_reflect::Kind::Bytes => json!(""),
                            _ => json!(0),
                        });
                json!({"required": [name], "properties": {name: {"not": {"enum": [zero, null]}}}})
            };
            let branches: Vec<Value> = names.iter().map(given).collect();
            if flag(group, "required") {
                json!({"oneOf": branches})
            } else {
                json!({"not": {"anyOf": pairs(&branches)}})
            }
        })
        .collect()
}

/// Every pair of the schemas, as one schema each (both hold).
fn pairs(branches: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for (index, first) in branches.iter().enumerate() {
        for second in &branches[index + 1..] {
            out.push(json!({"allOf": [first, second]}));
        }
    }
    out
}

/// Whether the zero value ("" or 0) meets the keywords.
fn zero_passes(keywords: &Map<String, Value>) -> bool {
    let positive = |name: &str| keywords.get(name).and_then(Value::as_u64).unwrap_or(0) > 0;
    if positive("minLength") || positive("minimum") || keywords.contains_key("format") {
        return false;
    }
    match keywords.get("pattern").and_then(Value::as_str) {
        Some(pattern) => regex::Regex::new(pattern).is_ok_and(|regex| regex.is_match("")),
        None => true,
    }
}
