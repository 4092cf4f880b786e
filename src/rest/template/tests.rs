use super::*;

fn bind(template: &str, path: &str) -> Option<Vec<(String, String)>> {
    PathTemplate::parse(template)
        .expect("valid template")
        .matches(path)
}

fn pairs(items: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    Some(
        items
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

#[test]
fn variables_bind_one_segment_each() {
    assert_eq!(
        bind(
            "/v1/streams/{stream}/topics/{topic}",
            "/v1/streams/orders/topics/7"
        ),
        pairs(&[("stream", "orders"), ("topic", "7")])
    );
    assert_eq!(
        bind("/v1/streams/{stream}", "/v1/streams/orders/topics"),
        None
    );
    assert_eq!(bind("/v1/streams/{stream}", "/v1/streams/"), None);
    assert_eq!(bind("/v1/streams", "/v1/streams/x"), None);
}

#[test]
fn values_are_bound_as_written_and_decoded_apart() {
    assert_eq!(
        bind("/v1/streams/{stream}", "/v1/streams/a%20b%2Fc"),
        pairs(&[("stream", "a%20b%2Fc")])
    );
    assert_eq!(decode("a%20b%2Fc"), Ok("a b/c".into()));
    // A bad escape still matches, so the transcoder can name the field it is in.
    assert_eq!(
        bind("/v1/streams/{stream}", "/v1/streams/%ZZ"),
        pairs(&[("stream", "%ZZ")])
    );
    assert_eq!(decode("%ZZ"), Err(BadEscape::Malformed));
    assert_eq!(decode("%FF"), Err(BadEscape::NotUtf8));
}

#[test]
fn encoded_unreserved_characters_match_literals() {
    assert_eq!(
        bind(
            "/v1/streams/{stream}:purge",
            "/v1/%73tre%61ms/orders%2D1:%70urge"
        ),
        pairs(&[("stream", "orders-1")])
    );
    // Reserved characters stay encoded: an encoded '/' is data, not a separator.
    assert_eq!(normalise("/v1/a%2Fb%3A%7e"), "/v1/a%2Fb%3A~");
    assert_eq!(normalise("/v1/%zz%4"), "/v1/%zz%4");
    assert_eq!(
        normalise("/v1/%%341"),
        "/v1/%%341",
        "no escape is made of the pieces"
    );
    assert_eq!(bind("/v1/streams", "/v1/streams%2F"), None);
}

#[test]
fn verbs_are_matched_and_stripped() {
    assert_eq!(
        bind("/v1/streams/{stream}:purge", "/v1/streams/a:b:purge"),
        pairs(&[("stream", "a:b")])
    );
    assert_eq!(
        bind("/v1/streams/{stream}:purge", "/v1/streams/orders"),
        None
    );
    assert_eq!(
        bind("/v1/streams/{stream}", "/v1/streams/a:b"),
        pairs(&[("stream", "a:b")])
    );
}

#[test]
fn double_wildcards_take_the_rest_of_the_path() {
    assert_eq!(
        bind("/v1/files/{path=**}", "/v1/files/a/b/c"),
        pairs(&[("path", "a/b/c")])
    );
    assert_eq!(
        bind("/v1/{name=streams/*}/info", "/v1/streams/orders/info"),
        pairs(&[("name", "streams/orders")])
    );
    assert!(PathTemplate::parse("/v1/{a=**}/x").is_err());
}

#[test]
fn openapi_paths_name_each_variable_once() {
    let template = PathTemplate::parse("/v1/{name=streams/*}/topics/{topic}:purge").expect("valid");
    assert_eq!(template.openapi_path(), "/v1/{name}/topics/{topic}:purge");
    assert_eq!(template.fields().collect::<Vec<_>>(), ["name", "topic"]);
}

#[test]
fn an_escape_is_exactly_two_hex_digits() {
    assert_eq!(decode("a%2Fb"), Ok("a/b".into()));
    assert_eq!(decode("%+1"), Err(BadEscape::Malformed));
    assert_eq!(decode("%-1"), Err(BadEscape::Malformed));
    assert_eq!(decode("%zz"), Err(BadEscape::Malformed));
    assert_eq!(decode("%4"), Err(BadEscape::Malformed));
    assert_eq!(decode("%C3"), Err(BadEscape::NotUtf8), "not UTF-8 alone");
}

#[test]
fn a_double_wildcard_may_take_no_segment_and_a_verb_only_the_last() {
    assert_eq!(
        bind("/v1/files/{path=**}", "/v1/files"),
        pairs(&[("path", "")])
    );
    assert_eq!(
        bind("/v1/files/{path=**}", "/v1/files/"),
        pairs(&[("path", "")])
    );
    assert_eq!(
        bind("/v1/streams/{stream}:purge", "/v1/streams/a/b:purge"),
        None
    );
    assert_eq!(
        bind("/v1/{name=**}:purge", "/v1/a/b:purge"),
        pairs(&[("name", "a/b")])
    );
    assert_eq!(bind("/v1/streams/{stream}:purge", "/:purge"), None);
    assert_eq!(bind("/v1/streams", "v1/streams"), None);
}

/// How a template matched a path before the route table cut the path once for all of them:
/// the verb stripped from the whole path, then the path cut.
fn matched_whole(template: &PathTemplate, path: &str) -> Option<Bindings> {
    let path = path.strip_prefix('/')?;
    let path = match &template.verb {
        Some(verb) => path.strip_suffix(verb.as_str())?.strip_suffix(':')?,
        None => path,
    };
    let parts: Vec<&str> = path.split('/').collect();
    let fixed = match template.segments.last() {
        Some(Segment::Rest) => template.segments.len() - 1,
        _ => template.segments.len(),
    };
    if parts.len() < fixed || (fixed == template.segments.len() && parts.len() != fixed) {
        return None;
    }
    for (segment, part) in template.segments.iter().zip(&parts) {
        match segment {
            Segment::Literal(literal) if literal != part => return None,
            Segment::Single if part.is_empty() => return None,
            Segment::Literal(_) | Segment::Single | Segment::Rest => {}
        }
    }
    template
        .variables
        .iter()
        .map(|variable| {
            let end = variable.end.unwrap_or(parts.len());
            let raw = parts.get(variable.start..end)?;
            Some((variable.field.clone(), raw.join("/")))
        })
        .collect()
}

/// Paths built of the API's own segments, verbs, empty segments and colons.
fn api_path() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let piece = prop_oneof![
        Just("v1"),
        Just("streams"),
        Just("topics"),
        Just("messages"),
        Just("events"),
        Just("partitions"),
        Just("consumers"),
        Just("offsets"),
        Just("s"),
        Just("a:b"),
        Just("s:purge"),
        Just("events:batch"),
        Just(""),
        Just(":purge"),
        Just("stats"),
    ];
    (
        proptest::collection::vec(piece, 0..8),
        proptest::option::of(prop_oneof![Just(":purge"), Just(":batch")]),
        any::<bool>(),
    )
        .prop_map(|(pieces, verb, rooted)| {
            format!(
                "{}{}{}",
                if rooted { "/" } else { "" },
                pieces.join("/"),
                verb.unwrap_or_default()
            )
        })
}

/// The API's own routes, each variable filled with one of those pieces (or two).
fn route_path() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let sources: Vec<String> = crate::rest::route_table()
        .expect("routes")
        .routes()
        .iter()
        .map(|route| route.template.to_string())
        .collect();
    let fill = prop_oneof![
        Just("s"),
        Just("a:b"),
        Just(""),
        Just("x/y"),
        Just("s:purge")
    ];
    (proptest::sample::select(sources), fill).prop_map(|(source, fill)| {
        let mut out = String::new();
        let mut inside = false;
        for c in source.chars() {
            match c {
                '{' => {
                    inside = true;
                    out.push_str(fill);
                }
                '}' => inside = false,
                _ if inside => {}
                _ => out.push(c),
            }
        }
        out
    })
}

