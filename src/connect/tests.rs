use super::{Connect, ConnectSettings};

/// Every method reads and writes Connect's JSON with its typed codec: start-up refuses a
/// method without one rather than let it take the descriptors' slower path.
#[test]
fn a_method_without_a_typed_json_codec_is_refused_at_start_up() {
    let settings = ConnectSettings {
        max_body_bytes: 1024,
        compression_min_bytes: 1024,
    };
    let codecs = crate::startup::json_codecs();
    assert!(Connect::new(axum::Router::new(), &codecs, settings).is_ok());
    let mut missing = codecs;
    missing.remove("/iggy.gateway.v1.StatsService/GetStats");
    let refusal = Connect::new(axum::Router::new(), &missing, settings)
        .err()
        .expect("refused");
    assert_eq!(
        refusal,
        "/iggy.gateway.v1.StatsService/GetStats has no typed JSON codec in startup/direct.rs"
    );
}
