//! The JSON reader the shape walk steps through a body with. It reads what the walk looks at
//! (keys, and the strings and numbers it checks) as serde_json would, and passes over the
//! rest, chiefly payloads' base64 text, checking it without decoding it: one `memchr` scan for
//! the closing quote and one pass for the bytes no JSON string may hold. The walk was reading
//! every payload as serde_json parses a string, a scan a word at a time and a UTF-8 check,
//! and the parse after it reads it all again.
//!
//! It takes what serde_json takes and refuses what it refuses, up to the end of the first
//! value: stopping early on JSON the parse will take would leave what the walk looks for past
//! that point unseen, and going on past a fault the parse will refuse would charge a body for
//! what it can never become (a large broken body must be answered as malformed, not as too
//! large). Every `None` is malformed JSON; the parse that follows names why.

use std::borrow::Cow;

pub(super) struct Reader<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(body: &'a [u8]) -> Self {
        Self { body, at: 0 }
    }

    /// The next byte past whitespace, not yet read.
    pub(super) fn peek(&mut self) -> Option<u8> {
        while let Some(&byte) = self.body.get(self.at) {
            if !matches!(byte, b' ' | b'\n' | b'\t' | b'\r') {
                return Some(byte);
            }
            self.at += 1;
        }
        None
    }

    /// Reads the byte [`peek`](Self::peek) saw.
    pub(super) fn bump(&mut self) {
        self.at += 1;
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    /// In an array or object just opened (`first`) or after one of its items: whether another
    /// item follows, reading the comma before it; when none does, reads the `close` bracket.
    /// A comma with nothing after it is malformed here, before the item is counted, as
    /// serde_json has it.
    pub(super) fn more(&mut self, close: u8, first: bool) -> Option<bool> {
        let next = self.peek()?;
        if next == close {
            self.at += 1;
            return Some(false);
        }
        if !first {
            (next == b',').then(|| self.at += 1)?;
            (self.peek()? != close).then_some(())?;
        }
        Some(true)
    }

    /// An object's next key, decoded.
    pub(super) fn key(&mut self) -> Option<Cow<'a, str>> {
        self.eat(b'"')?;
        self.string()
    }

    /// The colon between a key and its value.
    pub(super) fn colon(&mut self) -> Option<()> {
        self.eat(b':')
    }

    /// The rest of a string whose opening quote is read, decoded as serde_json decodes a
    /// string it parses: borrowed when it holds no escape.
    pub(super) fn string(&mut self) -> Option<Cow<'a, str>> {
        let (raw, end) = self.segment()?;
        self.at += raw.len() + 1;
        if end == b'"' {
            return std::str::from_utf8(raw).ok().map(Cow::Borrowed);
        }
        let mut text = raw.to_vec();
        loop {
            self.escape(&mut text)?;
            let (raw, end) = self.segment()?;
            text.extend_from_slice(raw);
            self.at += raw.len() + 1;
            if end == b'"' {
                return String::from_utf8(text).ok().map(Cow::Owned);
            }
        }
    }

    /// Passes over the rest of a string whose opening quote is read, checked as [`string`]
    /// checks it but not decoded.
    ///
    /// [`string`]: Self::string
    pub(super) fn skip_string(&mut self) -> Option<()> {
        // What escapes decode to, thrown away: none in base64, so it stays unallocated.
        let mut escaped = Vec::new();
        loop {
            let (raw, end) = self.segment()?;
            self.at += raw.len() + 1;
            if end == b'"' {
                return Some(());
            }
            self.escape(&mut escaped)?;
            escaped.clear();
        }
    }

    /// The text up to the next quote or backslash, with which of the two ends it; `None`
    /// when it holds a control character or is not UTF-8, which JSON strings may not be.
    fn segment(&self) -> Option<(&'a [u8], u8)> {
        let rest = self.body.get(self.at..)?;
        let end = memchr::memchr2(b'"', b'\\', rest)?;
        let raw = &rest[..end];
        // One pass without an early exit, which the compiler makes a vector loop: the least
        // and the greatest byte tell control characters and anything past ASCII.
        let (least, greatest) = raw.iter().fold((u8::MAX, 0), |(least, greatest), &byte| {
            (least.min(byte), greatest.max(byte))
        });
        if least < 0x20 || (greatest >= 0x80 && std::str::from_utf8(raw).is_err()) {
            return None;
        }
        Some((raw, rest[end]))
    }

    /// The escape after a backslash just read, appended to `text`. A `\u` escape of a UTF-16
    /// surrogate must be one of a pair, as serde_json has it for strings.
    fn escape(&mut self, text: &mut Vec<u8>) -> Option<()> {
        let escaped = *self.body.get(self.at)?;
        self.at += 1;
        let byte = match escaped {
            b'"' | b'\\' | b'/' => escaped,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let unit = self.hex()?;
                let code = match unit {
                    0xD800..=0xDBFF => {
                        (self.body.get(self.at..self.at + 2)? == b"\\u").then_some(())?;
                        self.at += 2;
                        let low = self.hex()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return None;
                        }
                        0x1_0000 + ((u32::from(unit) - 0xD800) << 10) + (u32::from(low) - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return None,
                    _ => u32::from(unit),
                };
                let mut utf8 = [0; 4];
                text.extend_from_slice(char::from_u32(code)?.encode_utf8(&mut utf8).as_bytes());
                return Some(());
            }
            _ => return None,
        };
        text.push(byte);
        Some(())
    }

    fn hex(&mut self) -> Option<u16> {
        let digits = self.body.get(self.at..self.at + 4)?;
        self.at += 4;
        digits.iter().try_fold(0u16, |unit, &digit| {
            let value = char::from(digit).to_digit(16)?;
            Some(unit << 4 | value as u16)
        })
    }

    /// A number's text, by JSON's grammar (`-`, no leading zeros, digits either side of a
    /// point, an exponent), and within a float's range as serde_json has it.
    pub(super) fn number(&mut self) -> Option<&'a str> {
        let start = self.at;
        self.eat_byte(b'-');
        let whole = self.at;
        match self.digits() {
            0 => return None,
            1 => {}
            _ if self.body[whole] == b'0' => return None,
            _ => {}
        }
        if self.eat_byte(b'.') && self.digits() == 0 {
            return None;
        }
        let exponent = self.eat_byte(b'e') || self.eat_byte(b'E');
        if exponent {
            let _ = self.eat_byte(b'+') || self.eat_byte(b'-');
            if self.digits() == 0 {
                return None;
            }
        }
        // ASCII throughout.
        let text = std::str::from_utf8(&self.body[start..self.at]).ok()?;
        // Past 300 digits or with an exponent, it may be beyond any float: serde_json refuses
        // such a number, wherever it stands.
        if (exponent || text.len() > 300) && !text.parse::<f64>().ok()?.is_finite() {
            return None;
        }
        Some(text)
    }

    fn eat_byte(&mut self, byte: u8) -> bool {
        let ate = self.body.get(self.at) == Some(&byte);
        self.at += usize::from(ate);
        ate
    }

    /// Reads a run of digits; how many.
    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.body.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
        self.at - start
    }

    /// Reads `word` (`true`, `false` or `null`), whose first byte was peeked.
    pub(super) fn literal(&mut self, word: &[u8]) -> Option<()> {
        (self.body.get(self.at..self.at + word.len())? == word).then(|| self.at += word.len())
    }
}