proptest::proptest! {
    /// Every template of the API (and a double wildcard with a verb) matches a path cut once
    /// as it matched the whole path.
    #[test]
    fn templates_match_a_path_cut_once_as_the_whole_path(
        path in proptest::prop_oneof![api_path(), route_path()]
    ) {
        let table = crate::rest::route_table().expect("routes");
        let extra = PathTemplate::parse("/v1/{name=**}:purge").expect("valid template");
        let templates = table
            .routes()
            .iter()
            .map(|route| &route.template)
            .chain(std::iter::once(&extra));
        for template in templates {
            let cut = Parts::of(&path).and_then(|parts| template.matches_parts(&parts));
            proptest::prop_assert_eq!(cut, matched_whole(template, &path), "{} on {}", template, path);
        }
    }

    #[test]
    fn percent_decoding_undoes_percent_encoding(value in "\\PC{1,40}") {
        let encoded: String = value
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { char::from(b).to_string() } else { format!("%{b:02X}") })
            .collect();
        proptest::prop_assert_eq!(decode(&encoded), Ok(value.clone()));
        let bound = bind("/v1/streams/{stream}", &format!("/v1/streams/{encoded}"));
        let decoded = bound.and_then(|b| b.into_iter().next()).map(|(_, v)| decode(&v));
        proptest::prop_assert_eq!(decoded, Some(Ok(value.clone())));
    }

    #[test]
    fn any_path_is_matched_or_refused_without_panicking(path in "\\PC{0,200}") {
        let template = PathTemplate::parse("/v1/streams/{stream}/topics/{topic=**}:purge")
            .expect("valid template");
        let _ = template.matches(&path);
        let _ = decode(&path);
        let normal = normalise(&path);
        proptest::prop_assert_eq!(normalise(&normal), normal.clone(), "normalising twice changes nothing");
    }
}
