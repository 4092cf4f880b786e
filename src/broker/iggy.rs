//! The real Apache Iggy backend: the `iggy` SDK (0.10, for server 0.8) behind the broker seam.
//!
//! The SDK runs one request at a time per client, has no call timeout, and after a connection
//! error reconnects and re-sends the request once. So the gateway keeps a pool of clients
//! (`IGGY_POOL_SIZE`), each watched by a supervisor task that connects with exponential backoff
//! and full jitter, pings it, and rebuilds it from scratch when a ping or a call fails or times
//! out (a client whose auto-login failed can stay stuck otherwise). Every call has a timeout.
//! Callers arriving while no client is connected wait a bounded time, then get UNAVAILABLE.

mod appends;
mod chunks;
mod coalesce;
mod convert;
mod holes;
mod pool;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use async_trait::async_trait;
use iggy::prelude::{
    Consumer, ConsumerOffsetClient, IggyClient, IggyError, IggyExpiry, IggyMessage, MaxTopicSize,
    MessageClient, PartitionClient, PollingStrategy as IggyPollingStrategy, StreamClient,
    TopicClient,
};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use self::{
    appends::Appends,
    chunks::{Fetched, poll_in_chunks},
    coalesce::{Coalescer, Lane, SendFuture, Sender},
    convert::{
        Context, compression_to_iggy, expiry_to_iggy, map_error, message_to_iggy, origin_now,
        partitioning_to_iggy, poll_consumer, polled_from_iggy, size_to_iggy, strategy_to_iggy,
        stream_info, to_iggy_id, topic_details_info, topic_info,
    },
    holes::{Read, step_past},
    pool::{Pool, redact, supervise},
};
pub use self::{
    coalesce::SendBatching,
    pool::{IggySettings, backoff},
};
use super::{
    Broker, BrokerError, BrokerResult, ConsumerOffsetInfo, ConsumerOffsetRef, CreateTopic,
    Durability, ETag, Identifier, Name, NewMessage, Partitioning, PollMessages, PolledMessages,
    PollingStrategy, SendCounts, SendMessages, Sent, SkippedHoles, StreamInfo, TopicInfo, TopicRef,
    UpdateStream, UpdateTopic,
};

pub struct IggyBroker {
    pool: Arc<Pool>,
    /// Sends go through it, so concurrent calls to one lane share a round trip to Iggy.
    sends: Arc<Coalescer<IggyMessage>>,
    /// What idle subscribers wait on instead of polling each partition.
    appends: Appends,
    tasks: TaskTracker,
    cancel: CancellationToken,
    description: String,
    /// Holes in partitions' logs that polls stepped past, and the offsets passed over.
    holes: AtomicU64,
    skipped_offsets: AtomicU64,
}

impl IggyBroker {
    /// Starts the pool's supervisors and returns at once: the gateway serves (not ready) while
    /// Iggy is unreachable, and becomes ready when a connection is up.
    pub fn start(settings: IggySettings) -> Self {
        let (available, _) = watch::channel(false);
        let pool_size = settings.pool_size.max(1);
        let description = format!(
            "Iggy backend at {} ({pool_size} connections)",
            redact(&settings.connection_string)
        );
        let batching = settings.send_batching;
        let appends_idle = settings.appends_idle;
        let pool = Arc::new(Pool::new(pool_size, available, settings));
        let sends = Arc::new(Coalescer::new(
            iggy_sender(Arc::clone(&pool)),
            batching,
            pool_size,
        ));
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        for index in 0..pool_size {
            tasks.spawn(supervise(Arc::clone(&pool), index, cancel.clone()));
        }
        tasks.close();
        Self {
            appends: Appends::new(
                Arc::clone(&pool),
                appends_idle,
                tasks.clone(),
                cancel.clone(),
            ),
            pool,
            sends,
            tasks,
            cancel,
            description,
            holes: AtomicU64::new(0),
            skipped_offsets: AtomicU64::new(0),
        }
    }

