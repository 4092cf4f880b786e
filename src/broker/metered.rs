//! `MeteredBroker`: the `Broker` decorator that counts the messages and payload bytes sent and
//! polled, and the consumer offsets stored, at the seam, so every backend is counted the same
//! way, and announces the renames, deletions and purges made through it (`catalog_changes`),
//! whatever the backend. Every other call passes through unchanged; the counters themselves
//! live in the metrics registry (`crate::metrics`).

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{broadcast, watch};

use super::{
    Broker, BrokerResult, CatalogChange, ConsumerOffsetInfo, ConsumerOffsetRef, CreateTopic,
    Durability, ETag, Identifier, Name, PollMessages, PolledMessages, Reset, SendCounts,
    SendMessages, Sent, SkippedHoles, StreamInfo, TopicInfo, TopicRef, UpdateStream, UpdateTopic,
};
use crate::metrics::Metrics;

/// Announcements a subscription may fall behind by before it checks regardless.
const CATALOG_BACKLOG: usize = 256;

/// The broker, counting the messages and bytes that pass through it.
pub struct MeteredBroker {
    inner: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    /// Renames and deletions of streams and topics made through this broker.
    catalog: broadcast::Sender<CatalogChange>,
}

impl MeteredBroker {
    pub fn new(inner: Arc<dyn Broker>, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            metrics,
            // A subscription that falls this far behind checks anyway.
            catalog: broadcast::channel(CATALOG_BACKLOG).0,
        }
    }

    /// Announces a rename or deletion once it is made; a refused one changed nothing, and
    /// costs the subscriptions no check. Only subscriptions of what it names check.
    fn changed<T>(&self, result: BrokerResult<T>, change: CatalogChange) -> BrokerResult<T> {
        if result.is_ok() {
            // No receiver (no subscription) is no error.
            let _ = self.catalog.send(change);
        }
        result
    }

    /// Announces a purge or a deletion of partitions, before it is made and again after (when
    /// the guard it returns is dropped, so also when the call is cut short by a deadline or a
    /// client gone, which Iggy may carry out all the same): a subscription whose poll meets
    /// the new log finds the first after that poll, and one that had read nothing when it
    /// took the first finds the second once it has. One that fails ends subscriptions for
    /// nothing; they resume with their cursors.
    fn resetting(&self, change: CatalogChange) -> Announced {
        let _ = self.catalog.send(change.clone());
        Announced {
            catalog: self.catalog.clone(),
            change,
        }
    }
}

