//! Safe defaults for browsers: no cross-origin access unless origins are listed, `*` only with a
//! key, and `ALLOWED_HOSTS` against DNS rebinding.

use std::process::Command;

use iggy_gateway::proto::{self, stream_service_client::StreamServiceClient};
use tonic::{Code, transport::Endpoint};
use tonic_types::StatusExt;

use crate::helpers::{TestApp, spawn_app, spawn_configured};

async fn preflight(app: &TestApp, path: &str) -> reqwest::Response {
    app.http1
        .request(reqwest::Method::OPTIONS, app.url(path))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,x-grpc-web,x-api-key",
        )
        .send()
        .await
        .expect("sent")
}

fn cors_headers(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .keys()
        .map(|name| name.as_str().to_owned())
        .filter(|name| name.starts_with("access-control-"))
        .collect()
}

#[tokio::test]
async fn by_default_no_answer_allows_any_other_origin() {
    let app = spawn_app().await;
    let simple = app
        .http1
        .get(app.url("/v1/streams"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("sent");
    assert_eq!(simple.status(), 200, "the call itself is served");
    assert_eq!(cors_headers(&simple), Vec::<String>::new());

    let grpc_web = app
        .http1
        .post(app.url("/iggy.gateway.v1.StreamService/ListStreams"))
        .header("origin", "https://evil.example")
        .header("content-type", "application/grpc-web+proto")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .expect("sent");
    assert_eq!(grpc_web.status(), 200);
    assert_eq!(cors_headers(&grpc_web), Vec::<String>::new());

    for path in ["/v1/streams", "/iggy.gateway.v1.StreamService/ListStreams"] {
        let answer = preflight(&app, path).await;
        assert_eq!(
            cors_headers(&answer),
            Vec::<String>::new(),
            "a preflight to {path} allows nothing ({})",
            answer.status()
        );
    }
}

#[test]
fn any_origin_without_an_api_key_exits_78_naming_the_variable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = Command::new(env!("CARGO_BIN_EXE_iggy-gateway"))
        .env("PORT", "0")
        .env("DATA_DIR", dir.path())
        .env("CORS_ALLOWED_ORIGINS", "*")
        .env_remove("API_KEY")
        .env_remove("IGGY_CONNECTION_STRING")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(78), "EX_CONFIG");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("CORS_ALLOWED_ORIGINS=* needs API_KEY"),
        "{stderr}"
    );
}

fn only_gateway_example(c: &mut iggy_gateway::config::Config) {
    c.edge.allowed_hosts = vec!["gateway.example".parse().expect("a host")];
}

