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
    let broker = EmbeddedBroker::open(&Location::Memory).expect("opens");
    broker
        .create_stream(Name::parse("s").expect("name"))
        .await
        .expect("stream");
    broker
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
        .expect("topic");
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
        let broker = EmbeddedBroker::open(&location).expect("opens");
        broker
            .create_stream(Name::parse("s").expect("name"))
            .await
            .expect("stream");
        broker
            .create_topic(CreateTopic {
                stream: Identifier::Name("s".into()),
                name: Name::parse("t").expect("name"),
                partitions_count: 1,
                message_expiry_micros: None,
                max_topic_size_bytes: None,
                compression: Compression::None,
                replication_factor: 1,
            })
            .await
            .expect("topic");
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