    async fn call<T, F, Fut>(&self, context: &Context, op: F) -> BrokerResult<T>
    where
        F: FnOnce(Arc<IggyClient>) -> Fut,
        Fut: Future<Output = Result<T, IggyError>>,
    {
        self.answer(op)
            .await?
            .map_err(|err| map_error(err, context))
    }

    /// One call on a pooled client, under the operation timeout: the outer error when no
    /// client answered, the inner one as the server (or the SDK) gave it, for callers that act
    /// on a particular refusal before it is mapped.
    async fn answer<T, F, Fut>(&self, op: F) -> BrokerResult<Result<T, IggyError>>
    where
        F: FnOnce(Arc<IggyClient>) -> Fut,
        Fut: Future<Output = Result<T, IggyError>>,
    {
        self.pool.answer(op).await
    }

    /// One poll of `count` messages from `offset`, an invalid-offset refusal kept apart.
    async fn poll_at(
        &self,
        request: &PollMessages,
        consumer: &Consumer,
        offset: u64,
        count: u32,
    ) -> BrokerResult<Read> {
        let (stream, topic) = (
            to_iggy_id(&request.topic.stream)?,
            to_iggy_id(&request.topic.topic)?,
        );
        let partition = request.partition_id;
        let consumer = consumer.clone();
        let answer = self
            .answer(|c| async move {
                c.poll_messages(
                    &stream,
                    &topic,
                    Some(partition),
                    &consumer,
                    &IggyPollingStrategy::offset(offset),
                    count,
                    false,
                )
                .await
            })
            .await?;
        match answer {
            Ok(polled) => Ok(Read::Polled(polled_from_iggy(partition, polled))),
            Err(IggyError::InvalidOffset(_)) => Ok(Read::Refused),
            Err(err) => Err(map_error(
                err,
                &Context {
                    offset: Some(offset),
                    ..Context::partition(&request.topic, partition)
                },
            )),
        }
    }

    /// Where a poll that Iggy refused as an invalid offset starts: its offset, 0 for `First`,
    /// after the consumer's stored offset for `Next`; `None` for `Last` and `Timestamp`, which
    /// name no offset to step from.
    async fn refused_start(&self, request: &PollMessages) -> BrokerResult<Option<u64>> {
        Ok(match request.strategy {
            PollingStrategy::Offset(offset) => Some(offset),
            PollingStrategy::First => Some(0),
            PollingStrategy::Next => match &request.consumer {
                Some(consumer) => {
                    let (stream, topic) = (
                        to_iggy_id(&request.topic.stream)?,
                        to_iggy_id(&request.topic.topic)?,
                    );
                    let at = Consumer::new(to_iggy_id(consumer)?);
                    let partition = request.partition_id;
                    let context = Context {
                        consumer: Some(consumer.clone()),
                        ..Context::partition(&request.topic, partition)
                    };
                    let stored = self
                        .call(&context, |c| async move {
                            c.get_consumer_offset(&at, &stream, &topic, Some(partition))
                                .await
                        })
                        .await?;
                    Some(stored.map_or(0, |info| info.stored_offset.saturating_add(1)))
                }
                None => None,
            },
            PollingStrategy::Last | PollingStrategy::Timestamp(_) => None,
        })
    }

