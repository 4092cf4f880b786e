use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_check_reports_serving_overall_and_per_service() {
    let app = spawn_app().await;
    let mut health = app.health.clone();
    for service in [
        "",
        "iggy.gateway.v1.StreamService",
        "iggy.gateway.v1.TopicService",
        "iggy.gateway.v1.MessageService",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("checked")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "service {service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn health_watch_sees_not_serving_when_the_gateway_shuts_down() {
    let app = spawn_app().await;
    let mut health = app.health.clone();
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watching")
        .into_inner();
    let first = watch.message().await.expect("update").expect("open");
    assert_eq!(first.status(), ServingStatus::Serving);

    let stopping = tokio::spawn(app.stop());
    let next = tokio::time::timeout(std::time::Duration::from_secs(5), watch.message())
        .await
        .expect("an update before the stream closes")
        .expect("update")
        .expect("open");
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop(watch);
    stopping.await.expect("stopped");
}