#[async_trait]
impl Broker for MeteredBroker {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn availability(&self) -> watch::Receiver<bool> {
        self.inner.availability()
    }
    fn gave_up(&self) -> watch::Receiver<bool> {
        self.inner.gave_up()
    }
    fn partition_appends(
        &self,
        topic: &TopicRef,
        partition_id: u32,
    ) -> Option<watch::Receiver<u64>> {
        self.inner.partition_appends(topic, partition_id)
    }
    fn reconnects(&self) -> u64 {
        self.inner.reconnects()
    }
    fn durability(&self) -> Durability {
        self.inner.durability()
    }
    fn reuses_topic_ids(&self) -> bool {
        self.inner.reuses_topic_ids()
    }
    fn catalog_changes(&self) -> Option<broadcast::Receiver<CatalogChange>> {
        Some(self.catalog.subscribe())
    }
    fn skipped_holes(&self) -> SkippedHoles {
        self.inner.skipped_holes()
    }
    fn send_counts(&self) -> SendCounts {
        self.inner.send_counts()
    }
    async fn close(&self) {
        self.inner.close().await;
    }
    async fn create_stream(&self, name: Name) -> BrokerResult<StreamInfo> {
        self.inner.create_stream(name).await
    }
    async fn get_stream(&self, stream: Identifier) -> BrokerResult<StreamInfo> {
        self.inner.get_stream(stream).await
    }
    async fn list_streams(&self) -> BrokerResult<Vec<StreamInfo>> {
        self.inner.list_streams().await
    }
    async fn update_stream(&self, request: UpdateStream) -> BrokerResult<StreamInfo> {
        let change = CatalogChange {
            stream: request.stream.clone(),
            topic: None,
            reset: None,
        };
        self.changed(self.inner.update_stream(request).await, change)
    }
    async fn delete_stream(&self, stream: Identifier, expected: Option<ETag>) -> BrokerResult<()> {
        let change = CatalogChange {
            stream: stream.clone(),
            topic: None,
            reset: None,
        };
        self.changed(self.inner.delete_stream(stream, expected).await, change)
    }
    async fn purge_stream(&self, stream: Identifier) -> BrokerResult<()> {
        let change = CatalogChange {
            stream: stream.clone(),
            topic: None,
            reset: Some(Reset::Purged),
        };
        let _announced = self.resetting(change);
        self.inner.purge_stream(stream).await
    }
    async fn create_topic(&self, request: CreateTopic) -> BrokerResult<TopicInfo> {
        self.inner.create_topic(request).await
    }
    async fn get_topic(&self, topic: TopicRef) -> BrokerResult<TopicInfo> {
        self.inner.get_topic(topic).await
    }
    async fn list_topics(&self, stream: Identifier) -> BrokerResult<Vec<TopicInfo>> {
        self.inner.list_topics(stream).await
    }
    async fn update_topic(&self, request: UpdateTopic) -> BrokerResult<TopicInfo> {
        let change = CatalogChange {
            stream: request.topic.stream.clone(),
            topic: Some(request.topic.topic.clone()),
            reset: None,
        };
        self.changed(self.inner.update_topic(request).await, change)
    }
    async fn delete_topic(&self, topic: TopicRef, expected: Option<ETag>) -> BrokerResult<()> {
        let change = CatalogChange {
            stream: topic.stream.clone(),
            topic: Some(topic.topic.clone()),
            reset: None,
        };
        self.changed(self.inner.delete_topic(topic, expected).await, change)
    }
    async fn purge_topic(&self, topic: TopicRef) -> BrokerResult<()> {
        let change = CatalogChange {
            stream: topic.stream.clone(),
            topic: Some(topic.topic.clone()),
            reset: Some(Reset::Purged),
        };
        let _announced = self.resetting(change);
        self.inner.purge_topic(topic).await
    }
    async fn create_partitions(&self, topic: TopicRef, count: u32) -> BrokerResult<TopicInfo> {
        self.inner.create_partitions(topic, count).await
    }
    async fn delete_partitions(&self, topic: TopicRef, count: u32) -> BrokerResult<TopicInfo> {
        // Partitions created again later take the deleted ones' ids, from offset 0. The last
        // `count` go; a deletion the backend will refuse (none, or not one left) announces
        // nothing, nor does one of a topic that cannot be read.
        let from = match self.inner.get_topic(topic.clone()).await {
            Ok(info) if count > 0 && count < info.partitions_count => {
                Some(info.partitions_count - count)
            }
            _ => None,
        };
        let change = |from| CatalogChange {
            stream: topic.stream.clone(),
            topic: Some(topic.topic.clone()),
            reset: Some(Reset::PartitionsDeleted { from }),
        };
        let _announced = from.map(|from| self.resetting(change(from)));
        let deleted = self.inner.delete_partitions(topic.clone(), count).await;
        // And what is gone as the topic now stands: deletions made at the same time (each
        // read the count before the other) took more than either announced.
        if let Ok(info) = &deleted {
            let _ = self.catalog.send(change(info.partitions_count));
        }
        deleted
    }
    async fn send_messages(&self, request: SendMessages) -> BrokerResult<Sent> {
        let count = request.messages.len() as u64;
        let bytes: u64 = request
            .messages
            .iter()
            .map(|m| m.payload.len() as u64)
            .sum();
        let sent = self.inner.send_messages(request).await?;
        if sent == Sent::Stored {
            self.metrics.count_sent(count, bytes);
        }
        Ok(sent)
    }
    async fn poll_messages(&self, request: PollMessages) -> BrokerResult<PolledMessages> {
        let polled = self.inner.poll_messages(request).await?;
        self.metrics.count_polled(
            polled.messages.len() as u64,
            polled.messages.iter().map(|m| m.payload.len() as u64).sum(),
        );
        Ok(polled)
    }
    async fn store_consumer_offset(&self, at: ConsumerOffsetRef, offset: u64) -> BrokerResult<()> {
        self.inner.store_consumer_offset(at, offset).await?;
        self.metrics.offset_stored();
        Ok(())
    }
    async fn get_consumer_offset(&self, at: ConsumerOffsetRef) -> BrokerResult<ConsumerOffsetInfo> {
        self.inner.get_consumer_offset(at).await
    }
    async fn delete_consumer_offset(&self, at: ConsumerOffsetRef) -> BrokerResult<()> {
        self.inner.delete_consumer_offset(at).await
    }
}

