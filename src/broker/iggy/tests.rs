use super::*;

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
    let iggy = message_to_iggy(&message).expect("valid");
    let stored = message_from_iggy(iggy);
    assert_eq!(stored.id, 42);
    assert_eq!(stored.headers, headers);
    assert_eq!(stored.payload, message.payload);
}