    /// A poll Iggy refused as an invalid offset: step past the hole (see `holes.rs`), or the
    /// refusal, naming the offset asked for, when the poll names none to step from.
    async fn poll_past_hole(
        &self,
        request: &PollMessages,
        consumer: &Consumer,
        refusal: IggyError,
    ) -> BrokerResult<PolledMessages> {
        let context = Context::partition(&request.topic, request.partition_id);
        let Some(start) = self.refused_start(request).await? else {
            return Err(map_error(refusal, &context));
        };
        let stepped = step_past(start, request.count, |offset, count| {
            self.poll_at(request, consumer, offset, count)
        })
        .await?;
        let Some(stepped) = stepped else {
            // Nothing readable up to the head yet: no messages, as at the head.
            tracing::debug!(
                partition = request.partition_id,
                offset = start,
                "Iggy cannot read this partition from the offset asked for up to its head"
            );
            return Ok(PolledMessages {
                partition_id: request.partition_id,
                current_offset: 0,
                messages: Vec::new(),
            });
        };
        if let Some((from, to)) = stepped.skipped {
            self.holes.fetch_add(1, Ordering::Relaxed);
            self.skipped_offsets
                .fetch_add(to.saturating_sub(from), Ordering::Relaxed);
            tracing::warn!(
                stream = %request.topic.stream,
                topic = %request.topic.topic,
                partition = request.partition_id,
                from,
                to,
                "Iggy cannot read offsets [from, to) of this partition (a hole in its log, \
                 e.g. after a crash); the poll went on from `to`"
            );
        }
        Ok(stepped.polled)
    }

    /// The stream a conditional change acts on: with `expected`, its etag is checked on a
    /// fresh read and the change then names the stream read by its id. Iggy has no conditional
    /// call, so this is not atomic: a change another client makes between this read and the
    /// change (one round trip) is not detected. Without `expected`, the stream as addressed.
    async fn checked_stream(
        &self,
        stream: &Identifier,
        expected: Option<&ETag>,
    ) -> BrokerResult<Identifier> {
        if expected.is_none() {
            return Ok(stream.clone());
        }
        let current = self.get_stream(stream.clone()).await?;
        current
            .etag()
            .ensure(expected, || format!("stream '{stream}'"))?;
        Ok(Identifier::Id(current.id))
    }

    async fn topic_details(&self, at: &TopicRef) -> BrokerResult<TopicInfo> {
        let (stream, topic) = (to_iggy_id(&at.stream)?, to_iggy_id(&at.topic)?);
        let context = Context::topic(at);
        let details = self
            .call(
                &context,
                |c| async move { c.get_topic(&stream, &topic).await },
            )
            .await?;
        match details {
            Some(details) => Ok(topic_details_info(&details)),
            None => {
                // Missing stream and missing topic both answer None; tell them apart.
                self.get_stream(at.stream.clone()).await?;
                Err(BrokerError::TopicNotFound {
                    stream: at.stream.clone(),
                    topic: at.topic.clone(),
                })
            }
        }
    }
}

#[async_trait]
impl Broker for IggyBroker {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn availability(&self) -> watch::Receiver<bool> {
        self.pool.available.subscribe()
    }

    fn gave_up(&self) -> watch::Receiver<bool> {
        self.pool.gave_up.subscribe()
    }

    fn reconnects(&self) -> u64 {
        self.pool.reconnects.load(Ordering::Relaxed)
    }

    fn durability(&self) -> Durability {
        self.pool
            .durability
            .lock()
            .map_or(Durability::Unknown, |known| known.clone())
    }

    fn send_counts(&self) -> SendCounts {
        self.sends.counts()
    }

    fn skipped_holes(&self) -> SkippedHoles {
        SkippedHoles {
            holes: self.holes.load(Ordering::Relaxed),
            offsets: self.skipped_offsets.load(Ordering::Relaxed),
        }
    }

    fn partition_appends(
        &self,
        topic: &TopicRef,
        partition_id: u32,
    ) -> Option<watch::Receiver<u64>> {
        self.appends.follow(topic, partition_id)
    }

    async fn close(&self) {
        self.cancel.cancel();
        let _ = tokio::time::timeout(self.pool.settings.operation_timeout, self.tasks.wait()).await;
    }

