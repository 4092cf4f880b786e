//! `google.api.http` path templates: parsing and matching.
//!
//! Grammar (from `google/api/http.proto`):
//! `Template = "/" Segments [ Verb ]`, `Segment = "*" | "**" | LITERAL | Variable`,
//! `Variable = "{" FieldPath [ "=" Segments ] "}"`, `Verb = ":" LITERAL`.

use std::{borrow::Cow, fmt};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    Single,
    /// `**`: the rest of the path (zero or more segments); only last.
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Variable {
    /// Dotted field path, e.g. `stream` or `topic.name`.
    field: String,
    /// Index of its first segment.
    start: usize,
    /// Index after its last segment; `None` when it ends with `**`.
    end: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

/// A normalised request path cut at its slashes, once, for every template to match.
pub struct Parts<'a> {
    segments: Vec<&'a str>,
}

impl<'a> Parts<'a> {
    /// `None` for a path that does not start with `/`, which no template matches.
    pub fn of(normalised: &'a str) -> Option<Self> {
        let path = normalised.strip_prefix('/')?;
        Some(Self {
            segments: path.split('/').collect(),
        })
    }

    /// How many segments the path has.
    pub fn count(&self) -> usize {
        self.segments.len()
    }
}

/// A variable's field path and the text it matched, still percent-encoded (but for the
/// unreserved characters [`normalise`] decodes): [`decode`] gives the value, or says why the
/// client's escape is bad, once the caller knows which field to name.
pub type Bindings = Vec<(String, String)>;

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PathTemplate {
    pub fn parse(source: &str) -> Result<Self, String> {
        let rest = source
            .strip_prefix('/')
            .ok_or_else(|| format!("path template {source:?} must start with '/'"))?;
        // The verb is the part after the last ':' that is outside any braces.
        let (body, verb) = match rest.rfind(':') {
            Some(at) if !rest[at..].contains('}') => (&rest[..at], Some(rest[at + 1..].to_owned())),
            _ => (rest, None),
        };
        let mut template = PathTemplate {
            source: source.to_owned(),
            segments: Vec::new(),
            variables: Vec::new(),
            verb,
        };
        let mut current = String::new();
        let mut pieces = Vec::new();
        // Split on '/' outside braces so `{name=a/*}` stays one piece.
        let mut depth = 0;
        for c in body.chars() {
            match c {
                '{' => {
                    depth += 1;
                    current.push(c);
                }
                '}' => {
                    depth -= 1;
                    current.push(c);
                }
                '/' if depth == 0 => pieces.push(std::mem::take(&mut current)),
                _ => current.push(c),
            }
        }
        pieces.push(current);
        for piece in pieces {
            if let Some(inner) = piece.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                let (field, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                let start = template.segments.len();
                for part in pattern.split('/') {
                    template.segments.push(parse_segment(part, source)?);
                }
                let end = match template.segments.last() {
                    Some(Segment::Rest) => None,
                    _ => Some(template.segments.len()),
                };
                template.variables.push(Variable {
                    field: field.to_owned(),
                    start,
                    end,
                });
            } else {
                template.segments.push(parse_segment(&piece, source)?);
            }
        }
        if let Some(at) = template.segments.iter().position(|s| *s == Segment::Rest)
            && at + 1 != template.segments.len()
        {
            return Err(format!("in {source:?}, '**' must be the last segment"));
        }
        Ok(template)
    }

    /// The field paths this template binds, in order.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.field.as_str())
    }

    /// Matches a request path (still percent-encoded) and returns the variables' text.
    /// Percent-encoded unreserved characters match themselves (`%73treams` is `streams`).
    pub fn matches(&self, path: &str) -> Option<Bindings> {
        self.matches_normalised(&normalise(path))
    }

    /// [`Self::matches`] for a path [`normalise`] has already been through.
    fn matches_normalised(&self, path: &str) -> Option<Bindings> {
        self.matches_parts(&Parts::of(path)?)
    }

    /// The segments a path needs to match, and whether it may have more (a template ending in
    /// `**`).
    pub fn length(&self) -> (usize, bool) {
        match self.segments.last() {
            Some(Segment::Rest) => (self.segments.len() - 1, true),
            _ => (self.segments.len(), false),
        }
    }

    /// [`Self::matches`] for a path already cut into its segments (the route table cuts it
    /// once for all its templates).
    pub(super) fn matches_parts(&self, parts: &Parts<'_>) -> Option<Bindings> {
        let parts = parts.segments.as_slice();
        let (fixed, more) = self.length();
        if parts.len() < fixed || (!more && parts.len() != fixed) {
            return None;
        }
        // The verb ends the last segment (`/v1/streams/s:purge`); the segment without it is
        // what the template's last segment matches.
        let (last, before) = parts.split_last()?;
        let last = match &self.verb {
            Some(verb) => last.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => last,
        };
        let part = |index: usize| {
            if index == before.len() {
                last
            } else {
                parts[index]
            }
        };
        for (index, segment) in self.segments.iter().enumerate().take(parts.len()) {
            match segment {
                Segment::Literal(literal) if literal != part(index) => return None,
                Segment::Single if part(index).is_empty() => return None,
                Segment::Literal(_) | Segment::Single | Segment::Rest => {}
            }
        }
        self.variables
            .iter()
            .map(|variable| {
                let end = variable.end.unwrap_or(parts.len());
                if variable.start > end || end > parts.len() {
                    return None;
                }
                let raw = (variable.start..end).map(part).collect::<Vec<_>>();
                Some((variable.field.clone(), raw.join("/")))
            })
            .collect()
    }

    /// The template in OpenAPI's form: `{field}` for each variable, verb kept.
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        let mut index = 0;
        while index < self.segments.len() {
            out.push('/');
            if let Some(variable) = self.variables.iter().find(|v| v.start == index) {
                out.push('{');
                out.push_str(&variable.field);
                out.push('}');
                index = variable.end.unwrap_or(self.segments.len());
                continue;
            }
            match &self.segments[index] {
                Segment::Literal(literal) => out.push_str(literal),
                Segment::Single => out.push('*'),
                Segment::Rest => out.push_str("**"),
            }
            index += 1;
        }
        if let Some(verb) = &self.verb {
            out.push(':');
            out.push_str(verb);
        }
        out
    }
}

