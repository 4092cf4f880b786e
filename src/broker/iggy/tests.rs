use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use iggy::prelude::{
    HeaderValue as IggyHeaderValue, Identifier as IggyIdentifier, IggyClient, IggyError,
};
use tokio::sync::watch;

use super::{
    convert::{
        Context, header_from_iggy, header_to_iggy, map_error, message_from_iggy, message_to_iggy,
    },
    pool::{IggySettings, Pool, SlotState, backoff, redact, with_nodelay},
};
use crate::broker::{BrokerError, HeaderValue, Headers, Identifier, NewMessage, TopicRef};

#[test]
fn backoff_is_full_jitter_capped_at_the_maximum() {
    let (base, max) = (Duration::from_millis(100), Duration::from_millis(1000));
    for attempt in 0..40 {
        let ceiling = (100u64 << attempt.min(20)).min(1000);
        for _ in 0..50 {
            let delay = backoff(base, max, attempt);
            assert!(
                delay <= Duration::from_millis(ceiling),
                "attempt {attempt}: {delay:?}"
            );
        }
    }
    // Jitter spreads the delays (not all equal), so reconnecting gateways do not stampede.
    let delays: std::collections::BTreeSet<_> = (0..50).map(|_| backoff(base, max, 5)).collect();
    assert!(delays.len() > 10);
}

#[test]
fn sdk_errors_map_by_variant_to_the_broker_error_naming_what_was_asked() {
    let at = TopicRef {
        stream: Identifier::Name("orders".into()),
        topic: Identifier::Id(3),
    };
    let context = Context::topic(&at);
    assert_eq!(
        map_error(
            IggyError::StreamIdNotFound(IggyIdentifier::default()),
            &context
        ),
        BrokerError::StreamNotFound(Identifier::Name("orders".into()))
    );
    assert_eq!(
        map_error(
            IggyError::TopicIdNotFound(IggyIdentifier::default(), IggyIdentifier::default()),
            &context
        ),
        BrokerError::TopicNotFound {
            stream: Identifier::Name("orders".into()),
            topic: Identifier::Id(3)
        }
    );
    assert!(matches!(
        map_error(IggyError::Disconnected, &context),
        BrokerError::Unavailable(_)
    ));
    assert!(matches!(
        map_error(IggyError::InvalidCredentials, &context),
        BrokerError::Unauthenticated(_)
    ));
    assert!(matches!(
        map_error(IggyError::InvalidOffset(9), &context),
        BrokerError::InvalidArgument {
            field: "offset",
            ..
        }
    ));
    assert!(matches!(
        map_error(
            IggyError::StreamNameAlreadyExists(String::new()),
            &Context::default()
        ),
        BrokerError::StreamAlreadyExists(_)
    ));
}

#[test]
fn the_sdks_error_text_never_reaches_the_caller() {
    let context = Context::default();
    for err in [
        IggyError::InvalidOffset(9),
        IggyError::InvalidStreamName,
        IggyError::Disconnected,
        IggyError::CannotEstablishConnection,
    ] {
        let sdk_text = err.to_string();
        let mapped = map_error(err, &context).to_string();
        assert!(
            !mapped.contains(&sdk_text),
            "{mapped:?} repeats {sdk_text:?}"
        );
    }
}

#[test]
fn passwords_never_reach_the_logs() {
    assert_eq!(
        redact("iggy://admin:s3cret@iggy.internal:8090"),
        "iggy://admin:***@iggy.internal:8090"
    );
    assert_eq!(
        redact("iggy://iggy.internal:8090"),
        "iggy://iggy.internal:8090"
    );
}

#[test]
fn connections_to_iggy_turn_nagle_off_unless_the_string_says_otherwise() {
    use iggy_common::{ConnectionString, TcpClientConfig, TcpConnectionStringOptions};
    let nodelay = |text: &str| {
        let parsed = ConnectionString::<TcpConnectionStringOptions>::new(&with_nodelay(text))
            .expect("the SDK reads it");
        TcpClientConfig::from(parsed).nodelay
    };
    assert_eq!(
        with_nodelay("iggy://u:p@h:8090"),
        "iggy://u:p@h:8090?nodelay=true"
    );
    assert!(nodelay("iggy://u:p@h:8090"));
    assert_eq!(
        with_nodelay("iggy+tcp://u:p@h:8090?heartbeat_interval=2s"),
        "iggy+tcp://u:p@h:8090?heartbeat_interval=2s&nodelay=true"
    );
    assert!(nodelay("iggy+tcp://u:p@h:8090?heartbeat_interval=2s"));
    // The operator's own choice stands.
    assert_eq!(
        with_nodelay("iggy://u:p@h:8090?nodelay=false"),
        "iggy://u:p@h:8090?nodelay=false"
    );
    assert!(!nodelay("iggy://u:p@h:8090?nodelay=false"));
    // A `?` in the password is not where the options start.
    assert_eq!(
        with_nodelay("iggy://u:p?w@h:8090"),
        "iggy://u:p?w@h:8090?nodelay=true"
    );
    assert!(nodelay("iggy://u:p?w@h:8090"));
}

