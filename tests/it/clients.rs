//! Per-client controls as an attacker meets them: IPv6 clients counted by their /64, forwarded
//! headers read strictly, and a lockout that never refuses a valid key.

use iggy_gateway::{
    config::{ApiKeys, Config},
    proto,
};
use tonic::{Code, metadata::MetadataValue};
use tonic_types::StatusExt;

use crate::helpers::{TestApp, spawn_configured};

async fn get(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.http1.get(app.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("sent")
}

/// The status of a REST call and, when it was refused, the problem's reason and detail.
async fn status_of(app: &TestApp, headers: &[(&str, &str)]) -> (u16, String, String) {
    let response = get(app, "/v1/streams", headers).await;
    let status = response.status().as_u16();
    if status == 200 {
        return (status, String::new(), String::new());
    }
    let problem: serde_json::Value = response.json().await.expect("a problem body");
    let text = |field: &str| problem[field].as_str().unwrap_or_default().to_owned();
    (status, text("reason"), text("detail"))
}

fn from(hops: &str) -> [(&str, &str); 1] {
    [("x-forwarded-for", hops)]
}

/// Behind a trusted proxy on loopback, one request per client before the limit bites.
fn one_request_each_behind_a_proxy(c: &mut Config) {
    c.limits.rate_limit_rps = 1;
    c.limits.rate_limit_burst = 1;
    c.edge.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
}

async fn list_streams_grpc(
    app: &TestApp,
    metadata: &[(&'static str, &str)],
) -> Result<tonic::Response<proto::ListStreamsResponse>, tonic::Status> {
    let mut request = tonic::Request::new(proto::ListStreamsRequest {});
    for (name, value) in metadata {
        request
            .metadata_mut()
            .insert(*name, MetadataValue::try_from(*value).expect("ascii"));
    }
    app.streams.clone().list_streams(request).await
}

#[tokio::test]
async fn ipv6_addresses_within_one_64_share_one_rate_limit_and_another_64_does_not() {
    let app = spawn_configured(one_request_each_behind_a_proxy).await;
    assert_eq!(status_of(&app, &from("2001:db8:1:2::a")).await.0, 200);
    let (status, reason, detail) = status_of(&app, &from("2001:db8:1:2:ffff:ffff:ffff:b")).await;
    assert_eq!((status, reason.as_str()), (429, "RATE_LIMITED"));
    assert!(detail.contains("2001:db8:1:2::/64"), "{detail}");
    let status = list_streams_grpc(&app, &[("x-forwarded-for", "2001:db8:1:2::c")])
        .await
        .expect_err("the same /64 over gRPC");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        status.get_details_error_info().expect("reason").reason,
        "RATE_LIMITED"
    );

    assert_eq!(
        status_of(&app, &from("2001:db8:1:3::a")).await.0,
        200,
        "the next /64 is another client"
    );
}

#[tokio::test]
async fn a_narrower_ipv6_client_prefix_separates_addresses_of_one_64() {
    let app = spawn_configured(|c| {
        one_request_each_behind_a_proxy(c);
        c.edge.ipv6_client_prefix = 128;
    })
    .await;
    assert_eq!(status_of(&app, &from("2001:db8:1:2::a")).await.0, 200);
    assert_eq!(status_of(&app, &from("2001:db8:1:2::b")).await.0, 200);
    assert_eq!(status_of(&app, &from("2001:db8:1:2::a")).await.0, 429);
}

fn locks_out_after_ten_failures(c: &mut Config) {
    c.auth.api_key = Some(ApiKeys::new(["the-right-key"]));
    c.auth.auth_max_failures = 10;
}

#[tokio::test]
async fn ten_bad_keys_from_a_nat_lock_out_the_keyless_but_never_a_valid_key() {
    let app = spawn_configured(locks_out_after_ten_failures).await;
    for attempt in 1..=10 {
        let (status, reason, _) = status_of(&app, &[("x-api-key", "guess")]).await;
        assert_eq!(
            (status, reason.as_str()),
            (401, "API_KEY_INVALID"),
            "attempt {attempt}"
        );
    }
    let (status, reason, _) = status_of(&app, &[]).await;
    assert_eq!((status, reason.as_str()), (429, "AUTH_LOCKED_OUT"));
    let (status, reason, _) = status_of(&app, &[("x-api-key", "guess")]).await;
    assert_eq!((status, reason.as_str()), (429, "AUTH_LOCKED_OUT"));
    let locked = get(&app, "/v1/streams", &[]).await;
    let retry_after: u64 = locked.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((299..=300).contains(&retry_after), "{retry_after}");

    assert_eq!(
        status_of(&app, &[("x-api-key", "the-right-key")]).await.0,
        200,
        "a valid key from the same address is not locked out"
    );
    assert_eq!(
        status_of(&app, &[("authorization", "Bearer the-right-key")])
            .await
            .0,
        200
    );
    list_streams_grpc(&app, &[("x-api-key", "the-right-key")])
        .await
        .expect("a valid key over gRPC");
    let status = list_streams_grpc(&app, &[])
        .await
        .expect_err("no key over gRPC");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.get_details_retry_info().is_some());
}

#[tokio::test]
async fn a_lockout_covers_the_whole_ipv6_64_and_nothing_beyond_it() {
    let app = spawn_configured(|c| {
        locks_out_after_ten_failures(c);
        c.edge.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    for i in 1..=10 {
        let hop = format!("2001:db8:5:5::{i:x}");
        let (status, _, _) =
            status_of(&app, &[("x-forwarded-for", &hop), ("x-api-key", "bad")]).await;
        assert_eq!(status, 401, "from {hop}");
    }
    let (status, reason, _) = status_of(&app, &from("2001:db8:5:5:abcd::1")).await;
    assert_eq!((status, reason.as_str()), (429, "AUTH_LOCKED_OUT"));
    let (status, reason, _) = status_of(&app, &from("2001:db8:5:6::1")).await;
    assert_eq!((status, reason.as_str()), (401, "API_KEY_MISSING"));
    assert_eq!(
        status_of(&app, &[]).await.0,
        401,
        "the proxy itself is not locked out"
    );
}

#[tokio::test]
async fn forwarded_hops_with_ports_count_as_their_addresses() {
    let app = spawn_configured(one_request_each_behind_a_proxy).await;
    assert_eq!(status_of(&app, &from("1.2.3.4:5678")).await.0, 200);
    let (status, _, detail) = status_of(&app, &from("1.2.3.4")).await;
    assert_eq!(status, 429);
    assert!(detail.contains("for 1.2.3.4/32;"), "{detail}");

    assert_eq!(status_of(&app, &from("[::1]:443")).await.0, 200);
    let (status, _, detail) = status_of(&app, &from(" ::1 ")).await;
    assert_eq!(status, 429);
    assert!(detail.contains("for ::/64;"), "{detail}");
}

#[tokio::test]
async fn a_forwarded_hop_that_does_not_parse_ends_the_trusted_chain() {
    let app = spawn_configured(one_request_each_behind_a_proxy).await;
    // The proxy on loopback appended `unknown`: nothing left of it is believed, so the
    // client is the proxy itself.
    assert_eq!(status_of(&app, &from("203.0.113.77, unknown")).await.0, 200);
    let (status, _, detail) = status_of(&app, &[]).await;
    assert_eq!(status, 429, "the call above was counted to the proxy");
    assert!(detail.contains("for 127.0.0.1/32;"), "{detail}");
    assert_eq!(
        status_of(&app, &from("203.0.113.77")).await.0,
        200,
        "and not to the address left of the garbage"
    );
    let (status, _, detail) = status_of(&app, &from("garbage")).await;
    assert_eq!(status, 429);
    assert!(detail.contains("for 127.0.0.1/32;"), "{detail}");
}

#[tokio::test]
async fn x_real_ip_is_ignored_when_x_forwarded_for_is_present() {
    let app = spawn_configured(one_request_each_behind_a_proxy).await;
    let both = [
        ("x-forwarded-for", "198.51.100.20"),
        ("x-real-ip", "198.51.100.21"),
    ];
    assert_eq!(status_of(&app, &both).await.0, 200);
    let (status, _, detail) = status_of(&app, &from("198.51.100.20")).await;
    assert_eq!(status, 429);
    assert!(detail.contains("for 198.51.100.20/32;"), "{detail}");
    let real_ip = [("x-real-ip", "198.51.100.21")];
    assert_eq!(
        status_of(&app, &real_ip).await.0,
        200,
        "X-Real-IP's client had not been charged"
    );
    let (status, _, detail) = status_of(&app, &real_ip).await;
    assert_eq!(status, 429, "alone, X-Real-IP is read");
    assert!(detail.contains("for 198.51.100.21/32;"), "{detail}");
}

#[tokio::test]
async fn a_huge_auth_lockout_locks_out_for_a_year_without_panicking() {
    let app = spawn_configured(|c| {
        c.auth.api_key = Some(ApiKeys::new(["the-right-key"]));
        c.auth.auth_max_failures = 2;
        c.auth.auth_lockout_secs = u64::MAX;
    })
    .await;
    assert_eq!(status_of(&app, &[("x-api-key", "bad")]).await.0, 401);
    assert_eq!(status_of(&app, &[("x-api-key", "bad")]).await.0, 401);
    let locked = get(&app, "/v1/streams", &[]).await;
    assert_eq!(locked.status(), 429);
    let retry_after: u64 = locked.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!(
        (365 * 24 * 3600 - 1..=365 * 24 * 3600).contains(&retry_after),
        "{retry_after}"
    );
    let status = list_streams_grpc(&app, &[]).await.expect_err("locked");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(status.get_details_retry_info().is_some());
    assert_eq!(
        status_of(&app, &[("x-api-key", "the-right-key")]).await.0,
        200,
        "the gateway still serves"
    );
}

async fn subscribe_from(
    app: &TestApp,
    hop: &str,
) -> Result<tonic::Response<tonic::Streaming<proto::SubscribeResponse>>, tonic::Status> {
    let mut request = tonic::Request::new(proto::SubscribeRequest {
        stream: "orders".into(),
        topic: "created".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "x-forwarded-for",
        MetadataValue::try_from(hop).expect("ascii"),
    );
    app.messages.clone().subscribe(request).await
}

#[tokio::test]
async fn the_subscriber_cap_counts_a_whole_ipv6_64_as_one_client() {
    let app = spawn_configured(|c| {
        c.subscriptions.max_subscribers_per_client = 1;
        c.edge.trusted_proxies = vec!["127.0.0.1/32".parse().expect("cidr")];
    })
    .await;
    app.create_stream("orders").await;
    app.create_topic("orders", "created", 1).await;
    let _held = subscribe_from(&app, "2001:db8:7:7::1")
        .await
        .expect("the first subscription");
    let refused = subscribe_from(&app, "2001:db8:7:7::2")
        .await
        .expect_err("another address of the same /64");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("2001:db8:7:7::"),
        "{}",
        refused.message()
    );
    let _other = subscribe_from(&app, "2001:db8:7:8::1")
        .await
        .expect("the next /64 is another client");
}
