//! The keys file (`API_KEYS_FILE`), TOML or (by its extension, `.yaml` / `.yml`) YAML:
//!
//! ```toml
//! [[keys]]
//! name = "orders-producer"            # 1-64 of [A-Za-z0-9._-], unique; labels metrics and logs
//! sha256 = "9f86d08…"                 # the key's SHA-256, hex (`iggy-gateway --hash-key`)
//! scopes = ["write:orders/*", "read:orders/*"]
//! expires_at = "2027-01-01T00:00:00Z" # optional, RFC 3339
//! consumers = ["billing", "billing-replay"] # optional: the consumers it may use (else any)
//! [keys.quota]                        # optional; each limit optional
//! produce_requests_per_second = 100
//! produce_bytes_per_second = 1048576
//! consume_requests_per_second = 100
//! consume_bytes_per_second = 8388608
//! subscriptions = 20                  # live subscriptions at once
//! ```
//!
//! The key itself is never in the file. Every rule is checked before anything is used: a file
//! that breaks one is refused whole, naming the entry and the field.

use std::{collections::HashSet, num::NonZeroU32, str::FromStr, time::SystemTime};

use serde::Deserialize;

use super::{Grant, QuotaSettings};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    keys: Vec<RawEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: String,
    sha256: String,
    #[serde(default)]
    scopes: Vec<String>,
    expires_at: Option<String>,
    consumers: Option<Vec<String>>,
    quota: Option<RawQuota>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    produce_requests_per_second: Option<u32>,
    produce_bytes_per_second: Option<u64>,
    consume_requests_per_second: Option<u32>,
    consume_bytes_per_second: Option<u64>,
    subscriptions: Option<u32>,
}

/// One key of the file, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyEntry {
    pub name: String,
    pub digest: [u8; 32],
    pub grants: Vec<Grant>,
    pub expires_at: Option<SystemTime>,
    /// The consumers (names or ids, as written; ids without leading zeros) it may poll,
    /// subscribe and commit as; `None`: any.
    pub consumers: Option<Vec<String>>,
    pub quota: Option<QuotaSettings>,
}

/// Names reserved for identities that do not come from the file.
const RESERVED: [&str; 2] = [super::ANONYMOUS, super::STATIC_KEY];

/// Parses and checks a keys file; `yaml` picks YAML over TOML.
pub fn parse_key_file(text: &str, yaml: bool) -> Result<Vec<KeyEntry>, String> {
    let file: File = if yaml {
        serde_norway::from_str(text).map_err(|err| err.to_string())?
    } else {
        let mut value: toml::Value = toml::from_str(text).map_err(|err| err.to_string())?;
        // A bare TOML date-time (`expires_at = 2027-01-01T00:00:00Z`) reads like a quoted one.
        stringify_datetimes(&mut value);
        value
            .try_into()
            .map_err(|err: toml::de::Error| err.to_string())?
    };
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    file.keys
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let at = format!("keys[{index}] ({})", raw.name);
            let entry = entry(raw).map_err(|why| format!("{at}: {why}"))?;
            if !names.insert(entry.name.clone()) {
                return Err(format!("{at}: name '{}' is used twice", entry.name));
            }
            if !digests.insert(entry.digest) {
                return Err(format!(
                    "{at}: sha256 is the digest of another entry's key too"
                ));
            }
            Ok(entry)
        })
        .collect()
}

fn stringify_datetimes(value: &mut toml::Value) {
    match value {
        toml::Value::Datetime(datetime) => *value = toml::Value::String(datetime.to_string()),
        toml::Value::Array(items) => items.iter_mut().for_each(stringify_datetimes),
        toml::Value::Table(table) => table
            .iter_mut()
            .for_each(|(_, value)| stringify_datetimes(value)),
        _ => {}
    }
}

