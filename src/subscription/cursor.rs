//! Resumable cursors: what a subscription was (stream, topic, consumer, scope, start, the
//! topic's incarnation) and where each partition is read next, signed (see [`super::keys`]) so
//! a client can hold it but not forge or alter it, and compact enough to travel in every event.

use std::collections::BTreeMap;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tonic::Status;

use super::{Subscription, keys::CursorKeys};
use crate::{
    answer::invalid_field,
    broker::{CREATION_SLACK_MICROS, PollingStrategy, TopicInfo, same_creation},
};

/// 2: cursors carry their subscription's scope and the topic's incarnation. 3: and when the
/// newest of its partitions was created (2 is still read, without it).
const CURSOR_VERSION: u8 = 3;
const CURSOR_VERSION_2: u8 = 2;

/// What a cursor resumes: the subscription it came from, bound to the topic's incarnation, and
/// where each of its partitions is read next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Cursor {
    pub(super) stream: String,
    pub(super) topic: String,
    pub(super) consumer: String,
    /// The topic's id and creation time when the cursor was issued: a topic deleted and created
    /// again under the same name is another log, and the cursor is refused there.
    pub(super) topic_id: u32,
    pub(super) topic_created_at: u64,
    pub(super) scope: Scope,
    /// Where partitions without a position yet start (the subscription's strategy).
    pub(super) start: Start,
    /// The next offset of each partition that has one, written compactly (see `positions`).
    #[serde(with = "positions")]
    pub(super) next: BTreeMap<u32, u64>,
    /// When the newest partition it followed was created, as the subscription opened: one of
    /// its partitions created later was deleted and created again since, another log. 0:
    /// unknown (a version 2 cursor).
    pub(super) partitions_created_at: u64,
}

/// A version 2 cursor: a [`Cursor`] without `partitions_created_at`.
#[derive(Deserialize)]
struct CursorV2 {
    stream: String,
    topic: String,
    consumer: String,
    topic_id: u32,
    topic_created_at: u64,
    scope: Scope,
    start: Start,
    #[serde(with = "positions")]
    next: BTreeMap<u32, u64>,
}

impl From<CursorV2> for Cursor {
    fn from(old: CursorV2) -> Self {
        Self {
            stream: old.stream,
            topic: old.topic,
            consumer: old.consumer,
            topic_id: old.topic_id,
            topic_created_at: old.topic_created_at,
            scope: old.scope,
            start: old.start,
            next: old.next,
            partitions_created_at: 0,
        }
    }
}

