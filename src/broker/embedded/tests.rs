use bytes::Bytes;
use tokio::sync::oneshot;

use super::{EmbeddedBroker, Location, PendingSend};
use crate::broker::{
    Broker, BrokerError, Compression, ConsumerOffsetRef, CreateTopic, IdempotencyRecord,
    Identifier, Name, NewMessage, Partitioning, PollMessages, PollingStrategy, SendMessages, Sent,
    TopicRef, now_micros,
};

fn topic() -> TopicRef {
    TopicRef {
        stream: Identifier::Name("s".into()),
        topic: Identifier::Name("t".into()),
    }
}

fn send(partitioning: Partitioning, bodies: &[&str]) -> SendMessages {
    SendMessages {
        topic: topic(),
        partitioning,
        messages: bodies
            .iter()
            .enumerate()
            .map(|(i, body)| NewMessage {
                id: i as u128 + 1,
                headers: Default::default(),
                payload: Bytes::copy_from_slice(body.as_bytes()),
            })
            .collect(),
        idempotency: None,
    }
}

async fn broker_with_topic(partitions: u32) -> EmbeddedBroker {
    broker_with_topic_at(&Location::Memory, partitions).await
}

/// A store at `location` with stream `s` and its topic `t`.
async fn broker_with_topic_at(location: &Location, partitions: u32) -> EmbeddedBroker {
    let broker = EmbeddedBroker::open(location).expect("opens");
    broker
        .create_stream(Name::parse("s").expect("name"))
        .await
        .expect("stream");
    assert_eq!(create_topic(&broker, partitions).await, "Ok(0)");
    broker
}

async fn bodies(broker: &EmbeddedBroker, partition_id: u32) -> Vec<(u64, String)> {
    broker
        .poll_messages(PollMessages {
            topic: topic(),
            partition_id,
            consumer: None,
            strategy: PollingStrategy::First,
            count: 100,
            max_bytes: usize::MAX,
            auto_commit: false,
        })
        .await
        .expect("polls")
        .messages
        .into_iter()
        .map(|m| (m.offset, String::from_utf8_lossy(&m.payload).into_owned()))
        .collect()
}

/// One group, as the writer thread would commit it: a send the catalog refuses gets its own
/// error; the others are stored with gapless offsets in queue order, and balanced sends in
/// one group still go round-robin.
#[tokio::test]
async fn a_group_commits_its_good_sends_in_order_and_refuses_only_the_bad_one() {
    let broker = broker_with_topic(2).await;
    let requests = vec![
        send(Partitioning::PartitionId(0), &["a1", "a2"]),
        send(Partitioning::PartitionId(9), &["lost"]),
        send(Partitioning::PartitionId(0), &["b1"]),
        send(Partitioning::Balanced, &["c1"]),
        send(Partitioning::Balanced, &["d1"]),
    ];
    let mut replies = Vec::new();
    let group = requests
        .into_iter()
        .map(|request| {
            let (done, reply) = oneshot::channel();
            replies.push(reply);
            PendingSend { request, done }
        })
        .collect();
    broker.inner.send_group(group);
    let mut results = Vec::new();
    for reply in replies {
        results.push(reply.await.expect("answered"));
    }
    assert_eq!(results[0], Ok(Sent::Stored));
    assert!(
        matches!(results[1], Err(BrokerError::PartitionNotFound { .. })),
        "{:?}",
        results[1]
    );
    assert_eq!(
        &results[2..],
        &[Ok(Sent::Stored), Ok(Sent::Stored), Ok(Sent::Stored)]
    );

    assert_eq!(
        bodies(&broker, 0).await,
        [(0, "a1"), (1, "a2"), (2, "b1"), (3, "c1")]
            .map(|(o, b)| (o, b.to_owned()))
            .to_vec()
    );
    assert_eq!(bodies(&broker, 1).await, vec![(0, "d1".to_owned())]);
    // The balanced cursor moved past both sends, so the next one goes to partition 0 again.
    broker
        .send_messages(send(Partitioning::Balanced, &["e1"]))
        .await
        .expect("sent");
    assert_eq!(bodies(&broker, 0).await.last(), Some(&(4, "e1".to_owned())));
}