    async fn create_stream(&self, name: Name) -> BrokerResult<StreamInfo> {
        let context = Context {
            name: Some(name.to_string()),
            ..Context::default()
        };
        let created = self
            .call(
                &context,
                |c| async move { c.create_stream(name.as_str()).await },
            )
            .await?;
        let stream = iggy::prelude::Stream {
            id: created.id,
            created_at: created.created_at,
            name: created.name.clone(),
            size: created.size,
            messages_count: created.messages_count,
            topics_count: created.topics_count,
        };
        Ok(stream_info(&stream, Vec::new()))
    }

    async fn get_stream(&self, stream: Identifier) -> BrokerResult<StreamInfo> {
        let id = to_iggy_id(&stream)?;
        let details = self
            .call(&Context::stream(&stream), |c| async move {
                c.get_stream(&id).await
            })
            .await?
            .ok_or_else(|| BrokerError::StreamNotFound(stream.clone()))?;
        let summary = iggy::prelude::Stream {
            id: details.id,
            created_at: details.created_at,
            name: details.name.clone(),
            size: details.size,
            messages_count: details.messages_count,
            topics_count: details.topics_count,
        };
        let topics = details
            .topics
            .iter()
            .map(|topic| topic_info(topic, Vec::new()))
            .collect();
        Ok(stream_info(&summary, topics))
    }

    async fn list_streams(&self) -> BrokerResult<Vec<StreamInfo>> {
        let streams = self
            .call(
                &Context::default(),
                |c| async move { c.get_streams().await },
            )
            .await?;
        let mut streams: Vec<StreamInfo> = streams
            .iter()
            .map(|stream| stream_info(stream, Vec::new()))
            .collect();
        streams.sort_by_key(|s| s.id);
        Ok(streams)
    }

    async fn update_stream(&self, request: UpdateStream) -> BrokerResult<StreamInfo> {
        let UpdateStream {
            stream,
            name,
            expected,
        } = request;
        let target = self.checked_stream(&stream, expected.as_ref()).await?;
        let id = to_iggy_id(&target)?;
        let context = Context {
            name: Some(name.to_string()),
            ..Context::stream(&stream)
        };
        let new_name = name.clone();
        self.call(&context, |c| async move {
            c.update_stream(&id, new_name.as_str()).await
        })
        .await?;
        // A stream is found again by its new name (the old one may now be gone).
        match target {
            Identifier::Id(_) => self.get_stream(target).await,
            Identifier::Name(_) => self.get_stream(Identifier::Name(name.to_string())).await,
        }
    }

    async fn delete_stream(&self, stream: Identifier, expected: Option<ETag>) -> BrokerResult<()> {
        let id = to_iggy_id(&self.checked_stream(&stream, expected.as_ref()).await?)?;
        self.call(&Context::stream(&stream), |c| async move {
            c.delete_stream(&id).await
        })
        .await
    }

    async fn purge_stream(&self, stream: Identifier) -> BrokerResult<()> {
        let id = to_iggy_id(&stream)?;
        self.call(&Context::stream(&stream), |c| async move {
            c.purge_stream(&id).await
        })
        .await
    }

    async fn create_topic(&self, request: CreateTopic) -> BrokerResult<TopicInfo> {
        let stream = to_iggy_id(&request.stream)?;
        let context = Context {
            name: Some(request.name.to_string()),
            ..Context::stream(&request.stream)
        };
        let details = self
            .call(&context, |c| async move {
                c.create_topic(
                    &stream,
                    request.name.as_str(),
                    request.partitions_count,
                    compression_to_iggy(request.compression),
                    Some(request.replication_factor),
                    match request.message_expiry_micros {
                        Some(_) => expiry_to_iggy(request.message_expiry_micros),
                        None => IggyExpiry::ServerDefault,
                    },
                    match request.max_topic_size_bytes {
                        Some(_) => size_to_iggy(request.max_topic_size_bytes),
                        None => MaxTopicSize::ServerDefault,
                    },
                )
                .await
            })
            .await?;
        Ok(topic_details_info(&details))
    }