#[test]
fn headers_keep_their_kinds_through_iggy() {
    for value in [
        HeaderValue::String("web".into()),
        HeaderValue::Bytes(vec![1, 2, 3]),
        HeaderValue::Int64(-5),
        HeaderValue::Uint64(u64::MAX),
        HeaderValue::Bool(true),
        HeaderValue::Double(1.5),
    ] {
        let iggy = header_to_iggy(&value).expect("valid");
        assert_eq!(header_from_iggy(&iggy), Some(value));
    }
    assert_eq!(
        header_from_iggy(&IggyHeaderValue::from(7u8)),
        Some(HeaderValue::Uint64(7))
    );
}

#[test]
fn messages_keep_their_ids_headers_and_payloads() {
    let mut headers = Headers::new();
    headers.insert("k".into(), HeaderValue::String("v".into()));
    let message = NewMessage {
        id: 42,
        headers: headers.clone(),
        payload: bytes::Bytes::from_static(b"body"),
    };
    let iggy = message_to_iggy(message.clone(), 7).expect("valid");
    assert_eq!(iggy.header.origin_timestamp, 7);
    let stored = message_from_iggy(iggy);
    assert_eq!(stored.id, 42);
    assert_eq!(stored.headers, headers);
    assert_eq!(stored.payload, message.payload);
}

/// A message without headers is built directly, as the SDK's builder would build it but for
/// the origin time the batch shares; an empty payload is refused as the builder refuses it.
#[test]
fn a_message_without_headers_is_what_the_sdks_builder_makes() {
    let payload = bytes::Bytes::from_static(b"body");
    let message = NewMessage {
        id: 42,
        headers: Headers::new(),
        payload: payload.clone(),
    };
    let mut built = iggy::prelude::IggyMessage::builder()
        .id(42)
        .payload(payload)
        .build()
        .expect("valid");
    built.header.origin_timestamp = 7;
    assert_eq!(message_to_iggy(message, 7).expect("valid"), built);
    let empty = NewMessage {
        id: 1,
        headers: Headers::new(),
        payload: bytes::Bytes::new(),
    };
    assert!(message_to_iggy(empty, 7).is_err());
}

fn pool_of(states: Vec<SlotState>) -> Pool {
    let settings = IggySettings {
        connection_string: "iggy://u:p@127.0.0.1:1".into(),
        pool_size: states.len(),
        reconnect_base_delay: Duration::from_millis(1),
        reconnect_max_delay: Duration::from_millis(1),
        max_reconnect_attempts: 1,
        operation_timeout: Duration::from_millis(10),
        health_check_interval: Duration::from_millis(10),
        connect_wait: Duration::from_millis(10),
        send_batching: super::SendBatching::default(),
        appends_idle: Duration::from_millis(10),
    };
    let pool = Pool::new(states.len(), watch::channel(false).0, settings);
    for (index, state) in states.into_iter().enumerate() {
        pool.set_state(index, state);
    }
    pool
}

fn connected() -> SlotState {
    SlotState::Connected(Arc::new(
        IggyClient::from_connection_string("iggy://u:p@127.0.0.1:1").expect("client"),
    ))
}

/// The SDK serialises calls per connection, so a call goes to an idle client when there is one,
/// never queued behind a busy one; a lease counts until it is dropped.
#[tokio::test]
async fn calls_go_to_the_least_busy_connected_client() {
    let pool = pool_of(vec![connected(), SlotState::Reconnecting, connected()]);
    let first = pool.pick().expect("not failed").expect("a client");
    let second = pool.pick().expect("not failed").expect("a client");
    assert_ne!(
        first.index, second.index,
        "the idle client, not the busy one"
    );
    assert!(
        [first.index, second.index].iter().all(|i| *i != 1),
        "never the reconnecting slot"
    );
    // Both busy: the next call shares one of them, and counts.
    let third = pool.pick().expect("not failed").expect("a client");
    assert_eq!(pool.slots[third.index].in_flight.load(Ordering::Relaxed), 2);
    drop((first, second, third));
    assert!(
        pool.slots
            .iter()
            .all(|s| s.in_flight.load(Ordering::Relaxed) == 0)
    );
    // Idle again: either client will do, and a finished call freed its slot.
    let again = pool.pick().expect("not failed").expect("a client");
    assert_ne!(again.index, 1);
}

