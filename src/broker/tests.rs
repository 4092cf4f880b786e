use super::*;

#[test]
fn names_must_be_addressable_and_bounded() {
    assert!(Name::parse("orders").is_ok());
    assert!(Name::parse("").is_err());
    assert!(Name::parse("123").is_err());
    assert!(Name::parse(&"x".repeat(255)).is_ok());
    assert!(Name::parse(&"x".repeat(256)).is_err());
    assert!(Name::parse("a\nb").is_err());
    assert!(Name::parse(".").is_err());
    assert!(Name::parse("..").is_err());
    assert!(Name::parse("...").is_ok());
    assert!(Name::parse(".hidden").is_ok());
}

#[test]
fn digits_are_ids_and_anything_else_is_a_name() {
    assert_eq!(Identifier::parse("0"), Ok(Identifier::Id(0)));
    assert_eq!(Identifier::parse("42"), Ok(Identifier::Id(42)));
    assert_eq!(
        Identifier::parse("orders-1"),
        Ok(Identifier::Name("orders-1".into()))
    );
    assert!(Identifier::parse("99999999999").is_err());
    assert!(Identifier::parse("").is_err());
}

#[test]
fn a_key_always_maps_to_the_same_partition() {
    // Pinned values: changing the hash would move keys between partitions after an upgrade.
    assert_eq!(
        partition_for_key(b"user-1", 8),
        partition_for_key(b"user-1", 8)
    );
    assert_eq!(
        partition_for_key(b"", 3),
        (0xcbf2_9ce4_8422_2325_u64 % 3) as u32
    );
    let spread: std::collections::BTreeSet<u32> = (0..100)
        .map(|i| partition_for_key(format!("key-{i}").as_bytes(), 4))
        .collect();
    assert_eq!(spread.len(), 4, "100 keys should reach all 4 partitions");
}

#[test]
fn a_partitions_next_offset_is_zero_while_empty_and_one_past_the_newest_after() {
    let partition = |current_offset, messages_count| PartitionInfo {
        id: 0,
        created_at_micros: 0,
        current_offset,
        size_bytes: 0,
        messages_count,
    };
    assert_eq!(partition(0, 0).next_offset(), 0);
    assert_eq!(partition(0, 1).next_offset(), 1);
    assert_eq!(partition(41, 42).next_offset(), 42);
}

fn topic(name: &str) -> TopicInfo {
    TopicInfo {
        id: 3,
        name: name.into(),
        created_at_micros: 1_700_000_000_000_000,
        partitions_count: 2,
        message_expiry_micros: None,
        max_topic_size_bytes: None,
        compression: Compression::None,
        replication_factor: 1,
        size_bytes: 0,
        messages_count: 0,
        partitions: Vec::new(),
    }
}

#[test]
fn an_etag_is_the_same_in_every_process_and_follows_settings_not_counters() {
    let base = topic("created");
    // Pinned: gateways in front of one Iggy, and a gateway after an upgrade, must agree on it.
    assert_eq!(base.etag().as_str(), "a8aRzG2hqUNQq3JnD_h2sQ");
    let counted = TopicInfo {
        size_bytes: 99,
        messages_count: 7,
        partitions: vec![PartitionInfo {
            id: 0,
            created_at_micros: 1,
            current_offset: 6,
            size_bytes: 99,
            messages_count: 7,
        }],
        ..topic("created")
    };
    assert_eq!(counted.etag(), base.etag());
    // Iggy, restarted, reports a creation time some microseconds off the one it reported.
    let restarted = TopicInfo {
        created_at_micros: base.created_at_micros + 160,
        ..topic("created")
    };
    assert_eq!(restarted.etag(), base.etag());
    let changes = [
        TopicInfo {
            name: "created-v2".into(),
            ..topic("created")
        },
        TopicInfo {
            created_at_micros: base.created_at_micros + 1_000_000,
            ..topic("created")
        },
        TopicInfo {
            partitions_count: 3,
            ..topic("created")
        },
        TopicInfo {
            message_expiry_micros: Some(0),
            ..topic("created")
        },
        TopicInfo {
            max_topic_size_bytes: Some(0),
            ..topic("created")
        },
        TopicInfo {
            compression: Compression::Gzip,
            ..topic("created")
        },
        TopicInfo {
            replication_factor: 2,
            ..topic("created")
        },
    ];
    for changed in changes {
        assert_ne!(changed.etag(), base.etag(), "{changed:?}");
    }
}

#[test]
fn a_given_etag_must_be_the_current_one() {
    let current = topic("created").etag();
    let resource = || "topic 'created'".to_owned();
    assert_eq!(current.ensure(None, resource), Ok(()));
    assert_eq!(current.ensure(Some(&current.clone()), resource), Ok(()));
    assert_eq!(ETag::given(""), None, "empty means unconditional");
    let stale = ETag::given("stale").expect("an etag");
    assert!(matches!(
        current.ensure(Some(&stale), resource),
        Err(BrokerError::EtagMismatch { resource }) if resource == "topic 'created'"
    ));
}

/// A purge resets every partition; deleting partitions those from its first id on; heard
/// together, what either reset.
#[test]
fn resets_say_which_partitions_start_again() {
    let deleted = |from| Reset::PartitionsDeleted { from };
    assert!(Reset::Purged.resets(0));
    assert!(!deleted(2).resets(1));
    assert!(deleted(2).resets(2) && deleted(2).resets(9));
    assert_eq!(deleted(3).and(deleted(1)), deleted(1));
    assert_eq!(deleted(3).and(Reset::Purged), Reset::Purged);
    assert_eq!(Reset::Purged.and(deleted(3)), Reset::Purged);
}
