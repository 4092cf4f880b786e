use axum::http::{HeaderMap, HeaderValue, header};

use super::{Tags, tags};

fn parse(values: &[&str]) -> Result<Option<Vec<String>>, u16> {
    let mut headers = HeaderMap::new();
    for value in values {
        headers.append(
            header::IF_MATCH,
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    match tags(&headers, &header::IF_MATCH) {
        Ok(None) => Ok(None),
        Ok(Some(Tags::Any)) => Ok(Some(vec!["*".to_owned()])),
        Ok(Some(Tags::List(list))) => Ok(Some(list)),
        Err(problem) => Err(problem.status()),
    }
}

#[test]
fn entity_tags_are_read_as_rfc_9110_writes_them() {
    assert_eq!(parse(&[]), Ok(None));
    assert_eq!(parse(&["*"]), Ok(Some(vec!["*".into()])));
    assert_eq!(parse(&["\"abc\""]), Ok(Some(vec!["abc".into()])));
    // A weak tag keeps its form, so it can never equal a strong etag.
    assert_eq!(parse(&["W/\"abc\""]), Ok(Some(vec!["W/\"abc\"".into()])));
    assert_eq!(
        parse(&["\"a\", \"b\"", "\"c\""]),
        Ok(Some(vec!["a".into(), "b".into(), "c".into()]))
    );
    assert_eq!(parse(&["\"\""]), Ok(Some(vec![String::new()])));
}

#[test]
fn malformed_preconditions_are_refused() {
    for value in ["abc", "\"abc", "*, \"a\"", "\"a\", *", "*x", "W/abc"] {
        assert_eq!(parse(&[value]), Err(400), "{value}");
    }
}
