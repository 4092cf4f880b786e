//! The protos' `buf.validate` field rules in JSON Schema terms: the same annotations that
//! `build.rs` turns into the request checks become `minLength`, `maxLength`, `pattern`,
//! `format`, `minimum`, `maximum`, `minItems`, `maxItems` and `required`, so the document
//! states what the server enforces.

use prost_reflect::{DynamicMessage, FieldDescriptor, MessageDescriptor, Value as Proto};
use serde_json::{Map, Value, json};

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

/// `required: true` on the field.
pub fn is_required(field: &FieldDescriptor) -> bool {
    rules(field).is_some_and(|rules| flag(&rules, "required"))
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

/// Adds the field's rules to its schema (`field_schema`'s answer).
pub fn apply(field: &FieldDescriptor, schema: &mut Value) {
    let Some(rules) = rules(field) else {
        return;
    };
    let Some(object) = schema.as_object_mut() else {
        return;
    };
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
        .all(|field| {
            let Some(rules) = rules(&field) else {
                return true;
            };
            if flag(&rules, "required") {
                return false;
            }
            if field.is_list() {
                return !matches!(set(&rules, "repeated").as_deref(),
                    Some(Proto::Message(repeated)) if number(repeated, "min_items").unwrap_or(0) > 0);
            }
            if ignores_zero(&rules) {
                return true;
            }
            zero_passes(&scalar_keywords(&rules))
        })
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
