//! The deployment files agree with the code: they parse, the probes ask the health service
//! names the gateway serves, on the port it listens on by default; the TLS variant mounts its
//! certificate where the settings say and probes over HTTPS.

use serde::Deserialize;
use serde_json::Value;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};

use crate::helpers::spawn_app;

fn documents(text: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("valid YAML"))
        .collect()
}

#[tokio::test]
async fn kubernetes_probes_ask_what_the_gateway_serves() {
    let docs = documents(include_str!("../../deploy/kubernetes.yaml"));
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ConfigMap", "Secret", "Deployment", "Service"]);
    let deployment = &docs[2];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let default_port = iggy_gateway::config::Config::load_from(["iggy-gateway"])
        .map(|(config, _)| config.server.port)
        .unwrap_or_else(|_| panic!("defaults load"));
    assert_eq!(
        container["ports"][0]["containerPort"],
        u64::from(default_port)
    );
    assert_eq!(
        container["readinessProbe"]["grpc"]["port"],
        u64::from(default_port)
    );
    assert_eq!(
        container["livenessProbe"]["grpc"]["port"],
        u64::from(default_port)
    );
    assert_eq!(
        docs[3]["spec"]["ports"][0]["targetPort"],
        u64::from(default_port)
    );
    assert_eq!(docs[0]["data"]["HOST"], "0.0.0.0");

    // The services the probes name answer SERVING on a running gateway.
    let app = spawn_app().await;
    let mut health = app.health.clone();
    for probe in ["readinessProbe", "livenessProbe"] {
        let service = container[probe]["grpc"]["service"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let status = health
            .check(HealthCheckRequest {
                service: service.clone(),
            })
            .await
            .unwrap_or_else(|err| panic!("{probe} asks for {service:?}, which is unknown: {err}"))
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{probe}");
    }
    assert_eq!(
        iggy_gateway::startup::LIVENESS_SERVICE,
        container["livenessProbe"]["grpc"]["service"]
    );
}

#[test]
fn compose_runs_the_gateway_against_iggy_0_8() {
    let docs = documents(include_str!("../../deploy/docker-compose.yml"));
    let services = &docs[0]["services"];
    assert_eq!(services["iggy"]["image"], "apache/iggy:0.8.0");
    let url = services["iggy-gateway"]["environment"]["IGGY_CONNECTION_STRING"]
        .as_str()
        .expect("a connection string");
    assert!(
        url.starts_with("iggy://") && url.contains("@iggy:8090"),
        "{url}"
    );
    let mut config = iggy_gateway::config::Config::for_tests(":memory:");
    config.backend.iggy_connection_string = Some(url.into());
    assert!(config.iggy_settings().expect("valid").is_some());
}

#[tokio::test]
async fn the_tls_manifest_serves_its_probes_over_https_from_the_mounted_secret() {
    let docs = documents(include_str!("../../deploy/kubernetes-tls.yaml"));
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["ConfigMap", "Secret", "Secret", "Deployment", "Service"]
    );
    let (settings, tls_secret, deployment) = (&docs[0]["data"], &docs[2], &docs[3]);
    assert_eq!(tls_secret["type"], "kubernetes.io/tls");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mount = container["volumeMounts"][0]["mountPath"]
        .as_str()
        .expect("mounted");
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        tls_secret["metadata"]["name"]
    );
    // The files the gateway reads are the Secret's keys where it is mounted.
    for (variable, key) in [("TLS_CERT_FILE", "tls.crt"), ("TLS_KEY_FILE", "tls.key")] {
        assert_eq!(settings[variable], format!("{mount}/{key}").as_str());
        assert!(tls_secret["stringData"][key].is_string(), "{key}");
    }
    let port = settings["PORT"].as_str().expect("port");
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["scheme"], "HTTPS", "{probe}");
        assert_eq!(get["port"].to_string(), port, "{probe}");
    }
    assert_eq!(container["ports"][0]["containerPort"].to_string(), port);

    // A gateway configured as the manifest says answers the probes' paths over TLS.
    let pki = crate::tls::Pki::new("test CA");
    let gateway = crate::tls::spawn_tls(&pki.server(), None, |_| {}).await;
    let client = crate::tls::https_client(&pki.ca, None, true);
    for probe in ["livenessProbe", "readinessProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().expect("path");
        let status = client
            .get(gateway.url(path))
            .send()
            .await
            .expect("probe answered")
            .status();
        assert_eq!(status, 200, "{probe} {path}");
    }
    gateway.stop().await;
}
