//! Scalar spellings that proto3 JSON allows but the parser (prost-reflect) does not take as
//! written, handled alike in bodies, path variables and query strings: integers written as an
//! integral JSON number inside a string (`"1e0"`, `"2.0"`, as protojson takes them) and RFC 3339
//! timestamps with a lower-case `t` or `z` (RFC 3339 §5.6) are respelled; fractions of a second
//! finer than nanoseconds are refused, never cut. On query strings and paths, an enum value may
//! also be written by its short name, in any case (`strategy=last`), as people type it.

use prost_reflect::EnumDescriptor;

/// An integral JSON number written in a string, as the plain integer the parser takes: `"1e0"`
/// is `1`, `"-2.50e1"` is `-25`. `None` when `text` is a plain integer already, or is not an
/// integral JSON number (the parser then says why).
pub fn integer(text: &str) -> Option<String> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (&unsigned[..at], Some(&unsigned[at + 1..])),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (mantissa, None),
    };
    // JSON's number grammar: no leading zeros, digits on both sides of the point.
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (whole.len() > 1 && whole.starts_with('0')) {
        return None;
    }
    if fraction.is_some_and(|f| !digits(f)) {
        return None;
    }
    if fraction.is_none() && exponent.is_none() {
        return None;
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if !digits(unsigned) {
                return None;
            }
            // Far beyond any 64-bit integer either way: not worth spelling out.
            if unsigned.len() > 4 {
                return None;
            }
            e.parse().ok()?
        }
    };
    let all: String = [whole, fraction.unwrap_or("")].concat();
    // Where the decimal point falls in `all` once the exponent is applied.
    let point = i64::try_from(whole.len()).ok()? + exponent;
    if point > 40 {
        return None;
    }
    let point = usize::try_from(point.max(0)).ok()?;
    let (integral, rest) = if point >= all.len() {
        (format!("{all}{}", "0".repeat(point - all.len())), "")
    } else {
        (all[..point].to_owned(), &all[point..])
    };
    if rest.bytes().any(|b| b != b'0') {
        return None;
    }
    let trimmed = integral.trim_start_matches('0');
    Some(match (trimmed, negative) {
        ("", _) => "0".to_owned(),
        (value, true) => format!("-{value}"),
        (value, false) => value.to_owned(),
    })
}

/// The finest fraction of a second protobuf holds.
const MAX_FRACTION_DIGITS: usize = 9;

/// Digits after the point in the seconds of `text` (the first `.` followed by digits).
fn fraction_digits(text: &str) -> usize {
    text.split_once('.').map_or(0, |(_, after)| {
        after.bytes().take_while(u8::is_ascii_digit).count()
    })
}

fn too_fine() -> String {
    format!("has more than {MAX_FRACTION_DIGITS} fractional digits; nanoseconds are the finest")
}

/// An RFC 3339 timestamp with its `t` and `z` in upper case, which the parser requires
/// (`Ok(None)` when it needs no change); refused with more than nine fractional digits.
pub fn timestamp(text: &str) -> Result<Option<String>, String> {
    if fraction_digits(text) > MAX_FRACTION_DIGITS {
        return Err(too_fine());
    }
    if text.contains(['t', 'z']) {
        return Ok(Some(text.replace('t', "T").replace('z', "Z")));
    }
    Ok(None)
}

/// A duration (`1.5s`), refused with more than nine fractional digits.
pub fn duration(text: &str) -> Result<(), String> {
    if fraction_digits(text) > MAX_FRACTION_DIGITS {
        return Err(too_fine());
    }
    Ok(())
}

/// A boolean as a query string or path writes it: the spellings Go's `strconv.ParseBool`
/// takes, as grpc-gateway does.
pub fn boolean(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" | "t" | "T" | "1" => Some(true),
        "false" | "False" | "FALSE" | "f" | "F" | "0" => Some(false),
        _ => None,
    }
}

/// The short name of an enum value: its name without the enum's own prefix, in lower case
/// (`POLLING_STRATEGY_LAST` of `PollingStrategy` is `last`). `None` when the value does not
/// carry the prefix (buf's ENUM_VALUE_PREFIX rule makes every value of the API carry it).
pub fn short_enum_name(enumeration: &EnumDescriptor, value: &str) -> Option<String> {
    let prefix = upper_snake(enumeration.name());
    value
        .strip_prefix(prefix.as_str())
        .and_then(|rest| rest.strip_prefix('_'))
        .filter(|short| !short.is_empty())
        .map(str::to_ascii_lowercase)
}