fn parse_segment(part: &str, source: &str) -> Result<Segment, String> {
    match part {
        "" => Err(format!("empty segment in path template {source:?}")),
        "*" => Ok(Segment::Single),
        "**" => Ok(Segment::Rest),
        literal if literal.contains(['{', '}', '*']) => Err(format!(
            "bad segment {literal:?} in path template {source:?}"
        )),
        literal => Ok(Segment::Literal(literal.to_owned())),
    }
}

/// RFC 3986 §2.3: characters that mean the same written as they are or percent-encoded.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// The path with its percent-encoded unreserved characters decoded (RFC 3986 §6.2.2.2), so
/// it matches literals however a client wrote them. Other escapes stay (an encoded `/` is
/// data, not a separator). A path with a malformed escape is left as it is, for [`decode`] to
/// refuse: decoding around it could make a new escape of its pieces (`%%341` → `%41`).
pub fn normalise(path: &str) -> Cow<'_, str> {
    if !path.contains('%') || decode_bytes(path).is_err() {
        return Cow::Borrowed(path);
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| path.get(index + 1..index + 3))
            .flatten()
            .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .filter(|byte| is_unreserved(*byte));
        match escaped {
            Some(byte) => {
                out.push(byte);
                index += 3;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    // Only ASCII escapes became ASCII bytes, so the text is still UTF-8.
    String::from_utf8(out).map_or(Cow::Borrowed(path), Cow::Owned)
}

/// Why a path or query value could not be percent-decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadEscape {
    /// A `%` not followed by two hex digits.
    Malformed,
    /// Escapes that decode to bytes that are not UTF-8.
    NotUtf8,
}

impl fmt::Display for BadEscape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadEscape::Malformed => "has a % that is not followed by two hex digits",
            BadEscape::NotUtf8 => "is not UTF-8 once percent-decoded",
        })
    }
}

/// Decodes every `%XX` escape of a path segment or query value.
pub fn decode(part: &str) -> Result<String, BadEscape> {
    if !part.contains('%') {
        return Ok(part.to_owned());
    }
    String::from_utf8(decode_bytes(part)?).map_err(|_| BadEscape::NotUtf8)
}

fn decode_bytes(part: &str) -> Result<Vec<u8>, BadEscape> {
    let bytes = part.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = part.get(index + 1..index + 3).ok_or(BadEscape::Malformed)?;
            // Two hex digits exactly: from_str_radix alone would take a sign ("%+1").
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(BadEscape::Malformed);
            }
            out.push(u8::from_str_radix(hex, 16).map_err(|_| BadEscape::Malformed)?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
