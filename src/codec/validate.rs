//! The request rules declared in the protos (`buf.validate` field options), checked on every
//! decoded message. `build.rs` turns each message's annotations into an `impl Validate` that
//! calls the checks below with the declared bounds, so the rules are read once, at build time,
//! and cost a few comparisons per field on the hot path (no reflection, no CEL).

use std::{fmt, sync::OnceLock};

use regex::Regex;
use tonic::Status;

use crate::answer::invalid_field;

/// A message whose fields carry rules; generated for every message of the API (most check
/// nothing). The decoder calls it, so gRPC, gRPC-Web, Connect and REST are checked alike.
pub trait Validate {
    /// Checks every rule; `at` is the path of this message in the request ([`At::Root`] at
    /// the top), so a refusal names the field as the client wrote it (`messages[2].id`).
    fn validate_at(&self, at: &At<'_>) -> Result<(), Status>;

    /// Checks the message as a whole request.
    fn validate(&self) -> Result<(), Status> {
        self.validate_at(&At::Root)
    }
}

/// Where a message sits in the request, written out only when a refusal names it: a batch's
/// thousand messages are checked without building a thousand paths.
#[derive(Debug, Clone, Copy)]
pub enum At<'a> {
    Root,
    /// Field `name` of the message at the first.
    Field(&'a At<'a>, &'static str),
    /// Item `index` of repeated field `name`.
    Item(&'a At<'a>, &'static str, usize),
    /// The value under `key` of map field `name`.
    Entry(&'a At<'a>, &'static str, &'a str),
}

impl fmt::Display for At<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            At::Root => Ok(()),
            At::Field(at, name) => {
                if !matches!(at, At::Root) {
                    write!(f, "{at}.")?;
                }
                f.write_str(name)
            }
            At::Item(at, name, index) => write!(f, "{}[{index}]", At::Field(at, name)),
            At::Entry(at, name, key) => write!(f, "{}[{key}]", At::Field(at, name)),
        }
    }
}

/// Checks every entry of a map and refuses with the failure of the least key that fails, so
/// a request is refused alike whatever order its map holds the entries in (a `HashMap`'s
/// differs from one decode to the next, and from REST's to gRPC's). A map that passes costs
/// no more than checking each entry.
pub fn entries<'m, K: Ord + 'm, V: 'm>(
    map: impl IntoIterator<Item = (&'m K, &'m V)>,
    check: impl Fn(&'m K, &'m V) -> Result<(), Status>,
) -> Result<(), Status> {
    let mut first: Option<(&K, Status)> = None;
    for (key, value) in map {
        if let Err(status) = check(key, value)
            && first.as_ref().is_none_or(|(least, _)| key < *least)
        {
            first = Some((key, status));
        }
    }
    first.map_or(Ok(()), |(_, status)| Err(status))
}

/// The path of field `name` of the message at `at`.
fn field(at: &At<'_>, name: &'static str) -> String {
    At::Field(at, name).to_string()
}

/// A `pattern` rule: RE2 syntax in the protos, which the `regex` crate reads alike for the
/// patterns we use; compiled on first use (build.rs has compiled it once already).
pub struct Pattern {
    pub source: &'static str,
    compiled: OnceLock<Option<Regex>>,
}

impl Pattern {
    pub const fn new(source: &'static str) -> Self {
        Self {
            source,
            compiled: OnceLock::new(),
        }
    }

    fn is_match(&self, value: &str) -> Option<bool> {
        self.compiled
            .get_or_init(|| Regex::new(self.source).ok())
            .as_ref()
            .map(|regex| regex.is_match(value))
    }
}

/// `buf.validate.StringRules` as far as the API uses them.
pub struct Text {
    /// In characters (Unicode scalar values), as protovalidate counts them.
    pub min_len: Option<u64>,
    pub max_len: Option<u64>,
    pub min_bytes: Option<u64>,
    pub max_bytes: Option<u64>,
    pub pattern: Option<&'static Pattern>,
    pub not_in: &'static [&'static str],
    /// The hyphenated text form of a UUID, any case.
    pub uuid: bool,
}

pub fn text(at: &At<'_>, name: &'static str, value: &str, rule: &Text) -> Result<(), Status> {
    text_in(|| field(at, name), value, rule)
}

/// A map's key, named `name[key]`.
pub fn key(at: &At<'_>, name: &'static str, value: &str, rule: &Text) -> Result<(), Status> {
    text_in(|| At::Entry(at, name, value).to_string(), value, rule)
}

fn text_in(path: impl Fn() -> String, value: &str, rule: &Text) -> Result<(), Status> {
    let refuse = |reason: String| Err(invalid_field(path(), reason));
    let bytes = value.len() as u64;
    if bytes == 0 && (rule.min_len.unwrap_or(0) > 0 || rule.min_bytes.unwrap_or(0) > 0) {
        return refuse("must not be empty".into());
    }
    if let Some(max) = rule.max_bytes
        && bytes > max
    {
        return refuse(format!("must be at most {max} bytes, got {bytes}"));
    }
    if let Some(min) = rule.min_bytes
        && bytes < min
    {
        return refuse(format!("must be at least {min} bytes, got {bytes}"));
    }
    if rule.min_len.is_some() || rule.max_len.is_some() {
        let chars = value.chars().count() as u64;
        if let Some(min) = rule.min_len
            && chars < min
        {
            return refuse(format!("must be at least {min} characters, got {chars}"));
        }
        if let Some(max) = rule.max_len
            && chars > max
        {
            return refuse(format!("must be at most {max} characters, got {chars}"));
        }
    }
    if rule.not_in.contains(&value) {
        return refuse(format!("must not be {value:?}"));
    }
    if rule.uuid && !is_uuid(value) {
        return refuse("must be a UUID (8-4-4-4-12 hex digits)".into());
    }
    if let Some(pattern) = rule.pattern {
        match pattern.is_match(value) {
            Some(true) => {}
            Some(false) => return refuse(format!("must match the pattern {}", pattern.source)),
            None => {
                return Err(Status::internal(format!(
                    "the pattern of {} does not compile",
                    path()
                )));
            }
        }
    }
    Ok(())
}