#[cfg(test)]
mod tests {
    use super::Reader;

    fn string(json: &str) -> Option<String> {
        let mut reader = Reader::new(json.as_bytes());
        (reader.peek()? == b'"').then(|| reader.bump())?;
        let text = reader.string().map(|text| text.into_owned());
        let mut skipper = Reader::new(json.as_bytes());
        skipper.bump();
        assert_eq!(skipper.skip_string().is_some(), text.is_some(), "{json}");
        if text.is_some() {
            assert_eq!(skipper.at, reader.at, "{json}: both end past the quote");
        }
        text
    }

    #[test]
    fn strings_are_decoded_as_serde_json_decodes_them() {
        for json in [
            r#""""#,
            r#""plain""#,
            r#""a\"b\\c\/d\be\ff\ng\rh\ti""#,
            r#""\u0041\u00e9\u20AC""#,
            r#""\ud83d\ude00 and \uD834\uDD1E""#,
            "\"caf\u{e9} \u{1f600}\"",
        ] {
            let expected: String = serde_json::from_str(json).expect("serde_json takes it");
            assert_eq!(string(json), Some(expected), "{json}");
        }
    }

    #[test]
    fn strings_serde_json_refuses_are_refused_when_decoded() {
        for json in [
            r#""open"#,
            r#""\x""#,
            r#""\u12""#,
            r#""\u12g4""#,
            r#""\ud83d""#,
            r#""\ud83d\u0041""#,
            r#""\ude00""#,
            "\"tab\there\"",
            "\"\\",
        ] {
            assert!(serde_json::from_str::<String>(json).is_err(), "{json}");
            assert_eq!(string(json), None, "{json}");
        }
        for not_utf8 in [&b"\"\xff\""[..], b"\"a\xe2\x82\"", b"\"\xe2\x82\\u0041\""] {
            let mut reader = Reader::new(not_utf8);
            reader.bump();
            assert_eq!(reader.string(), None, "{not_utf8:?}");
            let mut reader = Reader::new(not_utf8);
            reader.bump();
            assert_eq!(reader.skip_string(), None, "{not_utf8:?}");
        }
    }

