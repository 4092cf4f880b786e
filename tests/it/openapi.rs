//! `/openapi.json` is a valid OpenAPI 3.1 document covering every REST route, and `/docs`
//! renders it without anything from outside the gateway.

use iggy_gateway::rest;
use serde_json::{Value, json};

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
    let body = &create["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["type"], "object");
    assert_eq!(body["required"], serde_json::json!(["name"]));
    assert!(create["responses"]["201"].is_object());
    let location = &create["responses"]["201"]["headers"]["Location"];
    assert_eq!(location["schema"]["format"], "uri-reference");
    assert!(
        location["description"]
            .as_str()
            .is_some_and(|d| d.contains("/v1/streams/{stream}")),
        "{location}"
    );
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
    // By name or by number, as proto3 JSON takes an enum; on a query string, by the short
    // names too, listed after the canonical ones.
    assert_eq!(
        strategy["schema"]["anyOf"][0]["enum"],
        json!([
            "POLLING_STRATEGY_UNSPECIFIED",
            "POLLING_STRATEGY_OFFSET",
            "POLLING_STRATEGY_TIMESTAMP",
            "POLLING_STRATEGY_FIRST",
            "POLLING_STRATEGY_LAST",
            "POLLING_STRATEGY_NEXT",
            "unspecified",
            "offset",
            "timestamp",
            "first",
            "last",
            "next"
        ])
    );
    assert_eq!(
        strategy["schema"]["anyOf"][0]["enum"][5],
        "POLLING_STRATEGY_NEXT"
    );
    assert_eq!(strategy["schema"]["anyOf"][1]["enum"][5], 5);
    let schemas = &document["components"]["schemas"];
    assert_eq!(body["properties"]["name"]["type"], "string");
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

/// A validator for `schema` whose `$ref`s resolve inside `document` (its components).
fn validator_in(document: &Value, schema: &Value) -> jsonschema::Validator {
    let mut root = schema.clone();
    root.as_object_mut()
        .expect("a schema object")
        .insert("components".into(), document["components"].clone());
    jsonschema::validator_for(&root).expect("the schema compiles")
}

#[tokio::test]
async fn streams_are_declared_as_sse_and_ndjson_items_and_integers_with_their_real_ranges() {
    let app = spawn_app().await;
    let document: Value = app
        .http1
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON");

    let subscribe =
        &document["paths"]["/v1/streams/{stream}/topics/{topic}/messages:subscribe"]["get"];
    let answer = &subscribe["responses"]["200"];
    let media: Vec<&String> = answer["content"]
        .as_object()
        .expect("content")
        .keys()
        .collect();
    assert_eq!(media, ["text/event-stream", "application/x-ndjson"]);
    assert!(
        answer["description"]
            .as_str()
            .is_some_and(|d| d.contains("OpenAPI 3.1 has no stream type")),
        "{answer}"
    );
    let sse = &answer["content"]["text/event-stream"]["schema"];
    let events: Vec<(&str, &Value)> = sse["oneOf"]
        .as_array()
        .expect("one schema per event")
        .iter()
        .filter_map(|e| {
            Some((
                e["properties"]["event"]["const"].as_str()?,
                &e["properties"]["data"]["contentSchema"],
            ))
        })
        .collect();
    assert_eq!(
        events,
        [
            (
                "message",
                &json!({"$ref": "#/components/schemas/iggy_gateway_v1_PolledMessage"})
            ),
            (
                "heartbeat",
                &json!({"$ref": "#/components/schemas/iggy_gateway_v1_Heartbeat"})
            ),
            ("problem", &json!({"$ref": "#/components/schemas/Problem"})),
        ]
    );
    assert_eq!(
        sse["properties"]["data"]["contentMediaType"],
        "application/json"
    );
    let last_event_id = subscribe["parameters"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "Last-Event-ID"))
        .expect("Last-Event-ID is declared");
    assert_eq!(last_event_id["in"], "header");

    // What the gateway really streams validates against the NDJSON item schema.
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    app.send_texts("orders", "created", 0, &["a"]).await;
    let mut stream = app
        .http1
        .get(app.url(
            "/v1/streams/orders/topics/created/messages:subscribe?strategy=POLLING_STRATEGY_FIRST",
        ))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .expect("sent");
    let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), stream.chunk())
        .await
        .expect("in time")
        .expect("ok")
        .expect("a line");
    let line: Value = serde_json::from_slice(&chunk).expect("one JSON line");
    let ndjson = validator_in(
        &document,
        &answer["content"]["application/x-ndjson"]["schema"],
    );
    assert!(ndjson.is_valid(&line), "{line}");
    assert!(ndjson.is_valid(&serde_json::json!({"error": {"type": "about:blank", "title": "Service Unavailable", "status": 503, "detail": "x", "reason": "UNAVAILABLE", "code": "UNAVAILABLE"}})));
    assert!(!ndjson.is_valid(&serde_json::json!({"message": 5})));

    // uint32 is uint32 (a validator takes 3,000,000,000), 64-bit integers are decimal strings
    // or numbers within their range.
    let schemas = &document["components"]["schemas"];
    // Each property may also be `null` (proto3 JSON's "unset"): the type is the first branch.
    let id = &schemas["iggy_gateway_v1_Stream"]["properties"]["id"]["anyOf"][0];
    assert_eq!(
        (&id["format"], &id["minimum"], &id["maximum"]),
        (
            &Value::from("uint32"),
            &Value::from(0),
            &Value::from(4_294_967_295_u64)
        )
    );
    let uint32 = jsonschema::validator_for(id).expect("compiles");
    assert!(uint32.is_valid(&Value::from(3_000_000_000_u64)));
    assert!(!uint32.is_valid(&Value::from(4_294_967_296_u64)));
    assert!(!uint32.is_valid(&Value::from(-1)));
    let size = &schemas["iggy_gateway_v1_Stream"]["properties"]["size_bytes"]["anyOf"][0];
    assert_eq!(size["format"], "uint64");
    let uint64 = jsonschema::validator_for(size).expect("compiles");
    assert!(uint64.is_valid(&Value::from("18446744073709551615")));
    assert!(uint64.is_valid(&Value::from(42)));
    assert!(!uint64.is_valid(&Value::from("-1")));
    assert!(!uint64.is_valid(&Value::from("12 bytes")));
    let partition = subscribe["parameters"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "partition_id"))
        .expect("partition_id is a query parameter");
    assert_eq!(partition["schema"]["format"], "uint32");

    // A created stream, as answered, validates against its schema.
    let (status, created) = app
        .post_json("/v1/streams", serde_json::json!({"name": "payments"}))
        .await;
    assert_eq!(status, 201);
    let stream_schema = validator_in(
        &document,
        &json!({"$ref": "#/components/schemas/iggy_gateway_v1_CreateStreamResponse"}),
    );
    assert!(stream_schema.is_valid(&created), "{created}");
}