/// A group where every send is refused writes nothing and moves nothing.
#[tokio::test]
async fn a_group_of_refused_sends_changes_nothing() {
    let broker = broker_with_topic(1).await;
    let (done, reply) = oneshot::channel();
    broker.inner.send_group(vec![PendingSend {
        request: send(Partitioning::PartitionId(3), &["x"]),
        done,
    }]);
    assert!(reply.await.expect("answered").is_err());
    broker
        .send_messages(send(Partitioning::PartitionId(0), &["first"]))
        .await
        .expect("sent");
    assert_eq!(bodies(&broker, 0).await, vec![(0, "first".to_owned())]);
}

/// A caller that gave up while its send was queued (deadline passed) was told nothing was
/// stored, so the writer drops its send: a retry then stores the batch once.
#[tokio::test]
async fn a_send_whose_caller_gave_up_before_the_commit_is_not_stored() {
    let broker = broker_with_topic(1).await;
    let (done, reply) = oneshot::channel();
    drop(reply);
    let (kept_done, kept_reply) = oneshot::channel();
    broker.inner.send_group(vec![
        PendingSend {
            request: send(Partitioning::PartitionId(0), &["abandoned"]),
            done,
        },
        PendingSend {
            request: send(Partitioning::PartitionId(0), &["kept"]),
            done: kept_done,
        },
    ]);
    assert_eq!(kept_reply.await.expect("answered"), Ok(Sent::Stored));
    assert_eq!(bodies(&broker, 0).await, vec![(0, "kept".to_owned())]);
}

/// A write signals the followers of its own partition only.
#[tokio::test]
async fn an_append_signals_only_its_own_partition() {
    let broker = broker_with_topic(2).await;
    let first = broker.partition_appends(&topic(), 0).expect("partition 0");
    let mut second = broker.partition_appends(&topic(), 1).expect("partition 1");
    assert!(
        broker.partition_appends(&topic(), 2).is_none(),
        "no such partition"
    );
    broker
        .send_messages(send(Partitioning::PartitionId(1), &["x"]))
        .await
        .expect("sent");
    assert_eq!(first.has_changed().ok(), Some(false));
    assert_eq!(second.has_changed().ok(), Some(true));
    second.borrow_and_update();
    broker
        .send_messages(send(Partitioning::PartitionId(0), &["y"]))
        .await
        .expect("sent");
    assert_eq!(first.has_changed().ok(), Some(true));
    assert_eq!(second.has_changed().ok(), Some(false));
}

/// A consumer offset may name any stored message but not the next one to come, and nothing on
/// an empty partition.
#[tokio::test]
async fn a_consumer_offset_stops_at_the_newest_message() {
    let broker = broker_with_topic(1).await;
    let at = || ConsumerOffsetRef {
        topic: topic(),
        consumer: Identifier::Name("c".into()),
        partition_id: 0,
    };
    assert!(matches!(
        broker.store_consumer_offset(at(), 0).await,
        Err(BrokerError::InvalidArgument {
            field: "offset",
            ..
        })
    ));
    broker
        .send_messages(send(Partitioning::PartitionId(0), &["a", "b"]))
        .await
        .expect("sent");
    assert_eq!(broker.store_consumer_offset(at(), 1).await, Ok(()));
    assert!(matches!(
        broker.store_consumer_offset(at(), 2).await,
        Err(BrokerError::InvalidArgument {
            field: "offset",
            ..
        })
    ));
}

fn keyed(bodies: &[&str], key: u8, fingerprint: u8, expires_at_micros: u64) -> SendMessages {
    SendMessages {
        idempotency: Some(IdempotencyRecord {
            key: [key; 32],
            fingerprint: [fingerprint; 32],
            expires_at_micros,
        }),
        ..send(Partitioning::PartitionId(0), bodies)
    }
}

