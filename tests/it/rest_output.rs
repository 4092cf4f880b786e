//! What REST answers carry for HTTP clients, proxies and browsers: `Location` on creates,
//! problem answers and `Allow` lists for every method a path refuses, `OPTIONS` outside CORS,
//! and Server-Sent Events an EventSource can live with (a retry hint, a readable `problem`
//! event, cursors that survive a restart).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use iggy_gateway::config::Config;
use tempfile::TempDir;

use crate::helpers::{TestApp, restart_with, spawn_app, spawn_configured, spawn_with};

const SUBSCRIBE: &str = "/v1/streams/orders/topics/created/messages:subscribe";

async fn app_with_messages(texts: &[&str]) -> TestApp {
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    app.send_texts("orders", "created", 0, texts).await;
    app
}

/// Reads a streamed answer until `done` holds for what arrived, within five seconds.
async fn read_until(response: &mut reqwest::Response, done: impl Fn(&str) -> bool) -> String {
    let mut text = String::new();
    while !done(&text) {
        let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk())
            .await
            .unwrap_or_else(|_| panic!("more in time; so far: {text}"))
            .expect("ok")
            .unwrap_or_else(|| panic!("the stream ended early: {text}"));
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

/// The `data:` JSON of every SSE event named `event`, in order.
fn event_data(text: &str, event: &str) -> Vec<serde_json::Value> {
    let name = format!("event: {event}");
    text.split("\n\n")
        .filter(|block| block.lines().any(|line| line == name))
        .filter_map(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|data| serde_json::from_str(data).expect("JSON data"))
        .collect()
}

#[tokio::test]
async fn sse_starts_with_a_retry_hint_and_an_empty_last_event_id_is_no_cursor() {
    let app = app_with_messages(&["a"]).await;
    // EventSource sends an empty Last-Event-ID before it has seen an id.
    let mut response = app
        .http1
        .get(app.url(&format!("{SUBSCRIBE}?strategy=POLLING_STRATEGY_FIRST")))
        .header("accept", "text/event-stream")
        .header("last-event-id", "")
        .send()
        .await
        .expect("sent");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = read_until(&mut response, |t| t.contains("event: message")).await;
    assert!(text.starts_with("retry: 2000\n\n"), "{text}");
    let messages = event_data(&text, "message");
    assert_eq!(messages[0]["text"], "a", "{text}");
}

#[tokio::test]
async fn accept_with_sse_weighted_zero_gets_ndjson() {
    let app = app_with_messages(&["a"]).await;
    let url = app.url(&format!("{SUBSCRIBE}?strategy=POLLING_STRATEGY_FIRST"));
    let mut refused_sse = app
        .http1
        .get(&url)
        .header("accept", "text/event-stream;q=0, application/x-ndjson")
        .send()
        .await
        .expect("sent");
    assert_eq!(
        refused_sse.headers()["content-type"],
        "application/x-ndjson"
    );
    let text = read_until(&mut refused_sse, |t| t.contains('\n')).await;
    let line: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("a JSON line");
    assert_eq!(line["message"]["text"], "a", "{text}");

    // Weighed above NDJSON, SSE is chosen.
    let preferred = app
        .http1
        .get(&url)
        .header("accept", "application/x-ndjson;q=0.5, text/event-stream")
        .send()
        .await
        .expect("sent");
    assert_eq!(preferred.headers()["content-type"], "text/event-stream");
}

/// POSTs a JSON body and returns the status, the `Location` header and the JSON answer.
async fn create(
    app: &TestApp,
    path: &str,
    body: serde_json::Value,
) -> (u16, String, serde_json::Value) {
    let response = app
        .http1
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    let location = response
        .headers()
        .get("location")
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default();
    (status, location, response.json().await.expect("JSON"))
}

#[tokio::test]
async fn every_create_answers_201_with_the_location_of_what_it_created() {
    let app = spawn_app().await;
    let (status, location, created) = create(
        &app,
        "/v1/streams",
        serde_json::json!({"name": "eu/orders"}),
    )
    .await;
    assert_eq!(status, 201);
    let id = created["stream"]["id"].as_u64().expect("an id");
    assert_eq!(location, format!("/v1/streams/{id}"));
    let (status, found) = app.get_json(&location).await;
    assert_eq!(
        (status, &found["stream"]["name"]),
        (200, &"eu/orders".into())
    );

    // The stream as the request named it (percent-encoded), the topic by its id.
    let (status, location, created) = create(
        &app,
        "/v1/streams/eu%2Forders/topics",
        serde_json::json!({"name": "created", "partitions_count": 1}),
    )
    .await;
    assert_eq!(status, 201);
    let topic = created["topic"]["id"].as_u64().expect("an id");
    assert_eq!(location, format!("/v1/streams/eu%2Forders/topics/{topic}"));
    let (status, found) = app.get_json(&location).await;
    assert_eq!((status, &found["topic"]["name"]), (200, &"created".into()));

    // The original service's routes point at the original GET routes.
    let (status, location, created) =
        create(&app, "/streams", serde_json::json!({"name": "legacy"})).await;
    assert_eq!(status, 201);
    assert_eq!(location, format!("/streams/{}", created["id"]));
    let (status, found) = app.get_json(&location).await;
    assert_eq!((status, &found["name"]), (200, &"legacy".into()));
    let (status, location, created) = create(
        &app,
        "/streams/legacy/topics",
        serde_json::json!({"name": "t1", "partitions_count": 1}),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        location,
        format!("/streams/legacy/topics/{}", created["id"])
    );
    assert_eq!(app.get_json(&location).await.0, 200);

    // A refused create says nothing about a location.
    let (status, location, _) =
        create(&app, "/v1/streams", serde_json::json!({"name": "legacy"})).await;
    assert_eq!((status, location.as_str()), (409, ""));
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn operator_routes_refuse_other_methods_with_a_problem_and_their_allow_list() {
    let app = spawn_app().await;
    for (method, path) in [
        (reqwest::Method::POST, "/health"),
        (reqwest::Method::PUT, "/ready"),
        (reqwest::Method::POST, "/stats"),
        (reqwest::Method::POST, "/metrics"),
        (reqwest::Method::POST, "/openapi.json"),
        (reqwest::Method::DELETE, "/docs"),
    ] {
        let response = app
            .http1
            .request(method.clone(), app.url(path))
            .header("x-request-id", "ops-405")
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 405, "{method} {path}");
        assert_eq!(
            header(&response, "content-type"),
            "application/problem+json"
        );
        assert_eq!(header(&response, "allow"), "GET, HEAD, OPTIONS", "{path}");
        let problem: serde_json::Value = response.json().await.expect("a problem");
        assert_eq!(problem["status"], 405);
        assert_eq!(problem["reason"], "METHOD_NOT_ALLOWED");
        assert_eq!(
            problem["detail"],
            format!("{method} is not allowed on {path}")
        );
        assert_eq!(problem["request_id"], "ops-405");
    }
    // What they take still works, HEAD included.
    let head = app
        .http1
        .head(app.url("/health"))
        .send()
        .await
        .expect("sent");
    assert_eq!(head.status(), 200);
}

#[tokio::test]
async fn a_plain_options_answers_the_paths_allow_list_even_with_cors_on() {
    let app = spawn_configured(|c| {
        c.edge.cors_allowed_origins = vec!["http://app.example".into()];
    })
    .await;
    app.create_stream("orders").await;
    for (path, allow) in [
        ("/v1/streams", "POST, GET, HEAD, OPTIONS"),
        ("/v1/streams/orders", "GET, PATCH, DELETE, HEAD, OPTIONS"),
        ("/health", "GET, HEAD, OPTIONS"),
        ("/openapi.json", "GET, HEAD, OPTIONS"),
        // Without side effects: it also takes Connect's GET.
        (
            "/iggy.gateway.v1.StreamService/ListStreams",
            "GET, POST, OPTIONS",
        ),
        (
            "/iggy.gateway.v1.StreamService/DeleteStream",
            "POST, OPTIONS",
        ),
        ("/grpc.health.v1.Health/Check", "POST, OPTIONS"),
    ] {
        let response = app
            .http1
            .request(reqwest::Method::OPTIONS, app.url(path))
            .send()
            .await
            .expect("sent");
        assert_eq!(response.status(), 204, "{path}");
        assert_eq!(header(&response, "allow"), allow, "{path}");
        assert_eq!(
            header(&response, "access-control-allow-methods"),
            "",
            "{path}"
        );
    }
    let unknown = app
        .http1
        .request(reqwest::Method::OPTIONS, app.url("/nope"))
        .send()
        .await
        .expect("sent");
    assert_eq!(unknown.status(), 404);
    assert_eq!(header(&unknown, "content-type"), "application/problem+json");

    // A preflight is still the CORS layer's.
    let preflight = app
        .http1
        .request(reqwest::Method::OPTIONS, app.url("/v1/streams"))
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("sent");
    assert_eq!(preflight.status(), 200);
    assert_eq!(
        header(&preflight, "access-control-allow-origin"),
        "http://app.example"
    );
    assert!(header(&preflight, "access-control-allow-methods").contains("POST"));

    // Plain HTTP on a gRPC method's path: POST is what it takes (and Connect's GET, for a
    // method without side effects; a bare GET there is Connect's, lacking its message).
    let get = app
        .http1
        .get(app.url("/iggy.gateway.v1.StreamService/DeleteStream"))
        .send()
        .await
        .expect("sent");
    assert_eq!(get.status(), 405);
    assert_eq!(header(&get, "allow"), "POST, OPTIONS");
    assert_eq!(header(&get, "content-type"), "application/problem+json");
    let get = app
        .http1
        .get(app.url("/iggy.gateway.v1.StreamService/ListStreams"))
        .send()
        .await
        .expect("sent");
    assert_eq!(get.status(), 400);
    assert_eq!(header(&get, "content-type"), "application/json");
}

/// Opens an SSE subscription to `orders/created` and reads until `count` messages arrived:
/// their texts and the last one's id (its cursor).
async fn sse_messages(
    app: &TestApp,
    query: &str,
    last_event_id: Option<&str>,
    count: usize,
) -> (Vec<String>, String) {
    let mut request = app
        .http1
        .get(app.url(&format!("{SUBSCRIBE}{query}")))
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let mut response = request.send().await.expect("sent");
    assert_eq!(response.status(), 200);
    let text = read_until(&mut response, |t| {
        t.matches("event: message").count() >= count
    })
    .await;
    let texts = event_data(&text, "message")
        .iter()
        .take(count)
        .map(|data| data["text"].as_str().expect("a text").to_owned())
        .collect();
    let id = text
        .split("\n\n")
        .filter(|block| block.contains("event: message"))
        .nth(count - 1)
        .and_then(|block| block.lines().find_map(|l| l.strip_prefix("id: ")))
        .expect("an id")
        .to_owned();
    (texts, id)
}

/// The test configuration on `dir`, without the test suite's fixed CURSOR_SECRET.
fn without_cursor_secret(dir: &TempDir) -> Config {
    let mut config = Config::for_tests(dir.path().display().to_string());
    config.subscriptions.cursor_secret = None;
    config
}

#[tokio::test]
async fn an_sse_cursor_resumes_on_a_restarted_gateway_without_cursor_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = spawn_with(without_cursor_secret(&dir), dir).await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    app.send_texts("orders", "created", 0, &["a", "b", "c"])
        .await;
    let (texts, cursor) = sse_messages(&app, "?strategy=POLLING_STRATEGY_FIRST", None, 1).await;
    assert_eq!(texts, ["a"]);
    let dir = app.stop().await;

    // The secret was kept in the data directory, for its owner's eyes only.
    let kept = dir.path().join("cursor-secret");
    let secret = std::fs::read_to_string(&kept).expect("kept");
    assert!(secret.len() >= 32, "{} bytes", secret.len());
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&kept)
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // The EventSource reconnects to the restarted gateway with its Last-Event-ID and resumes.
    let app = restart_with(without_cursor_secret(&dir), dir).await;
    let (texts, _) = sse_messages(&app, "", Some(&cursor), 2).await;
    assert_eq!(texts, ["b", "c"]);
    let dir = app.stop().await;
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cursor-secret")).expect("kept"),
        secret,
        "the secret was read back, not made again"
    );

    // Another data directory gets a secret of its own: the cursor is refused there.
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let other = spawn_with(without_cursor_secret(&elsewhere), elsewhere).await;
    other.create_stream("orders").await;
    other.create_topic("orders", "created", 1).await;
    let refused = other
        .http1
        .get(other.url(SUBSCRIBE))
        .header("accept", "text/event-stream")
        .header("last-event-id", &cursor)
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 400);
    let problem: serde_json::Value = refused.json().await.expect("a problem");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("signed with another key")),
        "{problem}"
    );
}

