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
fn values_are_percent_decoded() {
    assert_eq!(
        bind("/v1/streams/{stream}", "/v1/streams/a%20b%2Fc"),
        pairs(&[("stream", "a b/c")])
    );
    assert_eq!(bind("/v1/streams/{stream}", "/v1/streams/%ZZ"), None);
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