    async fn get_topic(&self, topic: TopicRef) -> BrokerResult<TopicInfo> {
        self.topic_details(&topic).await
    }

    async fn list_topics(&self, stream: Identifier) -> BrokerResult<Vec<TopicInfo>> {
        // A missing stream answers an empty list; ask for the stream to tell.
        let details = self.get_stream(stream).await?;
        Ok(details.topics)
    }

    async fn update_topic(&self, request: UpdateTopic) -> BrokerResult<TopicInfo> {
        // Iggy replaces every setting at once: start from the current ones. The etag is
        // checked on this read, not atomically with the change (Iggy has no conditional
        // update): a change by another client in between goes unseen.
        let current = self.topic_details(&request.topic).await?;
        current.etag().ensure(request.expected.as_ref(), || {
            format!(
                "topic '{}' in stream '{}'",
                request.topic.topic, request.topic.stream
            )
        })?;
        // The topic read is the one changed, by its id, even if its name changes meanwhile.
        let (stream, topic) = (
            to_iggy_id(&request.topic.stream)?,
            to_iggy_id(&Identifier::Id(current.id))?,
        );
        let name = request
            .name
            .as_ref()
            .map_or_else(|| current.name.clone(), Name::to_string);
        let context = Context {
            name: Some(name.clone()),
            ..Context::topic(&request.topic)
        };
        let expiry = request
            .message_expiry_micros
            .unwrap_or(current.message_expiry_micros);
        let size = request
            .max_topic_size_bytes
            .unwrap_or(current.max_topic_size_bytes);
        let compression = request.compression.unwrap_or(current.compression);
        let factor = request
            .replication_factor
            .unwrap_or(current.replication_factor);
        let new_name = name.clone();
        self.call(&context, |c| async move {
            c.update_topic(
                &stream,
                &topic,
                &new_name,
                compression_to_iggy(compression),
                Some(factor),
                expiry_to_iggy(expiry),
                size_to_iggy(size),
            )
            .await
        })
        .await?;
        let at = TopicRef {
            stream: request.topic.stream.clone(),
            topic: Identifier::Id(current.id),
        };
        self.topic_details(&at).await
    }

    async fn delete_topic(&self, topic: TopicRef, expected: Option<ETag>) -> BrokerResult<()> {
        let target = match &expected {
            // As `checked_stream`: read, compare, then delete the topic read, by its id.
            Some(_) => {
                let current = self.topic_details(&topic).await?;
                current.etag().ensure(expected.as_ref(), || {
                    format!("topic '{}' in stream '{}'", topic.topic, topic.stream)
                })?;
                Identifier::Id(current.id)
            }
            None => topic.topic.clone(),
        };
        let (stream, id) = (to_iggy_id(&topic.stream)?, to_iggy_id(&target)?);
        self.call(&Context::topic(&topic), |c| async move {
            c.delete_topic(&stream, &id).await
        })
        .await
    }

    async fn purge_topic(&self, topic: TopicRef) -> BrokerResult<()> {
        let (stream, id) = (to_iggy_id(&topic.stream)?, to_iggy_id(&topic.topic)?);
        self.call(&Context::topic(&topic), |c| async move {
            c.purge_topic(&stream, &id).await
        })
        .await
    }

    async fn create_partitions(&self, topic: TopicRef, count: u32) -> BrokerResult<TopicInfo> {
        let (stream, id) = (to_iggy_id(&topic.stream)?, to_iggy_id(&topic.topic)?);
        self.call(&Context::topic(&topic), |c| async move {
            c.create_partitions(&stream, &id, count).await
        })
        .await?;
        self.topic_details(&topic).await
    }