/// A call that failed on a connection since replaced (it timed out while the slot
/// reconnected) must not have the new one torn down; one that failed on the current one does.
#[tokio::test]
async fn only_a_call_on_the_current_connection_has_it_rebuilt() {
    let pool = pool_of(vec![connected()]);
    let SlotState::Connected(current) = connected() else {
        unreachable!("connected")
    };
    let lease = pool.pick().expect("not failed").expect("a client");
    let (index, client) = (lease.index, Arc::clone(&lease.client));
    drop(lease);
    // A stale client: no wake-up is kept for the slot's next watcher.
    pool.mark_broken(index, &current);
    assert!(!pool.take_broken(index));
    pool.set_state(index, SlotState::Reconnecting);
    pool.mark_broken(index, &client);
    assert!(!pool.take_broken(index));
    pool.set_state(index, SlotState::Connected(Arc::clone(&client)));
    pool.mark_broken(index, &client);
    assert!(pool.take_broken(index));
}

#[tokio::test]
async fn a_pool_whose_slots_all_gave_up_is_unavailable() {
    let pool = pool_of(vec![SlotState::Failed, SlotState::Failed]);
    assert!(matches!(pool.pick(), Err(BrokerError::Unavailable(_))));
    let pool = pool_of(vec![SlotState::Failed, SlotState::Reconnecting]);
    assert!(matches!(pool.pick(), Ok(None)));
}

mod holes {
    use std::collections::BTreeSet;

    use super::super::holes::{Read, step_past};
    use crate::broker::{PolledMessages, StoredMessage};

    /// A partition of `head + 1` messages whose `hole` cannot be read: a read meeting the
    /// hole is refused, as Iggy refuses it.
    fn partition(
        head: u64,
        hole: std::ops::Range<u64>,
    ) -> impl FnMut(u64, u32) -> std::future::Ready<crate::broker::BrokerResult<Read>> {
        move |offset, count| {
            let wanted: BTreeSet<u64> = (offset..offset + u64::from(count))
                .filter(|o| *o <= head)
                .collect();
            std::future::ready(Ok(if wanted.iter().any(|o| hole.contains(o)) {
                Read::Refused
            } else {
                Read::Polled(PolledMessages {
                    partition_id: 0,
                    current_offset: head,
                    messages: wanted
                        .into_iter()
                        .map(|offset| StoredMessage {
                            offset,
                            timestamp_micros: 0,
                            id: 0,
                            headers: Default::default(),
                            payload: Default::default(),
                        })
                        .collect(),
                })
            }))
        }
    }

    fn offsets(polled: &PolledMessages) -> Vec<u64> {
        polled.messages.iter().map(|m| m.offset).collect()
    }

    #[tokio::test]
    async fn a_read_spoiled_by_a_hole_further_on_returns_what_lies_before_it() {
        let stepped = step_past(0, 100, partition(20, 5..9))
            .await
            .expect("no error")
            .expect("stepped");
        assert_eq!(stepped.skipped, None);
        assert!(offsets(&stepped.polled).starts_with(&[0, 1, 2]));
        assert!(offsets(&stepped.polled).iter().all(|o| *o < 5));
    }

    #[tokio::test]
    async fn a_read_inside_a_hole_goes_on_from_the_first_readable_offset() {
        for (start, hole) in [(5, 5..9), (0, 0..1), (7, 5..1000), (3, 3..4)] {
            let stepped = step_past(start, 10, partition(2000, hole.clone()))
                .await
                .expect("no error")
                .expect("stepped");
            assert_eq!(stepped.skipped, Some((start, hole.end)), "{hole:?}");
            assert_eq!(offsets(&stepped.polled)[0], hole.end, "{hole:?}");
            assert_eq!(stepped.polled.messages.len(), 10);
        }
    }

    #[tokio::test]
    async fn nothing_readable_up_to_the_head_answers_none() {
        let stepped = step_past(5, 10, partition(9, 5..10))
            .await
            .expect("no error");
        assert!(stepped.is_none());
    }
}

#[test]
fn the_durability_settings_are_read_from_the_servers_configuration() {
    use super::convert::durability_from_config;
    use crate::broker::Durability;
    let text = "[system]\nenforce_fsync = true\n[system.partition]\npath = \"p\"\n\
                messages_required_to_save = 1024\nenforce_fsync = false\n[system.segment]\n\
                messages_required_to_save = 1\n";
    assert_eq!(
        durability_from_config(text),
        Some(Durability::ServerSettings {
            fsync: false,
            messages_required_to_save: 1024
        })
    );
    assert_eq!(durability_from_config("[system.partition]\n"), None);
}
