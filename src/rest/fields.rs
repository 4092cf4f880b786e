//! A JSON object as the typed codec wrote it, read field by field without a tree of values:
//! each value is left as its text, to be copied out (one field of an answer, an SSE event's
//! data) or read where it is small (an etag, the id a `Location` names).

use serde_json::value::RawValue;

/// A JSON object's fields in the order written, each value left as its text.
pub(crate) struct Fields<'a>(Vec<(String, &'a RawValue)>);

impl<'a> Fields<'a> {
    /// The fields of the object `json` holds; an error when it holds no object.
    pub(crate) fn of(json: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// The value of the field `name`, as written: the first one, where a hand-written object
    /// might give a key twice (the typed codec writes each field once, its name unescaped).
    pub(crate) fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| *value)
    }

    /// The fields, in the order written.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &'a RawValue)> {
        self.0.iter().map(|(key, value)| (key.as_str(), *value))
    }
}

/// The string a value holds; `None` when it holds another kind.
pub(crate) fn string(value: &RawValue) -> Option<String> {
    value
        .get()
        .starts_with('"')
        .then(|| serde_json::from_str(value.get()).ok())
        .flatten()
}

/// The text of a value that is a string or an integer (proto3 JSON writes 64-bit integers as
/// strings, narrower ones as numbers): the string, or the integer's digits. `None` for any
/// other kind.
pub(crate) fn scalar_text(value: &RawValue) -> Option<String> {
    let text = value.get();
    let integer = text
        .strip_prefix('-')
        .unwrap_or(text)
        .bytes()
        .all(|b| b.is_ascii_digit());
    if integer && !text.is_empty() && text != "-" {
        return Some(text.to_owned());
    }
    string(value)
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Fields<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visit<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Fields<'a>, A::Error> {
                let mut fields = Vec::new();
                while let Some(field) = map.next_entry::<String, &'a RawValue>()? {
                    fields.push(field);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Visit(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_as_written() {
        let json = br#"{"a":{"etag":"x\"y"},"id":"18446744073709551615","n":-7,"f":1.5,"b":true,"s":"","l":[1]}"#;
        let fields = Fields::of(json).expect("an object");
        let names: Vec<&str> = fields.iter().map(|(key, _)| key).collect();
        assert_eq!(names, ["a", "id", "n", "f", "b", "s", "l"]);
        assert_eq!(
            fields.get("a").map(RawValue::get),
            Some(r#"{"etag":"x\"y"}"#)
        );
        let inner = Fields::of(fields.get("a").expect("a").get().as_bytes()).expect("object");
        assert_eq!(inner.get("etag").and_then(string).as_deref(), Some("x\"y"));
        let text = |name: &str| fields.get(name).and_then(scalar_text);
        assert_eq!(text("id").as_deref(), Some("18446744073709551615"));
        assert_eq!(text("n").as_deref(), Some("-7"));
        assert_eq!(text("s").as_deref(), Some(""));
        assert_eq!(
            (text("f"), text("b"), text("l"), text("a")),
            (None, None, None, None)
        );
        assert!(fields.get("missing").is_none());
        assert!(Fields::of(b"null").is_err());
        assert!(Fields::of(b"[1]").is_err());
    }
}
