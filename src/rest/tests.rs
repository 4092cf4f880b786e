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

/// The API's OpenAPI document, with `BATCH_MAX_SIZE` 1000 and `POLL_MAX_COUNT` 500.
fn openapi_of_the_api() -> serde_json::Value {
    let table = route_table().expect("route table builds");
    openapi::document(
        &table,
        openapi::Limits {
            batch_max: 1000,
            poll_max: 500,
        },
    )
}

/// The schema of one component, by message name.
fn component(document: &serde_json::Value, message: &str) -> serde_json::Value {
    document["components"]["schemas"][format!("iggy_gateway_v1_{message}")].clone()
}

#[test]
fn openapi_states_the_buf_validate_rules_of_the_protos() {
    let document = openapi_of_the_api();

    let body = |path: &str, method: &str| {
        document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
            .clone()
    };
    let create = body("/v1/streams", "post");
    assert_eq!(create["required"], serde_json::json!(["name"]));
    assert_eq!(
        create["additionalProperties"], false,
        "unknown fields are refused"
    );
    let name = &create["properties"]["name"];
    assert_eq!(name["minLength"], 1);
    assert_eq!(name["maxLength"], 255);
    assert_eq!(name["not"]["enum"], serde_json::json!([".", ".."]));
    assert!(
        name["pattern"].as_str().is_some_and(|p| p.contains("0-9")),
        "{name}"
    );

    let partitions = body("/v1/streams/{stream}/topics/{topic}/partitions", "post");
    let count = &partitions["properties"]["partitions_count"];
    assert_eq!(count["minimum"], 1);
    assert_eq!(count["maximum"], 1000);
    // The path sets `stream`: the body's one keeps its type but not its rules.
    assert!(
        partitions["properties"]["stream"]["anyOf"][0]
            .get("minLength")
            .is_none()
    );

    // Nullable (proto3 JSON's "unset"), then the rule: empty, or a UUID.
    let id = &component(&document, "Message")["properties"]["id"]["anyOf"][0];
    assert_eq!(
        id["anyOf"][0]["const"], "",
        "empty: the gateway assigns one"
    );
    assert_eq!(id["anyOf"][1]["format"], "uuid");

    let header_value = component(&document, "HeaderValue");
    let kind = |name: &str| header_value["properties"][name]["anyOf"][0].clone();
    assert_eq!(kind("string_value")["maxLength"], 255);
    assert_eq!(kind("bytes_value")["maxLength"], 340, "255 bytes in base64");
    assert_eq!(
        header_value["allOf"][1]["anyOf"].as_array().map(Vec::len),
        Some(6),
        "one kind is required: {header_value}"
    );
}

