//! Safe defaults for browsers: no cross-origin access unless origins are listed, `*` only with a
//! key, and `ALLOWED_HOSTS` against DNS rebinding.

use std::process::Command;

use crate::helpers::{TestApp, spawn_app};

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