async fn rest_with_host(app: &TestApp, host: &str) -> reqwest::Response {
    app.http1
        .get(app.url("/v1/streams"))
        .header("host", host)
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn allowed_hosts_refuses_another_host_over_rest_and_accepts_a_listed_one() {
    let app = spawn_configured(only_gateway_example).await;
    let rebound = rest_with_host(&app, "evil.example").await;
    assert_eq!(rebound.status(), 421, "Misdirected Request");
    let problem: serde_json::Value = rebound.json().await.expect("problem");
    assert_eq!(problem["reason"], "HOST_NOT_ALLOWED");
    // The code other protocols get for it, not one read off 421.
    assert_eq!(problem["code"], "PERMISSION_DENIED");
    assert_eq!(problem["status"], 421);
    assert_eq!(
        rest_with_host(&app, &app.addr.to_string()).await.status(),
        421,
        "the gateway's own address is not listed either"
    );

    let listed = rest_with_host(&app, &format!("gateway.example:{}", app.addr.port())).await;
    assert_eq!(listed.status(), 200);
    assert_eq!(rest_with_host(&app, "GATEWAY.example").await.status(), 200);
}

#[tokio::test]
async fn allowed_hosts_refuses_another_authority_over_grpc_and_accepts_a_listed_one() {
    let app = spawn_configured(only_gateway_example).await;
    // The test client names 127.0.0.1:PORT as its :authority.
    let status = app
        .streams
        .clone()
        .list_streams(proto::ListStreamsRequest {})
        .await
        .expect_err("not a listed host");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(
        status.get_details_error_info().expect("reason").reason,
        "HOST_NOT_ALLOWED"
    );
    let mut health = app.health.clone();
    let probe = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect_err("health probes name a host too");
    assert_eq!(probe.code(), Code::PermissionDenied);

    let grpc_web = app
        .http1
        .post(app.url("/iggy.gateway.v1.StreamService/ListStreams"))
        .header("content-type", "application/grpc-web+proto")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .expect("sent");
    assert_eq!(grpc_web.status(), 200);
    assert_eq!(grpc_web.headers()["grpc-status"], "7", "PERMISSION_DENIED");

    let listed = Endpoint::from_shared(format!("http://{}", app.addr))
        .expect("uri")
        .origin("http://gateway.example".parse().expect("origin"))
        .connect()
        .await
        .expect("connects");
    StreamServiceClient::new(listed)
        .list_streams(proto::ListStreamsRequest {})
        .await
        .expect("a listed authority is served");
}

#[tokio::test]
async fn a_listed_host_without_a_port_accepts_any_port() {
    let app = spawn_configured(|c| {
        c.edge.allowed_hosts = vec!["127.0.0.1".parse().expect("a host")];
    })
    .await;
    app.streams
        .clone()
        .list_streams(proto::ListStreamsRequest {})
        .await
        .expect("127.0.0.1:PORT is listed");
    assert_eq!(rest_with_host(&app, "localhost").await.status(), 421);
}

async fn preflight_from(
    app: &TestApp,
    origin: &str,
    path: &str,
    headers: &str,
) -> reqwest::Response {
    app.http1
        .request(reqwest::Method::OPTIONS, app.url(path))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", headers)
        .send()
        .await
        .expect("sent")
}

fn header_text(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase()
}

#[tokio::test]
async fn the_preflight_allows_the_headers_a_browser_client_asks_for_from_an_allowed_origin() {
    let app = spawn_configured(|config| {
        config.edge.cors_allowed_origins = vec!["http://app.example".into()];
    })
    .await;
    let asked = "content-type,x-grpc-web,x-tenant,connect-protocol-version,connect-timeout-ms,idempotency-key";
    let allowed = preflight_from(
        &app,
        "http://app.example",
        "/iggy.gateway.v1.StreamService/ListStreams",
        asked,
    )
    .await;
    assert_eq!(
        header_text(&allowed, "access-control-allow-origin"),
        "http://app.example"
    );
    let allow_headers = header_text(&allowed, "access-control-allow-headers");
    for name in asked.split(',') {
        assert!(
            allow_headers.contains(name),
            "{name} not in {allow_headers}"
        );
    }
    // Another origin gets nothing it could use.
    let other = preflight_from(&app, "http://evil.example", "/v1/streams", asked).await;
    assert_eq!(header_text(&other, "access-control-allow-origin"), "");

    // Answers expose what browser clients of every protocol read.
    let answer = app
        .http1
        .get(app.url("/v1/streams"))
        .header("origin", "http://app.example")
        .send()
        .await
        .expect("sent");
    let exposed = header_text(&answer, "access-control-expose-headers");
    for name in [
        "grpc-status",
        "grpc-message",
        "x-request-id",
        "etag",
        "location",
        "idempotent-replayed",
        "retry-after",
    ] {
        assert!(exposed.contains(name), "{name} not in {exposed}");
    }
}

#[tokio::test]
async fn a_configured_header_list_limits_the_preflight() {
    let app = spawn_configured(|config| {
        config.edge.cors_allowed_origins = vec!["http://app.example".into()];
        config.edge.cors_allowed_headers = vec!["content-type".into(), "x-grpc-web".into()];
    })
    .await;
    let answer = preflight_from(&app, "http://app.example", "/v1/streams", "x-tenant").await;
    let allow_headers = header_text(&answer, "access-control-allow-headers");
    assert!(allow_headers.contains("x-grpc-web") && !allow_headers.contains("x-tenant"));
}

#[tokio::test]
async fn grpc_web_with_json_bodies_is_refused_in_grpc_web_terms() {
    let app = spawn_app().await;
    let answer = app
        .http1
        .post(app.url("/iggy.gateway.v1.StreamService/ListStreams"))
        .header("content-type", "application/grpc-web+json")
        .header("x-grpc-web", "1")
        .body("{}")
        .send()
        .await
        .expect("answered");
    assert_eq!(
        answer.status(),
        200,
        "gRPC-Web carries its status in grpc-status"
    );
    assert_eq!(header_text(&answer, "grpc-status"), "12");
    assert!(
        header_text(&answer, "grpc-message").contains("protobuf"),
        "{:?}",
        answer.headers()
    );
}

#[tokio::test]
async fn a_page_on_another_origin_cannot_make_a_browser_purge_a_stream() {
    // What a page's `fetch(url, {method: "POST", mode: "no-cors"})` or a form sends: no
    // preflight, so CORS never asks; the answer is hidden from the page, the purge would not be.
    let app =
        spawn_configured(|c| c.edge.cors_allowed_origins = vec!["https://app.example".into()])
            .await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    app.send_texts("orders", "created", 0, &["kept"]).await;
    let purge = |origin: String, content_type: Option<&'static str>| {
        let mut request = app
            .http1
            .post(app.url("/v1/streams/orders/topics/created:purge"))
            .header("origin", origin);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        request.send()
    };
    for content_type in [
        None,
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let refused = purge("https://evil.example".into(), content_type)
            .await
            .expect("sent");
        assert_eq!(refused.status(), 403, "{content_type:?}");
        let problem: serde_json::Value = refused.json().await.expect("problem");
        assert_eq!(problem["reason"], "ORIGIN_NOT_ALLOWED", "{problem}");
    }
    let refused = app
        .streams
        .clone()
        .get_stream(proto::GetStreamRequest {
            stream: "orders".into(),
        })
        .await
        .expect("stream")
        .into_inner();
    assert_eq!(
        refused.stream.map(|s| s.messages_count),
        Some(1),
        "nothing purged"
    );

    // The listed origin, the gateway's own pages, and clients that are no browsers may.
    for origin in [
        "https://app.example".to_owned(),
        format!("http://{}", app.addr),
    ] {
        let answer = purge(origin.clone(), None).await.expect("sent");
        assert_eq!(answer.status(), 204, "{origin}");
    }
    let answer = app
        .http1
        .post(app.url("/v1/streams/orders/topics/created:purge"))
        .send()
        .await
        .expect("sent");
    assert_eq!(answer.status(), 204, "no Origin: not a browser");

    // A type that is not even text is still one a browser sends unasked.
    let odd = reqwest::header::HeaderValue::from_bytes(b"text/plain;x=\xe9").expect("header");
    let refused = app
        .http1
        .post(app.url("/v1/streams/orders/topics/created:purge"))
        .header("origin", "https://evil.example")
        .header("content-type", odd)
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 403);
}

