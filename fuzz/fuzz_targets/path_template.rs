//! `rest::PathTemplate::parse` / `matches` / `openapi_path` (and the normalisation of
//! percent-encoded unreserved characters inside `matches`), plus `RouteTable::find` on the real
//! route table.
//!
//! Input: the first line is a template, every further line a request path.
#![no_main]

use iggy_gateway::rest::{Lookup, PathTemplate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let source = lines.next().unwrap_or("");
    let paths: Vec<&str> = lines.collect();

    // The real routes see every path too. Whether a path matches a template does not depend on
    // the method, so a path no route matches for GET matches none for the others either: asking
    // again would repeat the same scan (most fuzzed paths match nothing).
    let table = iggy_gateway_fuzz::route_table_ref();
    for path in std::iter::once(source).chain(paths.iter().copied()) {
        if matches!(table.find(&http::Method::GET, path), Lookup::NotFound) {
            continue;
        }
        for method in [
            http::Method::POST,
            http::Method::DELETE,
            http::Method::PATCH,
        ] {
            let _ = table.find(&method, path);
        }
    }

    let Ok(template) = PathTemplate::parse(source) else {
        return;
    };
    assert_eq!(
        template.to_string(),
        source,
        "Display must give back the source"
    );
    let fields: Vec<String> = template.fields().map(str::to_owned).collect();
    let openapi = template.openapi_path();
    if let Ok(again) = PathTemplate::parse(&openapi) {
        let again_fields: Vec<String> = again.fields().map(str::to_owned).collect();
        assert_eq!(
            fields, again_fields,
            "openapi_path {openapi:?} of {source:?} binds other fields"
        );
    }
    for path in paths {
        if let Some(bindings) = template.matches(path) {
            let bound: Vec<&str> = bindings.iter().map(|(f, _)| f.as_str()).collect();
            assert_eq!(
                bound, fields,
                "{source:?} matched {path:?} with other fields"
            );
        }
    }
});