    #[test]
    fn numbers_are_read_by_json_grammar_and_a_floats_range() {
        for text in [
            "0",
            "-0",
            "7",
            "-12",
            "10",
            "0.5",
            "-0.0e0",
            "1e5",
            "1E+5",
            "1e-5",
            "2.50E-1",
            "18446744073709551616",
            "1e308",
            "-1e308",
            "1e-400",
        ] {
            assert!(
                serde_json::from_str::<serde_json::Value>(text).is_ok(),
                "{text}"
            );
            let mut reader = Reader::new(text.as_bytes());
            assert_eq!(reader.number(), Some(text), "{text}");
        }
        // At the edge of a float's range (f64::MAX, and either side of the halfway point to
        // the next power of two), where serde_json's exact reading (its `float_roundtrip` feature)
        // and a rougher one part.
        for (text, finite) in [
            ("1.7976931348623158e308", true),
            ("-179769.313486231585e303", false),
            ("1.797693134862315807937289714053e308", true),
            ("1.7976931348623159e308", false),
        ] {
            let by_serde = serde_json::from_str::<serde_json::Value>(text).is_ok();
            assert_eq!(by_serde, finite, "{text}");
            let read = Reader::new(text.as_bytes()).number();
            assert_eq!(read, finite.then_some(text), "{text}");
        }
        let long = format!("1{}", "0".repeat(308));
        let longer = format!("1{}", "0".repeat(309));
        assert_eq!(Reader::new(long.as_bytes()).number(), Some(long.as_str()));
        for text in [
            "-", "01", "-01", "1.", ".5", "1e", "1e+", "+1", "1e400", "-1e400", &longer,
        ] {
            assert!(
                serde_json::from_str::<serde_json::Value>(text).is_err(),
                "{text}"
            );
            let mut reader = Reader::new(text.as_bytes());
            let whole = reader
                .number()
                .is_some_and(|number| number.len() == text.len());
            assert!(!whole, "{text}");
        }
    }

    #[test]
    fn a_skipped_string_ends_at_its_unescaped_quote() {
        let mut reader = Reader::new(br#""a\"b\\" ,"#);
        reader.bump();
        assert_eq!(reader.skip_string(), Some(()));
        assert_eq!(reader.peek(), Some(b','));
        for open in [&br#""a\"#[..], br#""abc"#, br#""\"#] {
            let mut reader = Reader::new(open);
            reader.bump();
            assert_eq!(reader.skip_string(), None, "{open:?}");
        }
    }
}
