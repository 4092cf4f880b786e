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
