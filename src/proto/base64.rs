//! The typed JSON codecs' reading of `bytes` fields: what a REST batch spends most on after
//! the parse. A payload written as canonical, padded, standard base64 (what every encoder
//! writes by default) is decoded with SIMD; any other spelling proto3 JSON allows (no padding,
//! the URL-safe alphabet, stray trailing bits) goes to pbjson's own decoder. So what is
//! accepted, and what it decodes to, are pbjson's: the fast decoder takes a subset of what
//! pbjson takes and decodes it alike (`tests` checks both). Polled payloads are written as
//! pbjson writes them, with SIMD too.

use std::fmt;

use serde::{
    Deserialize, Deserializer, Serialize, Serializer,
    de::{self, Visitor, value::StrDeserializer},
    ser,
};
use serde_json::value::RawValue;

/// Stands in for `pbjson::private::BytesDeserialize` in the generated codecs (`build.rs`).
pub struct Base64<T>(pub T);

impl<'de, T: From<Vec<u8>>> Deserialize<'de> for Base64<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Asked for bytes, serde_json hands a string's text over (its escapes undone) without
        // the checks it makes on a string: UTF-8, no control characters, no lone `\u`
        // surrogate (kept as its bytes). Base64's alphabet is printable ASCII, so the decoder
        // refuses all those would, and a payload is not read a second time for them.
        deserializer
            .deserialize_bytes(Base64Visitor)
            .map(|bytes| Self(bytes.into()))
    }
}

struct Base64Visitor;

impl Visitor<'_> for Base64Visitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a base64 string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<u8>, E> {
        decode(text.as_bytes())
    }

    fn visit_bytes<E: de::Error>(self, text: &[u8]) -> Result<Vec<u8>, E> {
        decode(text)
    }
}

/// Stands in for pbjson's `base64::encode(&v).as_str()` in the generated codecs (`build.rs`):
/// a `bytes` field written as pbjson writes it (canonical, padded, standard base64), with
/// SIMD, and handed to serde_json as a JSON string already written (a `RawValue`). Base64 holds no character JSON escapes, so serde_json
/// copies it instead of scanning it byte by byte for escapes, which was a quarter of a REST
/// poll's CPU; checking it as a `RawValue` scans it a word at a time. serde_json's writer and
/// its `to_value` take a `RawValue` as the JSON it holds; another serializer would see a
/// struct, so the API's types are written as JSON by serde_json only (they are).
pub struct Written<'a, T: ?Sized>(pub &'a T);

impl<T: AsRef<[u8]> + ?Sized> Serialize for Written<'_, T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = self.0.as_ref();
        let mut json = String::with_capacity(bytes.len().div_ceil(3) * 4 + 2);
        json.push('"');
        base64_simd::STANDARD.encode_append(bytes, &mut json);
        json.push('"');
        serde_json::from_str::<&RawValue>(&json)
            .map_err(ser::Error::custom)?
            .serialize(serializer)
    }
}

/// `text` decoded as pbjson decodes it; text that is not UTF-8 is no base64 at all.
fn decode<E: de::Error>(text: &[u8]) -> Result<Vec<u8>, E> {
    if let Ok(bytes) = base64_simd::STANDARD.decode_to_vec(text) {
        return Ok(bytes);
    }
    let Ok(text) = std::str::from_utf8(text) else {
        return Err(E::invalid_value(
            de::Unexpected::Bytes(text),
            &Base64Visitor,
        ));
    };
    pbjson::private::BytesDeserialize::<Vec<u8>>::deserialize(StrDeserializer::<E>::new(text))
        .map(|bytes| bytes.0)
}

#[cfg(test)]
mod tests {
    use pbjson::private::base64::{
        Engine,
        engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD},
    };
    use proptest::prelude::*;
    use serde::de::value::Error;

    fn pbjson(text: &str) -> Result<Vec<u8>, Error> {
        use serde::Deserialize;
        pbjson::private::BytesDeserialize::<Vec<u8>>::deserialize(
            serde::de::value::StrDeserializer::<Error>::new(text),
        )
        .map(|bytes| bytes.0)
    }

    fn agree(text: &str) -> Result<(), TestCaseError> {
        if let Ok(fast) = base64_simd::STANDARD.decode_to_vec(text) {
            // Whatever the fast decoder takes, pbjson takes, as the same bytes.
            prop_assert_eq!(pbjson(text).ok(), Some(fast), "{:?}", text);
        }
        prop_assert_eq!(
            super::decode::<Error>(text.as_bytes()).ok(),
            pbjson(text).ok(),
            "{:?}",
            text
        );
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn bytes_are_written_as_pbjson_writes_them(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            // pbjson's encoder is its base64 crate's (deprecated) `encode`: this engine.
            let written = serde_json::to_string(&super::Written(&raw)).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(written, serde_json::to_string(&STANDARD.encode(&raw)).map_err(|e| TestCaseError::fail(e.to_string()))?);
        }

        #[test]
        fn every_encoding_decodes_as_pbjson_decodes_it(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
                agree(&engine.encode(&raw))?;
            }
        }

        /// Near misses: symbols from both alphabets, padding anywhere, non-canonical last
        /// symbols, whitespace.
        #[test]
        fn any_text_is_taken_or_refused_as_pbjson_does(text in "[AQgw/+_\\-=9z \n]{0,70}") {
            agree(&text)?;
        }

        /// A valid encoding with one symbol changed: mostly still valid, sometimes canonical
        /// no more, or from the other alphabet.
        #[test]
        fn a_changed_symbol_is_taken_or_refused_as_pbjson_does(
            raw in proptest::collection::vec(any::<u8>(), 1..64),
            at in any::<proptest::sample::Index>(),
            symbol in proptest::sample::select(b"ARQSgwz9+/-_= ".to_vec()),
        ) {
            let mut text = STANDARD.encode(&raw).into_bytes();
            let at = at.index(text.len());
            text[at] = symbol;
            agree(&String::from_utf8(text).expect("ASCII"))?;
        }
    }

    /// Read from JSON as bytes: escapes undone, and text that is not UTF-8 refused as no
    /// base64, as checking it for UTF-8 first would.
    #[test]
    fn payloads_read_from_json_text_undo_escapes_and_refuse_what_is_not_utf8() {
        let read = |json: &[u8]| {
            serde_json::from_slice::<super::Base64<Vec<u8>>>(json).map(|bytes| bytes.0)
        };
        assert_eq!(read(br#""QUI=""#).ok(), Some(b"AB".to_vec()));
        assert_eq!(read(br#""QU\u0049\u003d""#).ok(), Some(b"AB".to_vec()));
        assert_eq!(
            read(br#""QUI""#).ok(),
            Some(b"AB".to_vec()),
            "unpadded, via pbjson"
        );
        let refused = read(b"\"QU\xffI=\"").expect_err("not UTF-8");
        assert!(refused.to_string().contains("base64"), "{refused}");
        assert!(
            read(b"[65]").is_err(),
            "an array of bytes is no base64 text"
        );
    }

    #[test]
    fn non_canonical_trailing_bits_are_left_to_pbjson() {
        // `QR==` holds the bits of `A` and four more set: the fast decoder refuses it.
        assert!(base64_simd::STANDARD.decode_to_vec("QR==").is_err());
        assert_eq!(super::decode::<Error>(b"QQ==").ok(), Some(b"A".to_vec()));
        assert_eq!(super::decode::<Error>(b"QQ").ok(), Some(b"A".to_vec()));
        assert_eq!(super::decode::<Error>(b"-_8=").ok(), pbjson("-_8=").ok());
        assert!(super::decode::<Error>(b"Q").is_err());
    }
}
