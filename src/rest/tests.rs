use http::Method;

use super::*;

#[test]
fn every_annotated_rpc_gets_a_route() {
    let table = route_table().expect("route table builds");
    let find = |method: Method, path: &str| match table.find(&method, path) {
        routes::Lookup::Found(route, bindings) => Some((route.grpc_path.clone(), bindings)),
        _ => None,
    };
    assert_eq!(
        find(Method::POST, "/v1/streams").map(|f| f.0),
        Some("/iggy.gateway.v1.StreamService/CreateStream".to_owned())
    );
    assert_eq!(
        find(Method::POST, "/v1/streams/orders/topics/created:purge"),
        Some((
            "/iggy.gateway.v1.TopicService/PurgeTopic".to_owned(),
            vec![
                ("stream".into(), "orders".into()),
                ("topic".into(), "created".into())
            ]
        ))
    );
    assert!(matches!(
        table.find(&Method::PUT, "/v1/streams"),
        routes::Lookup::MethodNotAllowed(_)
    ));
}

#[test]
fn create_calls_answer_201_and_deletes_204() {
    let table = route_table().expect("route table builds");
    let status = |grpc: &str| {
        table
            .routes()
            .iter()
            .find(|r| r.grpc_path.ends_with(grpc))
            .map(|r| r.success.as_u16())
    };
    assert_eq!(status("/CreateStream"), Some(201));
    assert_eq!(status("/DeleteStream"), Some(204));
    assert_eq!(status("/GetStream"), Some(200));
}

#[test]
fn creates_name_their_resource_by_the_get_route_under_their_path() {
    let table = route_table().expect("route table builds");
    let created = |method: &str, path: &str| {
        table
            .routes()
            .iter()
            .find(|r| r.http_method.as_str() == method && r.template.to_string() == path)
            .and_then(|r| r.created.as_ref())
            .map(|c| c.template().to_owned())
    };
    assert_eq!(
        created("POST", "/v1/streams").as_deref(),
        Some("/v1/streams/{stream}")
    );
    assert_eq!(
        created("POST", "/streams/{stream}/topics").as_deref(),
        Some("/streams/{stream}/topics/{topic}")
    );
    // Messages are created in batches that no GET route names one by one.
    assert_eq!(
        created("POST", "/v1/streams/{stream}/topics/{topic}/messages"),
        None
    );
}

/// The schema of one component, by message name.
fn component(document: &serde_json::Value, message: &str) -> serde_json::Value {
    document["components"]["schemas"][format!("iggy_gateway_v1_{message}")].clone()
}

#[test]
fn openapi_states_the_buf_validate_rules_of_the_protos() {
    let table = route_table().expect("route table builds");
    let document = openapi::document(&table);

    let name = &component(&document, "CreateStreamRequest")["properties"]["name"];
    assert_eq!(name["minLength"], 1);
    assert_eq!(name["maxLength"], 255);
    assert_eq!(name["not"]["enum"], serde_json::json!([".", ".."]));
    assert!(
        name["pattern"].as_str().is_some_and(|p| p.contains("0-9")),
        "{name}"
    );

    let count = &component(&document, "CreatePartitionsRequest")["properties"]["partitions_count"];
    assert_eq!(
        (&count["minimum"], &count["maximum"]),
        (&1.into(), &1000.into())
    );

    let id = &component(&document, "Message")["properties"]["id"];
    assert_eq!(
        id["anyOf"][0]["const"], "",
        "empty: the gateway assigns one"
    );
    assert_eq!(id["anyOf"][1]["format"], "uuid");

    let send = component(&document, "SendMessagesRequest");
    assert_eq!(send["properties"]["messages"]["minItems"], 1);
    let store = component(&document, "StoreConsumerOffsetRequest");
    assert_eq!(store["required"], serde_json::json!(["offset"]));
}

#[test]
fn openapi_requires_a_body_only_where_an_empty_one_breaks_a_rule() {
    let table = route_table().expect("route table builds");
    let document = openapi::document(&table);
    let body_required = |path: &str, method: &str| {
        document["paths"][path][method]["requestBody"]["required"].as_bool()
    };
    assert_eq!(
        body_required("/v1/streams/{stream}:purge", "post"),
        Some(false)
    );
    assert_eq!(
        body_required("/v1/streams/{stream}/topics/{topic}:purge", "post"),
        Some(false)
    );
    assert_eq!(body_required("/v1/streams", "post"), Some(true));
    assert_eq!(
        body_required("/v1/streams/{stream}/topics/{topic}/messages", "post"),
        Some(true)
    );
    // A path parameter carries its field's rules too.
    let parameters = &document["paths"]["/v1/streams/{stream}"]["get"]["parameters"];
    assert_eq!(parameters[0]["schema"]["minLength"], 1);
    assert_eq!(parameters[0]["schema"]["maxLength"], 255);
}
