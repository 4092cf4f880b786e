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