#[tokio::test]
async fn a_keyed_send_is_stored_once_even_twice_in_one_group() {
    let broker = broker_with_topic(1).await;
    let later = now_micros() + 60_000_000;
    let mut replies = Vec::new();
    // An unkeyed send first: the group's keyed sends are still looked up.
    let group = [
        send(Partitioning::PartitionId(0), &["plain"]),
        keyed(&["a"], 1, 1, later),
        keyed(&["a"], 1, 1, later),
        keyed(&["other"], 1, 2, later),
        keyed(&["b"], 2, 1, later),
    ]
    .into_iter()
    .map(|request| {
        let (done, reply) = oneshot::channel();
        replies.push(reply);
        PendingSend { request, done }
    })
    .collect();
    broker.inner.send_group(group);
    let mut results = Vec::new();
    for reply in replies {
        results.push(reply.await.expect("answered"));
    }
    assert_eq!(results[0], Ok(Sent::Stored));
    assert_eq!(results[1], Ok(Sent::Stored));
    assert_eq!(results[2], Ok(Sent::Replayed));
    assert_eq!(results[3], Err(BrokerError::IdempotencyKeyReused));
    assert_eq!(results[4], Ok(Sent::Stored));
    // A later group finds the record in the store.
    assert_eq!(
        broker.send_messages(keyed(&["a"], 1, 1, later)).await,
        Ok(Sent::Replayed)
    );
    assert_eq!(
        bodies(&broker, 0).await,
        [
            (0, "plain".to_owned()),
            (1, "a".to_owned()),
            (2, "b".to_owned())
        ]
    );
}