#[test]
fn openapi_requires_a_body_only_where_an_empty_one_breaks_a_rule() {
    let document = openapi_of_the_api();
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
    let send = &document["paths"]["/v1/streams/{stream}/topics/{topic}/messages"]["post"];
    let body = &send["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["properties"]["messages"]["minItems"], 1);
    assert_eq!(
        body["properties"]["messages"]["maxItems"], 1000,
        "BATCH_MAX_SIZE"
    );
    assert_eq!(body["required"], serde_json::json!(["messages"]));
    let store = &document["paths"]["/v1/streams/{stream}/topics/{topic}/consumers/{consumer}/offsets/{partition_id}"]
        ["put"];
    assert_eq!(
        store["requestBody"]["content"]["application/json"]["schema"]["required"],
        serde_json::json!(["offset"])
    );
    let poll = &document["paths"]["/v1/streams/{stream}/topics/{topic}/messages"]["get"];
    let count = poll["parameters"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["name"] == "count"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(count["required"], true, "0 breaks gte 1: {count}");
    assert_eq!(
        count["schema"]["maximum"], 500,
        "POLL_MAX_COUNT as configured"
    );
    // A path parameter carries its field's rules too.
    let parameters = &document["paths"]["/v1/streams/{stream}"]["get"]["parameters"];
    assert_eq!(parameters[0]["schema"]["minLength"], 1);
    assert_eq!(parameters[0]["schema"]["maxLength"], 255);
}

#[test]
fn openapi_patterns_match_what_the_parser_takes() {
    let at_most = |max: &str| regex::Regex::new(&format!("^0*{}$", openapi::decimal_at_most(max)));
    let u64_max = at_most(&u64::MAX.to_string()).expect("compiles");
    for good in [
        "0",
        "7",
        "18446744073709551615",
        "0018446744073709551615",
        "9999999999999999999",
    ] {
        assert!(u64_max.is_match(good), "{good}");
    }
    for bad in [
        "18446744073709551616",
        "99999999999999999999",
        "-1",
        "1e3",
        "",
    ] {
        assert!(!u64_max.is_match(bad), "{bad}");
    }
    let base64 = regex::Regex::new(openapi::BASE64).expect("compiles");
    for good in ["", "QQ", "QQ==", "QUJD", "_-8=", "+/8="] {
        assert!(base64.is_match(good), "{good}");
    }
    for bad in ["Q", "QU JD", "+-8=", "QQ==="] {
        assert!(!base64.is_match(bad), "{bad}");
    }
}

/// The descriptors are decoded once for the process: every route table, Connect's procedures
/// and the codec share one pool (megabytes decoded), not a copy each.
#[test]
fn route_tables_share_the_process_descriptor_pool() {
    let shared = crate::descriptors::pool().expect("the API's descriptors");
    for _ in 0..2 {
        let table = route_table().expect("route table builds");
        let route = table.routes().first().expect("a route");
        assert!(route.method.parent_pool() == &shared, "a pool of its own");
    }
    let fresh =
        prost_reflect::DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).expect("decodes");
    assert!(
        fresh != shared,
        "pools compare by identity, so the check above can fail"
    );
}

/// The process's pool is decoded without the protos' comments (they were about half of its
/// memory); OpenAPI's descriptions read them from the full set, which reflection serves.
#[test]
fn the_process_pool_keeps_no_comments_and_openapi_still_shows_them() {
    let shared = crate::descriptors::pool().expect("the API's descriptors");
    assert!(
        shared
            .file_descriptor_protos()
            .all(|file| file.source_code_info.is_none())
    );
    let full =
        prost_reflect::DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).expect("decodes");
    assert!(
        full.get_service_by_name("iggy.gateway.v1.StreamService")
            .is_some_and(|service| service
                .parent_file()
                .file_descriptor_proto()
                .source_code_info
                .is_some()),
        "the full set keeps the comments"
    );
    // Apart from the comments, the two sets hold the same files, and the same options on each
    // method (`google.api.http`, `required_scope`), which the route and scope tables read.
    for file in full.file_descriptor_protos() {
        let mut stripped = file.clone();
        stripped.source_code_info = None;
        let lean = shared.get_file_by_name(file.name()).expect("the same file");
        assert_eq!(lean.file_descriptor_proto(), &stripped, "{}", file.name());
    }
    for service in full.services() {
        for method in service.methods() {
            let lean = shared
                .get_service_by_name(service.full_name())
                .and_then(|lean| lean.methods().find(|m| m.name() == method.name()))
                .expect("the same method");
            // Encoded: messages of two pools never compare equal.
            assert!(
                prost::Message::encode_to_vec(&lean.options())
                    == prost::Message::encode_to_vec(&method.options()),
                "{}",
                method.full_name()
            );
        }
    }
    let document = openapi_of_the_api();
    let summary = document["paths"]["/v1/streams"]["post"]["summary"]
        .as_str()
        .unwrap_or_default();
    assert!(summary.starts_with("Creates a stream"), "{summary:?}");
}

/// The document is written on its first request, once, as the route table and settings give it.
#[test]
fn the_openapi_document_is_written_when_first_asked_for() {
    let table = route_table().expect("route table builds");
    let settings = RestSettings {
        max_body_bytes: 1 << 20,
        strict_query: false,
        batch_max: 1000,
        poll_max: 500,
    };
    let document = Document::new(settings);
    assert!(
        document.written.get().is_none(),
        "nothing is written at start-up"
    );
    let first = document.bytes(&table).clone().expect("written");
    let again = document.bytes(&table).clone().expect("written");
    assert_eq!(first.as_ptr(), again.as_ptr(), "written once");
    let expected =
        serde_json::to_vec_pretty(&openapi_document(&table, settings)).expect("serializes");
    assert_eq!(first.as_ref(), expected.as_slice());
}