/// Announces its change again when dropped (see `MeteredBroker::resetting`).
struct Announced {
    catalog: broadcast::Sender<CatalogChange>,
    change: CatalogChange,
}

impl Drop for Announced {
    fn drop(&mut self) {
        let _ = self.catalog.send(self.change.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{
        Compression, CreateTopic, Identifier, Name, TopicRef,
        embedded::{EmbeddedBroker, Location},
    };

    /// A metered in-memory store holding topic `orders/created` of `partitions`.
    async fn with_topic(partitions: u32) -> (MeteredBroker, TopicRef) {
        let inner = EmbeddedBroker::open(&Location::Memory).expect("store");
        let broker = MeteredBroker::new(Arc::new(inner), Arc::new(Metrics::new()));
        broker
            .create_stream(Name::parse("orders").expect("name"))
            .await
            .expect("stream");
        broker
            .create_topic(CreateTopic {
                stream: Identifier::Name("orders".into()),
                name: Name::parse("created").expect("name"),
                partitions_count: partitions,
                message_expiry_micros: None,
                max_topic_size_bytes: None,
                compression: Compression::None,
                replication_factor: 1,
            })
            .await
            .expect("topic");
        let topic = TopicRef {
            stream: Identifier::Name("orders".into()),
            topic: Identifier::Name("created".into()),
        };
        (broker, topic)
    }

    /// A deletion of partitions is announced before it is made, from the partitions it will
    /// take, and after, from what the topic then holds; one the backend refuses, not at all.
    #[tokio::test]
    async fn a_deletion_of_partitions_is_announced_from_the_first_it_takes() {
        let (broker, topic) = with_topic(4).await;
        let mut changes = broker.catalog_changes().expect("announced");
        for refused in [0, 4, 9] {
            assert!(
                broker
                    .delete_partitions(topic.clone(), refused)
                    .await
                    .is_err()
            );
        }
        assert!(
            changes.try_recv().is_err(),
            "a refused deletion announces nothing"
        );
        broker
            .delete_partitions(topic.clone(), 2)
            .await
            .expect("deleted");
        let mut announced = Vec::new();
        while let Ok(change) = changes.try_recv() {
            announced.push(change.reset);
        }
        assert_eq!(
            announced,
            [Some(Reset::PartitionsDeleted { from: 2 }); 3],
            "before, after (what the topic holds), and the guard's"
        );
    }

    /// A purge is announced before it is made and again after, however its call ends.
    #[tokio::test]
    async fn a_purge_is_announced_before_and_again_after_however_its_call_ends() {
        let (broker, topic) = with_topic(1).await;
        let mut changes = broker.catalog_changes().expect("announced");
        broker.purge_topic(topic.clone()).await.expect("purged");
        for _ in 0..2 {
            let change = changes.try_recv().expect("announced");
            assert_eq!(change.reset, Some(Reset::Purged));
            assert_eq!(change.topic, Some(topic.topic.clone()));
        }
        assert!(changes.try_recv().is_err());
        // The second comes from the guard's drop: a call dropped before its end (a deadline,
        // a client gone), which the backend may carry out all the same, sends it too.
        let guard = broker.resetting(CatalogChange {
            stream: topic.stream.clone(),
            topic: None,
            reset: Some(Reset::PartitionsDeleted { from: 0 }),
        });
        assert_eq!(changes.len(), 1);
        drop(guard);
        assert_eq!(changes.len(), 2);
    }
}