fn entry(raw: RawEntry) -> Result<KeyEntry, String> {
    let name = raw.name;
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("name: must be 1 to 64 of A-Z, a-z, 0-9, '.', '_', '-'".into());
    }
    if RESERVED.contains(&name.as_str()) {
        return Err(format!("name: '{name}' is reserved"));
    }
    let digest = digest(&raw.sha256)?;
    let grants = raw
        .scopes
        .iter()
        .map(|scope| Grant::parse(scope).map_err(|why| format!("scopes: {why}")))
        .collect::<Result<Vec<_>, _>>()?;
    let expires_at = raw
        .expires_at
        .map(|text| {
            prost_types::Timestamp::from_str(text.trim())
                .ok()
                .and_then(|at| SystemTime::try_from(at).ok())
                .ok_or_else(|| format!("expires_at: '{text}' is not an RFC 3339 time"))
        })
        .transpose()?;
    let consumers = raw
        .consumers
        .map(|patterns| {
            patterns
                .iter()
                .map(|consumer| consumer_entry(consumer).map_err(|why| format!("consumers: {why}")))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
    let quota = raw.quota.map(quota).transpose()?;
    Ok(KeyEntry {
        name,
        digest,
        grants,
        expires_at,
        consumers,
        quota,
    })
}

/// One allowed consumer, as calls name it: a name, or an id (digits, read as a number).
///
/// Exact, never a pattern: Iggy keeps a named consumer's offsets under a 32-bit hash of its
/// name, so a pattern would let a key search its names for one whose hash is another team's
/// consumer (a few seconds' work); a name the file fixes cannot be chosen to collide.
fn consumer_entry(consumer: &str) -> Result<String, String> {
    if consumer.contains('*') {
        return Err(format!(
            "'{consumer}' has a '*': consumers are exact names (Iggy keys a named consumer by \
             a 32-bit hash of its name, so a pattern could be searched for a name that \
             collides with another consumer)"
        ));
    }
    if consumer.is_empty() || consumer.len() > 255 || consumer.chars().any(char::is_control) {
        return Err(format!(
            "'{consumer}' must be 1 to 255 bytes without control characters"
        ));
    }
    if consumer.bytes().all(|b| b.is_ascii_digit()) {
        return consumer
            .parse::<u32>()
            .map(|id| id.to_string())
            .map_err(|_| format!("id '{consumer}' is out of range (at most {})", u32::MAX));
    }
    Ok(consumer.to_owned())
}

/// SHA-256 of zero bytes.
const EMPTY_KEY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn digest(hex: &str) -> Result<[u8; 32], String> {
    let hex = hex.trim();
    let bad = || "sha256: must be 64 hex digits (the key's SHA-256; see --hash-key)".to_owned();
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    // What hashing an unset variable gives: it would let in a request with an empty key.
    if hex.eq_ignore_ascii_case(EMPTY_KEY_SHA256) {
        return Err("sha256: is the digest of an empty key".to_owned());
    }
    Ok(digest)
}

fn quota(raw: RawQuota) -> Result<QuotaSettings, String> {
    let positive_u32 = |field: &str, value: Option<u32>| {
        value
            .map(|v| NonZeroU32::new(v).ok_or_else(|| format!("quota.{field}: must be above 0")))
            .transpose()
    };
    let positive_u64 = |field: &str, value: Option<u64>| match value {
        Some(0) => Err(format!("quota.{field}: must be above 0")),
        other => Ok(other),
    };
    Ok(QuotaSettings {
        produce_requests_per_second: positive_u32(
            "produce_requests_per_second",
            raw.produce_requests_per_second,
        )?,
        produce_bytes_per_second: positive_u64(
            "produce_bytes_per_second",
            raw.produce_bytes_per_second,
        )?,
        consume_requests_per_second: positive_u32(
            "consume_requests_per_second",
            raw.consume_requests_per_second,
        )?,
        consume_bytes_per_second: positive_u64(
            "consume_bytes_per_second",
            raw.consume_bytes_per_second,
        )?,
        subscriptions: positive_u32("subscriptions", raw.subscriptions)?,
    })
}