#[tokio::test]
async fn a_page_on_another_site_cannot_commit_a_consumers_offset_with_a_get() {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    app.send_texts("orders", "created", 0, &["a", "b"]).await;
    let poll = "/v1/streams/orders/topics/created/messages?partition_id=0&consumer=billing&auto_commit=true&count=10";
    // An `<img>` sends no Origin, but says it comes from another site; a fetch says its origin.
    for (name, value) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "https://evil.example"),
    ] {
        let refused = app
            .http1
            .get(app.url(poll))
            .header(name, value)
            .send()
            .await
            .expect("sent");
        assert_eq!(refused.status(), 403, "{name}: {value}");
    }
    assert_eq!(
        app.stored_offset("orders", "created", "billing", 0).await,
        None,
        "nothing committed"
    );
    // A read that commits nothing is served; so is the commit from the page's own site, or from
    // a client that is no browser.
    let read = app
        .http1
        .get(app.url("/v1/streams/orders/topics/created/messages?partition_id=0&count=10"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .expect("sent");
    assert_eq!(read.status(), 200);
    let own = app
        .http1
        .get(app.url(poll))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .expect("sent");
    assert_eq!(own.status(), 200);
    assert_eq!(
        app.stored_offset("orders", "created", "billing", 0).await,
        Some(1)
    );
}