/// Positions as (gap from the previous partition, offset minus the previous offset) pairs:
/// partitions are mostly consecutive and their offsets alike, so both numbers are small
/// varints, and a cursor of a thousand partitions stays a few KiB (it travels in every event,
/// and SSE clients send it back as a header).
mod positions {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(
        next: &BTreeMap<u32, u64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut previous = (None::<u32>, 0u64);
        let pairs: Vec<(u32, i64)> = next
            .iter()
            .map(|(&partition, &offset)| {
                let gap = previous
                    .0
                    .map_or(partition, |p| partition.wrapping_sub(p + 1));
                // Offsets fit i64 in practice; wrapping keeps the round trip exact regardless.
                let delta = offset.wrapping_sub(previous.1).cast_signed();
                previous = (Some(partition), offset);
                (gap, delta)
            })
            .collect();
        pairs.serialize(serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<u32, u64>, D::Error> {
        let pairs = Vec::<(u32, i64)>::deserialize(deserializer)?;
        let mut previous = (None::<u32>, 0u64);
        let mut next = BTreeMap::new();
        for (gap, delta) in pairs {
            let partition = previous
                .0
                .map_or(Some(gap), |p| {
                    p.checked_add(1).and_then(|p| p.checked_add(gap))
                })
                .ok_or_else(|| serde::de::Error::custom("partition out of range"))?;
            let offset = previous.1.wrapping_add(delta.cast_unsigned());
            next.insert(partition, offset);
            previous = (Some(partition), offset);
        }
        Ok(next)
    }
}

/// The partitions a subscription follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Scope {
    One(u32),
    /// Every partition; this many existed when the subscription started. Partitions added
    /// since are read from their first message.
    All(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Start {
    Offset(u64),
    Timestamp(u64),
    First,
    Last,
    Next,
}

impl From<PollingStrategy> for Start {
    fn from(strategy: PollingStrategy) -> Self {
        match strategy {
            PollingStrategy::Offset(offset) => Start::Offset(offset),
            PollingStrategy::Timestamp(micros) => Start::Timestamp(micros),
            PollingStrategy::First => Start::First,
            PollingStrategy::Last => Start::Last,
            PollingStrategy::Next => Start::Next,
        }
    }
}

impl From<Start> for PollingStrategy {
    fn from(start: Start) -> Self {
        match start {
            Start::Offset(offset) => PollingStrategy::Offset(offset),
            Start::Timestamp(micros) => PollingStrategy::Timestamp(micros),
            Start::First => PollingStrategy::First,
            Start::Last => PollingStrategy::Last,
            Start::Next => PollingStrategy::Next,
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    <HmacSha256 as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("any key length"))
}

pub(super) fn encode(cursor: &Cursor, keys: &CursorKeys) -> Result<String, Status> {
    let mut bytes = vec![CURSOR_VERSION];
    // Cannot fail for these plain types; if it ever did, the stream ends with an error rather
    // than hand out a cursor that would never decode.
    let body = postcard::to_stdvec(cursor)
        .map_err(|_| Status::internal("cannot encode the subscription's cursor"))?;
    bytes.extend(body);
    let mut signer = mac(keys.signing());
    signer.update(&bytes);
    bytes.extend(signer.finalize().into_bytes());
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The cursor `text` holds, if one of `keys` signed it.
pub(super) fn decode(text: &str, keys: &CursorKeys) -> Result<Cursor, Status> {
    let refuse = |why: &str| invalid_field("cursor", why.to_owned());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| refuse("is not a cursor this gateway issued"))?;
    if bytes.len() < 1 + 32 {
        return Err(refuse("is not a cursor this gateway issued"));
    }
    let (body, tag) = bytes.split_at(bytes.len() - 32);
    let signed = keys.verifying().any(|key| {
        let mut verifier = mac(key);
        verifier.update(body);
        verifier.verify_slice(tag).is_ok()
    });
    if !signed {
        return Err(refuse(
            "was altered or signed with another key (CURSOR_SECRET)",
        ));
    }
    match body[0] {
        CURSOR_VERSION => postcard::from_bytes(&body[1..]).map_err(|_| refuse("does not decode")),
        CURSOR_VERSION_2 => postcard::from_bytes::<CursorV2>(&body[1..])
            .map(Cursor::from)
            .map_err(|_| refuse("does not decode")),
        _ => Err(refuse(
            "comes from another version of the gateway; subscribe again without it",
        )),
    }
}

/// Refuses a cursor whose subscription differs from what `request` names.
pub(super) fn conflicts(
    cursor: &Cursor,
    request: &Subscription,
    consumer: &str,
) -> Result<(), Status> {
    let conflict = |what: String| invalid_field("cursor", what);
    if cursor.stream != request.stream_text || cursor.topic != request.topic_text {
        return Err(conflict(format!(
            "was issued for {}/{}, not {}/{}",
            cursor.stream, cursor.topic, request.stream_text, request.topic_text
        )));
    }
    if !consumer.is_empty() && cursor.consumer != consumer {
        return Err(conflict(format!(
            "was issued for consumer {:?}, not {consumer:?}",
            cursor.consumer
        )));
    }
    match (cursor.scope, request.partition_id) {
        (Scope::One(issued), Some(asked)) if issued != asked => {
            return Err(conflict(format!(
                "was issued for partition {issued}, not partition {asked}"
            )));
        }
        (Scope::All(_), Some(asked)) => {
            return Err(conflict(format!(
                "was issued for every partition, not partition {asked} alone"
            )));
        }
        _ => {}
    }
    Ok(())
}

/// Refuses a cursor of another incarnation of the topic, or past the end of a partition (the
/// log was purged since).
pub(super) fn same_log(cursor: &Cursor, topic: &TopicInfo) -> Result<(), Status> {
    let conflict = |what: String| invalid_field("cursor", what);
    if cursor.topic_id != topic.id
        || !same_creation(cursor.topic_created_at, topic.created_at_micros)
    {
        return Err(conflict(
            "belongs to a topic that was deleted since (this one was created again under its \
             name); subscribe again without it"
                .into(),
        ));
    }
    for partition in &topic.partitions {
        if cursor.next.contains_key(&partition.id)
            && cursor.partitions_created_at > 0
            && partition.created_at_micros
                > cursor
                    .partitions_created_at
                    .saturating_add(CREATION_SLACK_MICROS)
        {
            return Err(conflict(format!(
                "read partition {}, which was deleted and created again since; subscribe again \
                 without it",
                partition.id
            )));
        }
        if let Some(next) = cursor.next.get(&partition.id)
            && *next > partition.next_offset()
        {
            return Err(conflict(format!(
                "is past the end of partition {} ({} < {next}): it was purged since; subscribe \
                 again without it",
                partition.id,
                partition.next_offset()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &[u8]) -> CursorKeys {
        CursorKeys::new(secret.to_vec(), None)
    }

    fn cursor() -> Cursor {
        Cursor {
            stream: "orders".into(),
            topic: "created".into(),
            consumer: String::new(),
            topic_id: 3,
            topic_created_at: 1_700_000_000_000_000,
            scope: Scope::All(3),
            start: Start::First,
            next: [(0, 5), (2, 9)].into_iter().collect(),
            partitions_created_at: 1_700_000_000_000_000,
        }
    }

    #[test]
    fn a_thousand_partitions_make_a_cursor_of_a_few_kib() {
        let wide = Cursor {
            scope: Scope::All(1000),
            next: (0..1000)
                .map(|p| (p, 1_000_000 + u64::from(p % 7) * 13))
                .collect(),
            ..cursor()
        };
        let text = encode(&wide, &keys(b"secret-a")).expect("encodes");
        assert!(text.len() < 4096, "{} bytes", text.len());
        assert_eq!(decode(&text, &keys(b"secret-a")).expect("valid"), wide);
        let sparse = Cursor {
            next: [(3, u64::MAX), (900, 0), (901, 5)].into_iter().collect(),
            ..cursor()
        };
        let text = encode(&sparse, &keys(b"secret-a")).expect("encodes");
        assert_eq!(decode(&text, &keys(b"secret-a")).expect("valid"), sparse);
    }

    proptest::proptest! {
        #[test]
        fn any_positions_round_trip(
            next in proptest::collection::btree_map(proptest::num::u32::ANY, proptest::num::u64::ANY, 0..64),
            one in proptest::option::of(proptest::num::u32::ANY),
        ) {
            let original = Cursor {
                scope: one.map_or(Scope::All(64), Scope::One),
                next,
                ..cursor()
            };
            let text = encode(&original, &keys(b"secret-a")).expect("encodes");
            proptest::prop_assert_eq!(decode(&text, &keys(b"secret-a")).ok(), Some(original));
        }

        #[test]
        fn any_text_is_refused_or_decoded_without_panicking(text in "\\PC{0,300}") {
            let _ = decode(&text, &keys(b"secret-a"));
        }
    }

    /// Iggy, once restarted, reports a topic's creation some microseconds off what it said
    /// before: the cursor still names that topic. One created again later does not.
    #[test]
    fn a_cursor_outlives_its_backends_restart_not_its_topics_deletion() {
        let topic = |created_at_micros: u64| TopicInfo {
            id: 3,
            name: "created".into(),
            created_at_micros,
            partitions_count: 3,
            message_expiry_micros: None,
            max_topic_size_bytes: None,
            compression: crate::broker::Compression::None,
            replication_factor: 1,
            size_bytes: 0,
            messages_count: 0,
            partitions: Vec::new(),
        };
        let created = cursor().topic_created_at;
        assert!(same_log(&cursor(), &topic(created)).is_ok());
        assert!(same_log(&cursor(), &topic(created + 160)).is_ok());
        assert!(same_log(&cursor(), &topic(created - 10)).is_ok());
        let again = same_log(&cursor(), &topic(created + 5_000_000)).expect_err("another topic");
        assert!(again.message().contains("created again"), "{again:?}");

        // A partition it read, deleted and created again since, is another log; one created
        // since that it never read (added to the topic) is not.
        let with_partitions = |created_at: [u64; 3]| TopicInfo {
            partitions: (0..3)
                .map(|id| crate::broker::PartitionInfo {
                    id,
                    created_at_micros: created_at[id as usize],
                    current_offset: 20,
                    size_bytes: 0,
                    messages_count: 21,
                })
                .collect(),
            ..topic(created)
        };
        let later = created + 60_000_000;
        assert!(
            same_log(
                &cursor(),
                &with_partitions([created, created, created + 300])
            )
            .is_ok()
        );
        assert!(same_log(&cursor(), &with_partitions([created, later, created])).is_ok());
        let recreated = same_log(&cursor(), &with_partitions([created, created, later]))
            .expect_err("partition 2 is another log");
        assert!(recreated.message().contains("partition 2"), "{recreated:?}");
        // A version 2 cursor does not know: it is taken as before.
        let old = Cursor {
            partitions_created_at: 0,
            ..cursor()
        };
        assert!(same_log(&old, &with_partitions([created, created, later])).is_ok());
    }

    /// Cursors issued before partitions' creation was carried (version 2) still resume.
    #[test]
    fn a_version_2_cursor_still_decodes() {
        #[derive(Serialize)]
        struct V2<'a> {
            stream: &'a str,
            topic: &'a str,
            consumer: &'a str,
            topic_id: u32,
            topic_created_at: u64,
            scope: Scope,
            start: Start,
            #[serde(with = "super::positions")]
            next: BTreeMap<u32, u64>,
        }
        let now = cursor();
        let mut bytes = vec![CURSOR_VERSION_2];
        bytes.extend(
            postcard::to_stdvec(&V2 {
                stream: &now.stream,
                topic: &now.topic,
                consumer: &now.consumer,
                topic_id: now.topic_id,
                topic_created_at: now.topic_created_at,
                scope: now.scope,
                start: now.start,
                next: now.next.clone(),
            })
            .expect("encodes"),
        );
        let mut signer = mac(b"secret-a");
        signer.update(&bytes);
        bytes.extend(signer.finalize().into_bytes());
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let decoded = decode(&text, &keys(b"secret-a")).expect("a version 2 cursor");
        assert_eq!(
            decoded,
            Cursor {
                partitions_created_at: 0,
                ..now
            }
        );
    }

    #[test]
    fn cursors_round_trip_under_the_same_secret_only() {
        let text = encode(&cursor(), &keys(b"secret-a")).expect("encodes");
        assert_eq!(decode(&text, &keys(b"secret-a")).expect("valid"), cursor());
        assert!(decode(&text, &keys(b"secret-b")).is_err(), "foreign key");
        let mut tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&text)
            .expect("base64");
        tampered[3] ^= 1;
        let tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tampered);
        assert_eq!(
            decode(&tampered, &keys(b"secret-a"))
                .expect_err("tampered")
                .code(),
            tonic::Code::InvalidArgument
        );
        assert!(decode("not a cursor", &keys(b"secret-a")).is_err());
    }

    #[test]
    fn during_a_rotation_the_previous_key_verifies_and_the_current_one_signs() {
        let old = encode(&cursor(), &keys(b"secret-a")).expect("encodes");
        let rotating = CursorKeys::new(b"secret-b".to_vec(), Some(b"secret-a".to_vec()));
        assert_eq!(decode(&old, &rotating).expect("still valid"), cursor());
        let new = encode(&cursor(), &rotating).expect("encodes");
        assert_eq!(
            decode(&new, &keys(b"secret-b")).expect("signed with b"),
            cursor()
        );
        assert!(decode(&new, &keys(b"secret-a")).is_err(), "not with a");
        assert!(
            decode(&old, &keys(b"secret-b")).is_err(),
            "a is gone once rotated out"
        );
    }
}