fn is_uuid(value: &str) -> bool {
    value.len() == 36
        && value.bytes().enumerate().all(|(index, byte)| match index {
            8 | 13 | 18 | 23 => byte == b'-',
            _ => byte.is_ascii_hexdigit(),
        })
}

/// `buf.validate.UInt32Rules` and `UInt64Rules`: `gte` and `lte`.
pub struct Range {
    pub gte: Option<u64>,
    pub lte: Option<u64>,
}

pub fn unsigned(at: &At<'_>, name: &'static str, value: u64, rule: &Range) -> Result<(), Status> {
    let inside = rule.gte.is_none_or(|min| value >= min) && rule.lte.is_none_or(|max| value <= max);
    if inside {
        return Ok(());
    }
    let reason = match (rule.gte, rule.lte) {
        (Some(min), Some(max)) => format!("must be between {min} and {max}, got {value}"),
        (Some(min), None) => format!("must be at least {min}, got {value}"),
        (None, Some(max)) => format!("must be at most {max}, got {value}"),
        (None, None) => return Ok(()),
    };
    Err(invalid_field(field(at, name), reason))
}

/// `buf.validate.BytesRules`: `min_len` and `max_len`, in bytes.
pub fn bytes(
    at: &At<'_>,
    name: &'static str,
    len: usize,
    min: Option<u64>,
    max: Option<u64>,
) -> Result<(), Status> {
    let len = len as u64;
    let reason = if len == 0 && min.unwrap_or(0) > 0 {
        "must not be empty".to_owned()
    } else if let Some(min) = min.filter(|min| len < *min) {
        format!("must be at least {min} bytes, got {len}")
    } else if let Some(max) = max.filter(|max| len > *max) {
        format!("must be at most {max} bytes, got {len}")
    } else {
        return Ok(());
    };
    Err(invalid_field(field(at, name), reason))
}

/// `buf.validate.MapRules`: `min_pairs` and `max_pairs`.
pub fn pairs(
    at: &At<'_>,
    name: &'static str,
    len: usize,
    min: Option<u64>,
    max: Option<u64>,
) -> Result<(), Status> {
    let len = len as u64;
    if let Some(min) = min.filter(|min| len < *min) {
        return Err(invalid_field(
            field(at, name),
            format!("must hold at least {min} entries, got {len}"),
        ));
    }
    if let Some(max) = max.filter(|max| len > *max) {
        return Err(invalid_field(
            field(at, name),
            format!("must hold at most {max} entries, got {len}"),
        ));
    }
    Ok(())
}

/// `(buf.validate.oneof).required`: one member of oneof `name` must be set.
pub fn one_of(at: &At<'_>, name: &'static str, present: bool, members: &str) -> Result<(), Status> {
    if present {
        Ok(())
    } else {
        Err(invalid_field(
            field(at, name),
            format!("is required: set one of {members}"),
        ))
    }
}

/// `(buf.validate.message).oneof`: at most one of `fields` is set (non-zero), and with
/// `required` exactly one.
pub fn message_oneof(
    at: &At<'_>,
    fields: &[&'static str],
    set: &[bool],
    required: bool,
) -> Result<(), Status> {
    let given: Vec<&'static str> = fields
        .iter()
        .zip(set)
        .filter(|(_, set)| **set)
        .map(|(name, _)| *name)
        .collect();
    match given.as_slice() {
        [] if required => Err(invalid_field(
            field(at, fields.first().copied().unwrap_or_default()),
            format!("is required: set one of {}", fields.join(", ")),
        )),
        [_, second, ..] => Err(invalid_field(
            field(at, second),
            format!(
                "conflicts with {}: set one of {}",
                given[0],
                fields.join(", ")
            ),
        )),
        _ => Ok(()),
    }
}

/// `buf.validate.DurationRules.gte`: a duration at least `seconds` and `nanos`.
pub fn duration_at_least(
    at: &At<'_>,
    name: &'static str,
    value: &pbjson_types::Duration,
    seconds: i64,
    nanos: i32,
) -> Result<(), Status> {
    if (value.seconds, value.nanos) >= (seconds, nanos) {
        return Ok(());
    }
    let reason = if (seconds, nanos) == (0, 0) {
        "must not be negative".to_owned()
    } else {
        format!("must be at least {seconds}.{nanos:09}s")
    };
    Err(invalid_field(field(at, name), reason))
}

/// `required`: a message or an `optional` scalar must be set.
pub fn required(at: &At<'_>, name: &'static str, present: bool) -> Result<(), Status> {
    if present {
        Ok(())
    } else {
        Err(invalid_field(field(at, name), "is required"))
    }
}

/// `buf.validate.RepeatedRules`: `min_items` and `max_items`.
pub fn items(
    at: &At<'_>,
    name: &'static str,
    len: usize,
    min: Option<u64>,
    max: Option<u64>,
) -> Result<(), Status> {
    let len = len as u64;
    if let Some(min) = min
        && len < min
    {
        return Err(invalid_field(
            field(at, name),
            format!("must hold at least {min} item(s), got {len}"),
        ));
    }
    if let Some(max) = max
        && len > max
    {
        return Err(invalid_field(
            field(at, name),
            format!("must hold at most {max} items, got {len}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
