//! `/openapi.json` is a valid OpenAPI 3.1 document covering every REST route, and `/docs`
//! renders it without anything from outside the gateway.

use iggy_gateway::rest;
use serde_json::Value;

use crate::helpers::spawn_app;

const OAS_31_SCHEMA: &str = include_str!("fixtures/openapi-3.1-schema.json");

#[tokio::test]
async fn openapi_document_is_valid_and_covers_every_route() {
    let app = spawn_app().await;
    let response = app
        .http1
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let document: Value = response.json().await.expect("JSON");

    let schema: Value = serde_json::from_str(OAS_31_SCHEMA).expect("schema");
    let validator = jsonschema::validator_for(&schema).expect("the OpenAPI 3.1 schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(&document)
        .map(|e| format!("{} at {}", e, e.instance_path))
        .collect();
    assert!(errors.is_empty(), "invalid OpenAPI: {errors:#?}");
    // The validator does bite: a document without `info` is refused.
    let mut broken = document.clone();
    broken.as_object_mut().expect("object").remove("info");
    assert!(!validator.is_valid(&broken));

    let table = rest::route_table().expect("routes");
    for route in table.routes() {
        let path = route.template.openapi_path();
        let method = route.http_method.as_str().to_ascii_lowercase();
        let operation = &document["paths"][&path][&method];
        assert!(
            operation.is_object(),
            "{method} {path} is missing from the document"
        );
        assert!(
            operation["responses"]["default"]["content"]["application/problem+json"].is_object(),
            "{method} {path} documents its problem answer"
        );
    }

    // Spot checks: parameters, bodies, and descriptions taken from the proto comments.
    let poll = &document["paths"]["/v1/streams/{stream}/topics/{topic}/messages"]["get"];
    let names: Vec<&str> = poll["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for expected in [
        "stream",
        "topic",
        "partition_id",
        "consumer",
        "strategy",
        "count",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    let create = &document["paths"]["/v1/streams"]["post"];
    assert!(create["requestBody"]["content"]["application/json"]["schema"]["$ref"].is_string());
    assert!(create["responses"]["201"].is_object());
    assert!(
        create["description"]
            .as_str()
            .is_some_and(|d| d.contains("0-based id")),
        "descriptions come from the proto comments"
    );
    let strategy = poll["parameters"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "strategy"))
        .expect("strategy parameter");
    assert_eq!(strategy["in"], "query");
    assert_eq!(strategy["schema"]["enum"][5], "POLLING_STRATEGY_NEXT");
    let schemas = &document["components"]["schemas"];
    assert_eq!(
        schemas["iggy_gateway_v1_CreateStreamRequest"]["properties"]["name"]["type"],
        "string"
    );
    assert!(schemas["Problem"]["properties"]["reason"].is_object());
}

#[tokio::test]
async fn the_docs_page_renders_the_document_locally() {
    let app = spawn_app().await;
    let response = app.http1.get(app.url("/docs")).send().await.expect("sent");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .starts_with("text/html")
    );
    let page = response.text().await.expect("page");
    assert!(page.contains("fetch('/openapi.json')"));
    assert!(!page.contains("https://"), "no CDN or outside resource");
}
