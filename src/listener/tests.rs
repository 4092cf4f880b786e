use std::time::Duration;

use super::{AcceptBackoff, LogEvery, default_max_connections, reserved_descriptors};

#[test]
fn the_default_connection_cap_leaves_descriptors_for_the_gateways_own_work() {
    assert_eq!(reserved_descriptors(256), 64);
    assert_eq!(default_max_connections(Some(256)), 192);
    assert_eq!(reserved_descriptors(4096), 1024);
    assert_eq!(default_max_connections(Some(4096)), 3072);
    assert_eq!(default_max_connections(Some(1 << 20)), 10_000);
    assert_eq!(default_max_connections(None), 10_000);
    assert_eq!(default_max_connections(Some(16)), 1);
}

#[test]
fn failed_accepts_back_off_doubling_to_a_second_and_reset_on_success() {
    let mut backoff = AcceptBackoff::new();
    let err = std::io::Error::from_raw_os_error(24);
    let delays: Vec<u64> = (0..9)
        .map(|_| u64::try_from(backoff.failed(&err).as_millis()).unwrap_or(u64::MAX))
        .collect();
    assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    backoff.succeeded();
    assert_eq!(backoff.failed(&err), Duration::from_millis(10));
}

#[test]
fn a_report_is_due_once_per_interval_and_counts_what_happened_between() {
    let mut log = LogEvery::new(Duration::from_secs(3600));
    log.count();
    assert!(log.due());
    assert_eq!(log.take_count(), 1);
    log.count();
    log.count();
    assert!(!log.due());
    assert_eq!(log.take_count(), 2);
}
