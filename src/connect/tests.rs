use super::{Connect, ConnectSettings};

/// Every method is called directly and reads and writes Connect's JSON with its typed codec:
/// start-up refuses a method without either rather than leave it unserved or let it take the
/// descriptors' slower path.
#[test]
fn a_method_without_a_direct_call_or_a_typed_json_codec_is_refused_at_start_up() {
    let settings = ConnectSettings {
        max_body_bytes: 1024,
        compression_min_bytes: 1024,
    };
    let (direct, codecs) = crate::startup::direct_table();
    assert!(Connect::new(&direct, &codecs, settings).is_ok());
    let mut missing = codecs.clone();
    missing.remove("/iggy.gateway.v1.StatsService/GetStats");
    let refusal = Connect::new(&direct, &missing, settings)
        .err()
        .expect("refused");
    assert_eq!(
        refusal,
        "/iggy.gateway.v1.StatsService/GetStats has no typed JSON codec in startup/direct.rs"
    );
    let refusal = Connect::new(&crate::rest::direct::Direct::default(), &codecs, settings)
        .err()
        .expect("refused");
    assert!(
        refusal.ends_with("has no direct call in startup/direct.rs"),
        "{refusal}"
    );
}
