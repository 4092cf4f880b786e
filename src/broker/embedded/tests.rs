use bytes::Bytes;
use tokio::sync::oneshot;

use super::{EmbeddedBroker, Location, PendingSend};
use crate::broker::{
    Broker, BrokerError, Compression, ConsumerOffsetRef, CreateTopic, Identifier, Name, NewMessage,
    Partitioning, PollMessages, PollingStrategy, SendMessages, TopicRef,
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
    assert_eq!(results[0], Ok(()));
    assert!(
        matches!(results[1], Err(BrokerError::PartitionNotFound { .. })),
        "{:?}",
        results[1]
    );
    assert_eq!(&results[2..], &[Ok(()), Ok(()), Ok(())]);

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
    assert_eq!(kept_reply.await.expect("answered"), Ok(()));
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