    async fn delete_partitions(&self, topic: TopicRef, count: u32) -> BrokerResult<TopicInfo> {
        let current = self.topic_details(&topic).await?;
        if count >= current.partitions_count {
            return Err(BrokerError::InvalidArgument {
                field: "partitions_count",
                reason: format!(
                    "must be between 1 and {} (the topic has {} and keeps at least one)",
                    current.partitions_count.saturating_sub(1),
                    current.partitions_count
                ),
            });
        }
        let (stream, id) = (to_iggy_id(&topic.stream)?, to_iggy_id(&topic.topic)?);
        self.call(&Context::topic(&topic), |c| async move {
            c.delete_partitions(&stream, &id, count).await
        })
        .await?;
        self.topic_details(&topic).await
    }

    /// Iggy keeps no idempotency record: a send under a key relies on the deterministic ids the
    /// gateway gave its messages and on the server's message deduplication
    /// (`IGGY_SYSTEM_MESSAGE_DEDUPLICATION_ENABLED`), which drops an id it has seen.
    async fn send_messages(&self, request: SendMessages) -> BrokerResult<Sent> {
        // Checked per call, before it can join others: a call Iggy's types refuse fails alone.
        partitioning_to_iggy(&request.partitioning)?;
        let bytes = request.messages.iter().map(NewMessage::size).sum();
        let origin = origin_now();
        let messages = request
            .messages
            .into_iter()
            .map(|message| message_to_iggy(message, origin))
            .collect::<BrokerResult<Vec<_>>>()?;
        let lane = Lane {
            topic: request.topic,
            partitioning: request.partitioning,
        };
        self.sends.send(lane, messages, bytes).await?;
        Ok(Sent::Stored)
    }

    async fn poll_messages(&self, request: PollMessages) -> BrokerResult<PolledMessages> {
        let (stream, topic) = (
            to_iggy_id(&request.topic.stream)?,
            to_iggy_id(&request.topic.topic)?,
        );
        let consumer = poll_consumer(request.consumer.as_ref())?;
        let context = Context {
            consumer: request.consumer.clone(),
            offset: match request.strategy {
                PollingStrategy::Offset(offset) => Some(offset),
                _ => None,
            },
            ..Context::partition(&request.topic, request.partition_id)
        };
        let partition = request.partition_id;
        // Iggy polls by count only: the gateway reads in chunks that fit the byte budget, and
        // Iggy must not commit what a chunk read past it; the gateway commits the last message
        // it returns. A chunk Iggy refuses as an invalid offset steps past the hole.
        let fetched = poll_in_chunks(
            request.strategy,
            request.count,
            request.max_bytes,
            |strategy, count| {
                let (stream, topic, consumer) = (stream.clone(), topic.clone(), consumer.clone());
                let (context, chunk) = (
                    &context,
                    PollMessages {
                        strategy,
                        count,
                        auto_commit: false,
                        ..request.clone()
                    },
                );
                async move {
                    let poll_consumer = consumer.clone();
                    let answer = self
                        .answer(|c| async move {
                            c.poll_messages(
                                &stream,
                                &topic,
                                Some(partition),
                                &poll_consumer,
                                &strategy_to_iggy(strategy),
                                count,
                                false,
                            )
                            .await
                        })
                        .await?;
                    let polled = match answer {
                        Ok(polled) => polled_from_iggy(partition, polled),
                        Err(refusal @ IggyError::InvalidOffset(_)) => {
                            self.poll_past_hole(&chunk, &consumer, refusal).await?
                        }
                        Err(err) => return Err(map_error(err, context)),
                    };
                    Ok(Fetched {
                        current_offset: polled.current_offset,
                        messages: polled.messages,
                    })
                }
            },
        )
        .await?;
        let polled = PolledMessages {
            partition_id: partition,
            current_offset: fetched.current_offset,
            messages: fetched.messages,
        };
        if request.auto_commit
            && let (Some(last), Some(at_consumer)) =
                (polled.messages.last(), request.consumer.clone())
        {
            self.store_consumer_offset(
                ConsumerOffsetRef {
                    topic: request.topic.clone(),
                    partition_id: request.partition_id,
                    consumer: at_consumer,
                },
                last.offset,
            )
            .await?;
        }
        Ok(polled)
    }

