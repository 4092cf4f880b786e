use super::{Connect, ConnectSettings};

/// Every method is called directly (its JSON read and written by its typed codec there):
/// start-up refuses a method without a direct call rather than leave it unserved.
#[test]
fn a_method_without_a_direct_call_is_refused_at_start_up() {
    let settings = ConnectSettings {
        max_body_bytes: 1024,
        compression_min_bytes: 1024,
    };
    let (direct, _) = crate::startup::direct_table();
    assert!(Connect::new(&direct, settings).is_ok());
    let refusal = Connect::new(&crate::rest::direct::Direct::default(), settings)
        .err()
        .expect("refused");
    assert!(
        refusal.ends_with("has no direct call in startup/direct.rs"),
        "{refusal}"
    );
}