/// The canonical name of the value `text` names, case-insensitively, by its full or short
/// name; `None` when it names none (the parser then says what the field takes).
pub fn enum_value(enumeration: &EnumDescriptor, text: &str) -> Option<String> {
    enumeration
        .values()
        .find(|value| {
            value.name().eq_ignore_ascii_case(text)
                || short_enum_name(enumeration, value.name())
                    .is_some_and(|short| short.eq_ignore_ascii_case(text))
        })
        .map(|value| value.name().to_owned())
}

/// `PollingStrategy` as `POLLING_STRATEGY`: the prefix protobuf style gives an enum's values.
fn upper_snake(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let mut previous: Option<char> = None;
    for c in name.chars() {
        if c.is_ascii_uppercase()
            && previous.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit())
        {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
        previous = Some(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{boolean, duration, enum_value, integer, short_enum_name, timestamp};

    #[test]
    fn integral_numbers_in_strings_become_plain_integers() {
        for (text, plain) in [
            ("1e0", "1"),
            ("1E2", "100"),
            ("2.0", "2"),
            ("-2.50e1", "-25"),
            ("1.5e1", "15"),
            ("0.0", "0"),
            ("-0.0", "0"),
            ("100e-2", "1"),
            ("1e+3", "1000"),
            ("18446744073709551615.0", "18446744073709551615"),
            ("1e19", "10000000000000000000"),
        ] {
            assert_eq!(integer(text).as_deref(), Some(plain), "{text}");
        }
        for text in [
            "1", "-7", "1.5", "abc", "", "1e", "e1", ".5", "5.", "01.0", "1e99999", "+1.0", "1.0x",
            "1e-1", "123e-2", "0x10", "1_0.0",
        ] {
            assert_eq!(integer(text), None, "{text}");
        }
    }

    #[test]
    fn timestamps_take_lower_case_letters_and_at_most_nanoseconds() {
        assert_eq!(
            timestamp("2026-01-01t10:00:00.5z"),
            Ok(Some("2026-01-01T10:00:00.5Z".into()))
        );
        assert_eq!(timestamp("2026-01-01T10:00:00.123456789+02:00"), Ok(None));
        assert!(timestamp("2026-01-01T10:00:00.1234567891Z").is_err());
        assert_eq!(duration("1.000000001s"), Ok(()));
        assert!(duration("1.0000000001s").is_err());
    }

    #[test]
    fn booleans_take_the_usual_spellings() {
        for text in ["true", "True", "TRUE", "t", "T", "1"] {
            assert_eq!(boolean(text), Some(true), "{text}");
        }
        for text in ["false", "False", "FALSE", "f", "F", "0"] {
            assert_eq!(boolean(text), Some(false), "{text}");
        }
        for text in ["yes", "", "tRUE", "2", "on"] {
            assert_eq!(boolean(text), None, "{text}");
        }
    }

    fn enumeration(name: &str) -> prost_reflect::EnumDescriptor {
        let pool = prost_reflect::DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the API's descriptors decode");
        pool.get_enum_by_name(name).expect("the enum is in the API")
    }

    #[test]
    fn enum_values_are_found_by_short_or_full_name_in_any_case() {
        let strategy = enumeration("iggy.gateway.v1.PollingStrategy");
        for (text, name) in [
            ("last", "POLLING_STRATEGY_LAST"),
            ("LAST", "POLLING_STRATEGY_LAST"),
            ("First", "POLLING_STRATEGY_FIRST"),
            ("next", "POLLING_STRATEGY_NEXT"),
            ("timestamp", "POLLING_STRATEGY_TIMESTAMP"),
            ("offset", "POLLING_STRATEGY_OFFSET"),
            ("POLLING_STRATEGY_LAST", "POLLING_STRATEGY_LAST"),
            ("polling_strategy_last", "POLLING_STRATEGY_LAST"),
        ] {
            assert_eq!(enum_value(&strategy, text).as_deref(), Some(name), "{text}");
        }
        for text in ["", "lastt", "STRATEGY_LAST", "polling_strategy_", "1"] {
            assert_eq!(enum_value(&strategy, text), None, "{text}");
        }
        assert_eq!(
            short_enum_name(&strategy, "POLLING_STRATEGY_LAST").as_deref(),
            Some("last")
        );
        let compression = enumeration("iggy.gateway.v1.CompressionAlgorithm");
        assert_eq!(
            enum_value(&compression, "gzip").as_deref(),
            Some("COMPRESSION_ALGORITHM_GZIP")
        );
    }
}