#[tokio::test]
async fn an_idempotency_record_survives_a_restart_and_expires() {
    let dir = tempfile::tempdir().expect("dir");
    let location = Location::Directory(dir.path().to_path_buf());
    {
        let broker = broker_with_topic_at(&location, 1).await;
        let soon = now_micros() + 300_000;
        let later = now_micros() + 60_000_000;
        assert_eq!(
            broker.send_messages(keyed(&["kept"], 7, 7, later)).await,
            Ok(Sent::Stored)
        );
        assert_eq!(
            broker.send_messages(keyed(&["brief"], 8, 8, soon)).await,
            Ok(Sent::Stored)
        );
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let broker = EmbeddedBroker::open(&location).expect("opens again");
    let later = now_micros() + 60_000_000;
    assert_eq!(
        broker.send_messages(keyed(&["kept"], 7, 7, later)).await,
        Ok(Sent::Replayed),
        "the record outlived the restart"
    );
    assert_eq!(
        broker.send_messages(keyed(&["brief"], 8, 8, later)).await,
        Ok(Sent::Stored),
        "an expired record no longer counts"
    );
    assert_eq!(
        bodies(&broker, 0).await,
        [
            (0, "kept".to_owned()),
            (1, "brief".to_owned()),
            (2, "brief".to_owned())
        ]
    );
}

/// One step of [`a_store_in_memory_answers_every_call_as_the_store_on_disk`].
#[derive(Debug, Clone)]
enum Step {
    Send {
        partitioning: Partitioning,
        bodies: Vec<String>,
        /// (key, fingerprint) of an idempotency record.
        keyed: Option<(u8, u8)>,
    },
    Poll {
        partition_id: u32,
        strategy: PollingStrategy,
        count: u32,
        max_bytes: usize,
        auto_commit: bool,
    },
    Purge,
    CreatePartitions(u32),
    DeletePartitions(u32),
    StoreOffset(u32, u64),
    GetOffset(u32),
    DeleteOffset(u32),
    RecreateTopic,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let partitioning = prop_oneof![
        Just(Partitioning::Balanced),
        (0u32..4).prop_map(Partitioning::PartitionId),
        proptest::collection::vec(any::<u8>(), 1..3).prop_map(Partitioning::Key),
    ];
    let strategy = prop_oneof![
        (0u64..24).prop_map(PollingStrategy::Offset),
        Just(PollingStrategy::First),
        Just(PollingStrategy::Last),
        Just(PollingStrategy::Next),
        Just(PollingStrategy::Timestamp(0)),
        Just(PollingStrategy::Timestamp(u64::MAX)),
    ];
    prop_oneof![
        6 => (
            partitioning,
            proptest::collection::vec("[a-z]{0,12}", 1..4),
            proptest::option::weighted(0.3, (0u8..3, 0u8..2)),
        )
            .prop_map(|(partitioning, bodies, keyed)| Step::Send {
                partitioning,
                bodies,
                keyed,
            }),
        4 => (0u32..4, strategy, 1u32..8, prop_oneof![Just(usize::MAX), 1usize..30], any::<bool>())
            .prop_map(|(partition_id, strategy, count, max_bytes, auto_commit)| Step::Poll {
                partition_id,
                strategy,
                count,
                max_bytes,
                auto_commit,
            }),
        1 => Just(Step::Purge),
        1 => (1u32..3).prop_map(Step::CreatePartitions),
        1 => (1u32..3).prop_map(Step::DeletePartitions),
        1 => (0u32..4, 0u64..24).prop_map(|(p, offset)| Step::StoreOffset(p, offset)),
        1 => (0u32..4).prop_map(Step::GetOffset),
        1 => (0u32..4).prop_map(Step::DeleteOffset),
        1 => Just(Step::RecreateTopic),
    ]
}

/// Creates topic `t` in stream `s`; its id, or why not, as text.
async fn create_topic(broker: &EmbeddedBroker, partitions: u32) -> String {
    let created = broker
        .create_topic(CreateTopic {
            stream: Identifier::Name("s".into()),
            name: Name::parse("t").expect("name"),
            partitions_count: partitions,
            message_expiry_micros: None,
            max_topic_size_bytes: None,
            compression: Compression::None,
            replication_factor: 1,
        })
        .await
        .map(|info| info.id);
    format!("{created:?}")
}

/// What a step answered, with the clock's readings left out (the two stores read the clock at
/// different moments), as text to compare.
async fn take_step(broker: &EmbeddedBroker, step: &Step) -> String {
    let consumer = || Identifier::Name("c".into());
    let at = |partition_id| ConsumerOffsetRef {
        topic: topic(),
        partition_id,
        consumer: consumer(),
    };
    match step.clone() {
        Step::Send {
            partitioning,
            bodies,
            keyed: key,
        } => {
            let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
            let request = match key {
                Some((key, fingerprint)) => SendMessages {
                    partitioning,
                    ..keyed(&bodies, key, fingerprint, u64::MAX)
                },
                None => send(partitioning, &bodies),
            };
            format!("{:?}", broker.send_messages(request).await)
        }
        Step::Poll {
            partition_id,
            strategy,
            count,
            max_bytes,
            auto_commit,
        } => {
            let polled = broker
                .poll_messages(PollMessages {
                    topic: topic(),
                    partition_id,
                    consumer: Some(consumer()),
                    strategy,
                    count,
                    max_bytes,
                    auto_commit,
                })
                .await
                .map(|polled| {
                    let messages: Vec<_> = polled
                        .messages
                        .iter()
                        .map(|m| (m.offset, m.id, m.payload.clone()))
                        .collect();
                    (polled.partition_id, polled.current_offset, messages)
                });
            format!("{polled:?}")
        }
        Step::Purge => format!("{:?}", broker.purge_topic(topic()).await),
        Step::CreatePartitions(count) => format!(
            "{:?}",
            broker
                .create_partitions(topic(), count)
                .await
                .map(|info| info.partitions_count)
        ),
        Step::DeletePartitions(count) => format!(
            "{:?}",
            broker
                .delete_partitions(topic(), count)
                .await
                .map(|info| info.partitions_count)
        ),
        Step::StoreOffset(p, offset) => {
            format!("{:?}", broker.store_consumer_offset(at(p), offset).await)
        }
        Step::GetOffset(p) => format!("{:?}", broker.get_consumer_offset(at(p)).await),
        Step::DeleteOffset(p) => format!("{:?}", broker.delete_consumer_offset(at(p)).await),
        Step::RecreateTopic => {
            let deleted = broker.delete_topic(topic(), None).await;
            format!("{deleted:?} {}", create_topic(broker, 2).await)
        }
    }
}

/// The topic's counts and every partition's head and messages, as text to compare.
async fn topic_state(broker: &EmbeddedBroker) -> String {
    let Ok(info) = broker.get_topic(topic()).await else {
        return "no topic".into();
    };
    let mut state = format!(
        "{} {} {} |",
        info.partitions_count, info.messages_count, info.size_bytes
    );
    for partition in &info.partitions {
        state += &format!(
            " {} {} {} {} {:?}",
            partition.id,
            partition.current_offset,
            partition.messages_count,
            partition.size_bytes,
            bodies(broker, partition.id).await
        );
    }
    state
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// The store in memory keeps its messages outside redb; everything it answers must still be
    /// what the store on disk answers, step by step.
    #[test]
    fn a_store_in_memory_answers_every_call_as_the_store_on_disk(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("dir");
        runtime.block_on(async {
            let memory = broker_with_topic_at(&Location::Memory, 2).await;
            let disk =
                broker_with_topic_at(&Location::Directory(dir.path().to_path_buf()), 2).await;
            for (index, step) in steps.iter().enumerate() {
                let (in_memory, on_disk) =
                    (take_step(&memory, step).await, take_step(&disk, step).await);
                proptest::prop_assert_eq!(&in_memory, &on_disk, "step {}: {:?}", index, step);
                proptest::prop_assert_eq!(topic_state(&memory).await, topic_state(&disk).await);
            }
            Ok(())
        })?;
    }
}

/// A TIMESTAMP poll finds the first message at or after the time, in memory as on disk.
#[tokio::test]
async fn a_timestamp_poll_starts_at_the_first_message_at_or_after_the_time_in_either_store() {
    let dir = tempfile::tempdir().expect("dir");
    for location in [
        Location::Memory,
        Location::Directory(dir.path().to_path_buf()),
    ] {
        let broker = broker_with_topic_at(&location, 1).await;
        for batch in [["a0", "a1"], ["b0", "b1"], ["c0", "c1"]] {
            broker
                .send_messages(send(Partitioning::PartitionId(0), &batch))
                .await
                .expect("sent");
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
        let poll = |strategy| {
            broker.poll_messages(PollMessages {
                topic: topic(),
                partition_id: 0,
                consumer: None,
                strategy,
                count: 10,
                max_bytes: usize::MAX,
                auto_commit: false,
            })
        };
        let all = poll(PollingStrategy::First).await.expect("polls").messages;
        let second_batch = all[2].timestamp_micros;
        assert!(all[1].timestamp_micros < second_batch, "{location:?}");
        for (micros, first) in [
            (0, Some(0)),
            (second_batch, Some(2)),
            (second_batch + 1, Some(4)),
            (u64::MAX, None),
        ] {
            let found = poll(PollingStrategy::Timestamp(micros))
                .await
                .expect("polls")
                .messages
                .first()
                .map(|m| m.offset);
            assert_eq!(found, first, "{location:?} at {micros}");
        }
    }
}

/// NEXT polls that auto-commit, racing a purge of their partition again and again: they read
/// the two messages past the consumer's offset at most once, never the ones it had already
/// processed, and leave no offset on the purged partition (which would make the consumer skip
/// that many new messages).
#[test]
fn a_next_poll_racing_a_purge_neither_reads_committed_messages_again_nor_leaves_an_offset() {
    let dir = tempfile::tempdir().expect("dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    for location in [
        Location::Memory,
        Location::Directory(dir.path().to_path_buf()),
    ] {
        let broker = runtime.block_on(broker_with_topic_at(&location, 1));
        let at = || ConsumerOffsetRef {
            topic: topic(),
            partition_id: 0,
            consumer: Identifier::Name("c".into()),
        };
        let rounds = if location == Location::Memory {
            400
        } else {
            60
        };
        let (mut read_again, mut left) = (0, 0);
        let mut rounds_read = [0; 3];
        for _ in 0..rounds {
            runtime.block_on(async {
                broker
                    .send_messages(send(Partitioning::PartitionId(0), &["old"; 4]))
                    .await
                    .expect("sent");
                broker.store_consumer_offset(at(), 1).await.expect("stored");
            });
            let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let poller = {
                let store = std::sync::Arc::clone(&broker.inner);
                let done = std::sync::Arc::clone(&done);
                std::thread::spawn(move || {
                    let mut read = 0;
                    while !done.load(std::sync::atomic::Ordering::Acquire) {
                        read += store
                            .poll(PollMessages {
                                topic: topic(),
                                partition_id: 0,
                                consumer: Some(Identifier::Name("c".into())),
                                strategy: PollingStrategy::Next,
                                count: 10,
                                max_bytes: usize::MAX,
                                auto_commit: true,
                            })
                            .expect("polls")
                            .messages
                            .len();
                    }
                    read
                })
            };
            std::thread::sleep(std::time::Duration::from_micros(200));
            runtime
                .block_on(broker.purge_topic(topic()))
                .expect("purged");
            done.store(true, std::sync::atomic::Ordering::Release);
            let read = poller.join().expect("the poller ends");
            rounds_read[read.min(2)] += 1;
            read_again += read.saturating_sub(2);
            let stored = runtime
                .block_on(broker.get_consumer_offset(at()))
                .expect("read")
                .stored_offset;
            if stored.is_some() {
                left += 1;
                runtime
                    .block_on(broker.delete_consumer_offset(at()))
                    .expect("deleted");
            }
        }
        assert_eq!(
            (read_again, left),
            (0, 0),
            "{location:?}: rounds that read 0, 1, 2 messages: {rounds_read:?}"
        );
    }
}

/// An auto-commit whose poll read before a purge stores nothing, even once new messages have
/// brought the partition's head past its offset: the consumer would skip them. An offset
/// stored by its own call is checked against the head only.
#[tokio::test]
async fn an_auto_commit_that_read_before_a_purge_stores_nothing_after_new_messages() {
    let dir = tempfile::tempdir().expect("dir");
    for location in [
        Location::Memory,
        Location::Directory(dir.path().to_path_buf()),
    ] {
        let broker = broker_with_topic_at(&location, 1).await;
        let read_at = || broker.inner.read_catalog().expect("catalog").epoch(0, 0);
        broker
            .send_messages(send(Partitioning::PartitionId(0), &["old"; 4]))
            .await
            .expect("sent");
        let before = read_at();
        broker.purge_topic(topic()).await.expect("purged");
        broker
            .send_messages(send(Partitioning::PartitionId(0), &["new"; 10]))
            .await
            .expect("sent");
        let at = ConsumerOffsetRef {
            topic: topic(),
            partition_id: 0,
            consumer: Identifier::Name("c".into()),
        };
        let stored = || async { broker.get_consumer_offset(at.clone()).await.expect("read") };
        broker
            .inner
            .store_offset(0, 0, 0, "c", 3, Some(before))
            .expect("answered");
        assert_eq!(stored().await.stored_offset, None, "{location:?}");
        broker
            .inner
            .store_offset(0, 0, 0, "c", 3, Some(read_at()))
            .expect("answered");
        assert_eq!(stored().await.stored_offset, Some(3), "{location:?}");
        broker
            .store_consumer_offset(at.clone(), 9)
            .await
            .expect("stored");
        assert_eq!(stored().await.stored_offset, Some(9), "{location:?}");
        // Partitions deleted and added again reuse their ids: the epoch moves too.
        let before = read_at();
        broker.create_partitions(topic(), 1).await.expect("added");
        broker.delete_partitions(topic(), 1).await.expect("deleted");
        assert!(read_at() > before + 1, "{location:?}");
    }
}