#[tokio::test]
async fn a_rotated_cursor_secret_still_accepts_the_previous_keys_cursors_and_signs_with_the_new_one()
 {
    const OLD: &str = "the-old-cursor-secret-of-32-bytes-or-more";
    const NEW: &str = "the-new-cursor-secret-of-32-bytes-or-more";
    let with_keys = |dir: &TempDir, current: &str, previous: Option<&str>| {
        let mut config = Config::for_tests(dir.path().display().to_string());
        config.subscriptions.cursor_secret = Some(current.into());
        config.subscriptions.cursor_secret_previous = previous.map(Into::into);
        config
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let app = spawn_with(with_keys(&dir, OLD, None), dir).await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    app.send_texts("orders", "created", 0, &["a", "b", "c"])
        .await;
    let (_, old_cursor) = sse_messages(&app, "?strategy=POLLING_STRATEGY_FIRST", None, 1).await;
    let dir = app.stop().await;

    let app = restart_with(with_keys(&dir, NEW, Some(OLD)), dir).await;
    let (texts, new_cursor) = sse_messages(&app, "", Some(&old_cursor), 1).await;
    assert_eq!(texts, ["b"], "the previous key's cursor resumes");
    let dir = app.stop().await;

    // Once the rotation is over, the new key's cursor resumes and the old key's is refused.
    let app = restart_with(with_keys(&dir, NEW, None), dir).await;
    let (texts, _) = sse_messages(&app, "", Some(&new_cursor), 1).await;
    assert_eq!(texts, ["c"], "the new cursor was signed with the new key");
    let refused = app
        .http1
        .get(app.url(SUBSCRIBE))
        .header("accept", "text/event-stream")
        .header("last-event-id", &old_cursor)
        .send()
        .await
        .expect("sent");
    assert_eq!(refused.status(), 400);
}

/// Starts the binary with `env`, reads its log (stdout) until it serves, and stops it: the
/// log lines.
fn startup_log(env: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_iggy-gateway"));
    command
        .env_clear()
        .env("HOST", "127.0.0.1")
        .env("PORT", "0")
        .env("DATA_DIR", dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("starts");
    let log = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(log).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        let serving = line.contains("serving gRPC");
        lines.push(line);
        if serving {
            break;
        }
    }
    child.kill().expect("stopped");
    child.wait().expect("reaped");
    assert!(
        lines.iter().any(|l| l.contains("serving gRPC")),
        "the gateway started: {lines:#?}"
    );
    lines
}

#[test]
fn an_iggy_backend_without_cursor_secret_warns_that_cursors_will_not_survive() {
    // Iggy need not be up: the gateway starts anyway and keeps trying.
    let iggy = ("IGGY_CONNECTION_STRING", "iggy://iggy:iggy@127.0.0.1:9");
    let warned = |lines: &[String]| {
        lines
            .iter()
            .any(|l| l.contains("WARN") && l.contains("CURSOR_SECRET IS NOT SET"))
    };
    let lines = startup_log(&[iggy]);
    assert!(warned(&lines), "{lines:#?}");
    let line = lines
        .iter()
        .find(|l| l.contains("CURSOR_SECRET IS NOT SET"))
        .expect("the warning");
    assert!(
        line.contains("restart") && line.contains("replica"),
        "{line}"
    );
    let lines = startup_log(&[iggy, ("CURSOR_SECRET", &"k".repeat(32))]);
    assert!(!warned(&lines), "{lines:#?}");
    // The embedded backend keeps its own secret, so it has nothing to warn about.
    assert!(!warned(&startup_log(&[])));
}

/// What a gRPC client stored, REST writes in proto3 JSON's spelling, in a poll and in both
/// stream forms alike: a double JSON cannot hold as `"NaN"` and `"Infinity"` (not `null`), a
/// JSON payload's object keys sorted, a timestamp in UTC with a `Z`.
#[tokio::test]
async fn rest_writes_what_grpc_stored_in_proto3_json_spelling() {
    use iggy_gateway::proto;
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    let double = |value: f64| proto::HeaderValue {
        kind: Some(proto::header_value::Kind::DoubleValue(value)),
    };
    let object = |fields: &[(&str, f64)]| pbjson_types::Value {
        kind: Some(pbjson_types::value::Kind::StructValue(
            pbjson_types::Struct {
                fields: fields
                    .iter()
                    .map(|(key, number)| {
                        let value = pbjson_types::Value {
                            kind: Some(pbjson_types::value::Kind::NumberValue(*number)),
                        };
                        ((*key).to_owned(), value)
                    })
                    .collect(),
            },
        )),
    };
    let messages = vec![
        proto::Message {
            headers: [("nan".to_owned(), double(f64::NAN))].into(),
            body: Some(proto::message::Body::Text("a".into())),
            ..Default::default()
        },
        proto::Message {
            headers: [("big".to_owned(), double(f64::NEG_INFINITY))].into(),
            body: Some(proto::message::Body::Json(object(&[
                ("zeta", 1.0),
                ("alpha", 2.5),
                ("mid", -3.0),
                ("beta", 4.0),
            ]))),
            ..Default::default()
        },
    ];
    app.send_to("orders", "created", 0, messages).await;

    let expected = [
        r#""headers":{"nan":{"double_value":"NaN"}},"text":"a"}"#,
        r#""headers":{"big":{"double_value":"-Infinity"}},"json":{"alpha":2.5,"beta":4,"mid":-3,"zeta":1}}"#,
    ];
    let polled = app
        .http1
        .get(app.url(
            "/v1/streams/orders/topics/created/messages?partition_id=0&strategy=first&count=10",
        ))
        .send()
        .await
        .expect("polled");
    assert_eq!(polled.status(), 200);
    let polled = polled.text().await.expect("text");
    for accept in ["text/event-stream", "application/x-ndjson"] {
        let mut response = app
            .http1
            .get(app.url(&format!("{SUBSCRIBE}?strategy=POLLING_STRATEGY_FIRST")))
            .header("accept", accept)
            .send()
            .await
            .expect("subscribed");
        assert_eq!(response.status(), 200, "{accept}");
        let streamed = read_until(&mut response, |t| t.contains(expected[1])).await;
        for (text, form) in [(&polled, "poll"), (&streamed, accept)] {
            for written in expected {
                assert!(text.contains(written), "{form}: {written} not in {text}");
            }
            assert!(
                text.matches(r#""timestamp":""#).count() >= 2
                    && text
                        .split(r#""timestamp":""#)
                        .skip(1)
                        .all(|rest| rest.split('"').next().is_some_and(|t| t.ends_with('Z'))),
                "{form}: {text}"
            );
        }
    }
}

/// A poll whose answer is large is sent as it is written, in pieces (chunked, no
/// `Content-Length`), and reads as the whole answer would: byte for byte what the typed codec
/// writes of the same poll over gRPC. A small one is still sent whole, with its length.
#[tokio::test]
async fn a_large_poll_is_sent_in_pieces_and_reads_as_the_whole_answer() {
    use iggy_gateway::proto;
    let app = spawn_app().await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    // 400 × 2 KiB: 800 KiB of payloads, past the size answers are written in pieces from.
    for batch in 0..4u8 {
        let messages = (0..100u8)
            .map(|i| proto::Message {
                body: Some(proto::message::Body::Payload(vec![batch ^ i; 2048].into())),
                ..Default::default()
            })
            .collect();
        app.send_to("orders", "created", 0, messages).await;
    }
    let poll = |count: u32| {
        app.http1
            .get(app.url(&format!(
                "/v1/streams/orders/topics/created/messages?partition_id=0&strategy=first&count={count}"
            )))
            .send()
    };
    let grpc = app.poll_from("orders", "created", 0, 0, 400).await;
    assert_eq!(grpc.messages.len(), 400);

    let large = poll(400).await.expect("polled");
    assert_eq!(large.status(), 200);
    assert_eq!(large.headers()["content-type"], "application/json");
    assert!(
        large.headers().get("content-length").is_none(),
        "{:?}",
        large.headers()
    );
    assert_eq!(large.headers()["transfer-encoding"], "chunked");
    let body = large.bytes().await.expect("the whole body");
    let expected = serde_json::to_vec(&grpc).expect("JSON");
    assert!(body.len() > 1024 * 1024, "{}", body.len());
    assert!(body == expected, "the pieces differ from the whole answer");

    let small = poll(2).await.expect("polled");
    assert_eq!(small.status(), 200);
    assert!(small.headers().get("transfer-encoding").is_none());
    let length = small.headers()["content-length"]
        .to_str()
        .expect("a length")
        .to_owned();
    let body = small.bytes().await.expect("body");
    assert_eq!(length, body.len().to_string());
    let answer: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        answer["messages"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );
}