    async fn store_consumer_offset(&self, at: ConsumerOffsetRef, offset: u64) -> BrokerResult<()> {
        let (stream, topic) = (to_iggy_id(&at.topic.stream)?, to_iggy_id(&at.topic.topic)?);
        let consumer = Consumer::new(to_iggy_id(&at.consumer)?);
        let context = Context {
            consumer: Some(at.consumer.clone()),
            offset: Some(offset),
            ..Context::partition(&at.topic, at.partition_id)
        };
        let partition = at.partition_id;
        self.call(&context, |c| async move {
            c.store_consumer_offset(&consumer, &stream, &topic, Some(partition), offset)
                .await
        })
        .await
    }

    async fn get_consumer_offset(&self, at: ConsumerOffsetRef) -> BrokerResult<ConsumerOffsetInfo> {
        let topic_info = self.topic_details(&at.topic).await?;
        let partition = topic_info
            .partitions
            .iter()
            .find(|p| p.id == at.partition_id)
            .copied()
            .ok_or(BrokerError::PartitionNotFound {
                topic: at.topic.topic.clone(),
                partition_id: at.partition_id,
                partitions_count: topic_info.partitions_count,
            })?;
        let (stream, topic) = (to_iggy_id(&at.topic.stream)?, to_iggy_id(&at.topic.topic)?);
        let consumer = Consumer::new(to_iggy_id(&at.consumer)?);
        let context = Context {
            consumer: Some(at.consumer.clone()),
            ..Context::partition(&at.topic, at.partition_id)
        };
        let partition_id = at.partition_id;
        let stored = self
            .call(&context, |c| async move {
                c.get_consumer_offset(&consumer, &stream, &topic, Some(partition_id))
                    .await
            })
            .await?;
        Ok(ConsumerOffsetInfo {
            partition_id: at.partition_id,
            current_offset: partition.current_offset,
            stored_offset: stored.map(|info| info.stored_offset),
        })
    }

    async fn delete_consumer_offset(&self, at: ConsumerOffsetRef) -> BrokerResult<()> {
        let (stream, topic) = (to_iggy_id(&at.topic.stream)?, to_iggy_id(&at.topic.topic)?);
        let consumer = Consumer::new(to_iggy_id(&at.consumer)?);
        let context = Context {
            consumer: Some(at.consumer.clone()),
            ..Context::partition(&at.topic, at.partition_id)
        };
        let partition = at.partition_id;
        self.call(&context, |c| async move {
            c.delete_consumer_offset(&consumer, &stream, &topic, Some(partition))
                .await
        })
        .await
    }
}

/// The coalescer's way to Iggy: one SDK send of a lane's batch on a pooled client.
fn iggy_sender(pool: Arc<Pool>) -> Sender<IggyMessage> {
    Arc::new(
        move |lane: Lane, messages: Vec<IggyMessage>| -> SendFuture {
            let pool = Arc::clone(&pool);
            Box::pin(async move { send_batch(&pool, &lane, messages).await })
        },
    )
}

async fn send_batch(pool: &Pool, lane: &Lane, mut messages: Vec<IggyMessage>) -> BrokerResult<()> {
    let (stream, topic) = (
        to_iggy_id(&lane.topic.stream)?,
        to_iggy_id(&lane.topic.topic)?,
    );
    let partitioning = partitioning_to_iggy(&lane.partitioning)?;
    let context = match lane.partitioning {
        Partitioning::PartitionId(id) => Context::partition(&lane.topic, id),
        Partitioning::Balanced | Partitioning::Key(_) => Context::topic(&lane.topic),
    };
    pool.answer(|c| async move {
        c.send_messages(&stream, &topic, &partitioning, &mut messages)
            .await
    })
    .await?
    .map_err(|err| map_error(err, &context))
}

#[cfg(test)]
mod tests;
