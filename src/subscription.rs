//! Live subscriptions, the engine behind `MessageService.Subscribe` (and so REST's SSE and
//! NDJSON streams): admission against the subscriber caps ([`admission`]), resumable signed
//! cursors ([`cursor`]), and one poll task per subscriber ([`pump`]). It emits domain items
//! ([`Delivery`]); the gRPC service maps them to protobuf, so this module knows no wire format.
//!
//! The pump waits when the client reads slowly (what it buffers is bounded in items and in
//! bytes, [`BUFFER_BYTES`]), backs off to `SUBSCRIBE_IDLE_POLL_MS` while nothing arrives, and
//! ends a stream whose client stopped reading for `SUBSCRIBE_SLOW_CLIENT_MS`. Commits store
//! what the stream has handed on to the connection ([`Deliveries`]), never what is still
//! buffered for it.

mod admission;
mod cursor;
mod keys;
mod pump;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use crate::{
    answer::{Rejection, broker_status, invalid_field},
    broker::{
        Broker, BrokerError, CatalogChange, Identifier, PollingStrategy, StoredMessage, TopicRef,
    },
    budget::AnswerWatch,
};
pub use keys::{CursorKeys, MIN_CURSOR_SECRET_BYTES, SECRET_FILE, SecretFileError, kept_secret};

use admission::Admission;
use cursor::{Cursor, Scope};

/// Answers buffered per subscriber before the pump waits for the client.
const CHANNEL_CAPACITY: usize = 32;
/// Payload and header bytes one subscription reads ahead of its client at most, in its poll
/// and in its buffer each (a larger message goes alone): what a client that stops reading
/// holds of the gateway's memory, whatever the topic's message sizes.
pub const BUFFER_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct SubscribeSettings {
    /// Sign and verify cursors; replicas that share them resume each other's cursors.
    pub cursor_keys: CursorKeys,
    pub max_subscribers: usize,
    pub max_subscribers_per_client: usize,
    pub idle_poll: Duration,
    pub heartbeat: Duration,
    pub slow_client: Duration,
    /// Most payload and header bytes one poll of a subscription reads (POLL_MAX_BYTES).
    pub batch_max_bytes: usize,
}

/// What a subscription shares with the gateway: the subscriber caps and the shutdown signal.
#[derive(Clone)]
pub struct Subscriptions {
    settings: Arc<SubscribeSettings>,
    admission: Arc<Admission>,
    shutdown: CancellationToken,
}

impl Subscriptions {
    pub fn new(settings: SubscribeSettings, shutdown: CancellationToken) -> Self {
        Self {
            admission: Arc::new(Admission::new(
                settings.max_subscribers,
                settings.max_subscribers_per_client,
            )),
            settings: Arc::new(settings),
            shutdown,
        }
    }
}

/// Validated subscription parameters.
pub struct Subscription {
    pub topic: TopicRef,
    pub stream_text: String,
    pub topic_text: String,
    pub partition_id: Option<u32>,
    pub consumer: Option<Identifier>,
    pub strategy: PollingStrategy,
    pub cursor: Option<String>,
    pub commit_every: u32,
    /// Commit at most this often while messages flow; zero: no timed commits.
    pub commit_interval: Duration,
    /// Counted against `MAX_SUBSCRIBERS_PER_CLIENT`.
    pub client: Option<IpAddr>,
    /// Counted against its identity's quota, when that says `subscriptions`.
    pub holder: Option<Holder>,
    /// For a key limited by scopes: the stream and topic names its scope was checked on. The
    /// subscription opens only while they still stand (a rename in between is refused).
    pub scoped_names: Option<(String, String)>,
    /// Renames, deletions and purges announced since before the scope check, so none made
    /// between the check and the pump's start goes unseen; the pump listens on it, and hands
    /// it back so the subscription's end hears of a purge before it commits.
    pub catalog: Option<broadcast::Receiver<CatalogChange>>,
    /// The connection it is answered on: closed when the subscriber takes nothing for
    /// `SUBSCRIBE_SLOW_CLIENT_MS`, which over HTTP/2 is the only way to end its stream.
    pub connection: Option<Arc<AnswerWatch>>,
}

impl Subscription {
    /// Whether it commits as it goes, by count or by interval; if so its end commits too.
    pub(crate) fn commits(&self) -> bool {
        self.commit_every > 0 || !self.commit_interval.is_zero()
    }

    /// No more commits, by count, by interval or at the end: what it read is no longer the
    /// log's (a purge).
    pub(crate) fn stop_commits(&mut self) {
        self.commit_every = 0;
        self.commit_interval = Duration::ZERO;
    }
}

/// The identity a subscription is counted against, and the most it may hold at once (no
/// most: counted, never refused).
#[derive(Debug, Clone)]
pub struct Holder {
    pub name: Arc<str>,
    pub most: Option<usize>,
}

/// What the pump and the stream's reader tell each other of the reader's pace.
#[derive(Debug, Default)]
pub struct Flow {
    /// The reader waits on purpose (its identity's consume quota): not a slow client.
    paused: AtomicBool,
    /// The pump gave up on a reader that took nothing: the stream ends with an error.
    slow: AtomicBool,
}

impl Flow {
    /// Marks the reader as waiting on purpose while `wait` runs (also if it is dropped midway).
    pub async fn paused<F: std::future::Future>(&self, wait: F) -> F::Output {
        struct Pausing<'a>(&'a AtomicBool);
        impl Drop for Pausing<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        self.paused.store(true, Ordering::Release);
        let _pausing = Pausing(&self.paused);
        wait.await
    }

    fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }
}

/// One item of a subscription's stream, with the cursor that resumes right after it.
#[derive(Debug)]
pub struct Delivery {
    pub cursor: String,
    pub event: Event,
}

#[derive(Debug)]
pub enum Event {
    Message {
        partition_id: u32,
        message: StoredMessage,
    },
    /// Sent while idle: where each followed partition stands.
    Heartbeat(Vec<PartitionLag>),
}

/// How far a subscriber is behind one partition's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition_id: u32,
    pub next_offset: u64,
    pub lag: u64,
}

/// The stream ends after its first error.
pub type Item = Result<Delivery, Status>;

/// An item on its way to the client, holding its bytes' room in the subscription's buffer.
type Buffered = (Item, Option<OwnedSemaphorePermit>);

/// Where each partition's messages have been handed on to the connection: the next offset.
type Handed = Arc<Mutex<BTreeMap<u32, u64>>>;

/// The receiving end of a subscription. An item it yields has left the subscription's
/// buffer: its bytes' room is given back and, for a message, its offset counts as delivered
/// for commits.
pub struct Deliveries {
    receiver: mpsc::Receiver<Buffered>,
    handed: Handed,
    flow: Arc<Flow>,
    /// Dropped with the stream: the pump's task then commits what was handed on.
    _gone: oneshot::Sender<()>,
}

impl Deliveries {
    /// The pace the pump and this stream's reader share (see [`Flow`]).
    pub fn flow(&self) -> Arc<Flow> {
        Arc::clone(&self.flow)
    }
}

impl Stream for Deliveries {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let Some((item, room)) = std::task::ready!(self.receiver.poll_recv(cx)) else {
            // Ended by the pump: a reader given up on hears why (once), not a clean end.
            if self.flow.slow.swap(false, Ordering::AcqRel) {
                return Poll::Ready(Some(Err(Rejection::new(
                    Code::ResourceExhausted,
                    "SUBSCRIBER_TOO_SLOW",
                    "the subscriber took nothing for SUBSCRIBE_SLOW_CLIENT_MS; resume with the \
                     last cursor",
                )
                .status())));
            }
            return Poll::Ready(None);
        };
        if let Ok(Delivery {
            event:
                Event::Message {
                    partition_id,
                    message,
                },
            ..
        }) = &item
        {
            self.handed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(*partition_id, message.offset + 1);
        }
        drop(room);
        Poll::Ready(Some(item))
    }
}

impl Subscriptions {
    /// The consumer a cursor carries (empty: none), so the caller can check it may subscribe
    /// as it; a cursor that does not verify is refused here as `start` would refuse it.
    pub fn cursor_consumer(&self, cursor: &str) -> Result<String, Status> {
        cursor::decode(cursor, &self.settings.cursor_keys).map(|cursor| cursor.consumer)
    }

    /// Starts a subscription's poll loop and returns the receiving end of its stream.
    pub async fn start(
        &self,
        broker: Arc<dyn Broker>,
        request: Subscription,
    ) -> Result<Deliveries, Status> {
        let admitted = self
            .admission
            .admit(request.client, request.holder.as_ref())?;
        let consumer_text = request
            .consumer
            .as_ref()
            .map(Identifier::to_string)
            .unwrap_or_default();
        // A cursor resumes exactly its subscription: its scope, consumer and strategy, unless the
        // request names something else, which is refused rather than silently widened.
        let cursor = request
            .cursor
            .as_deref()
            .map(|text| cursor::decode(text, &self.settings.cursor_keys))
            .transpose()?;
        if let Some(cursor) = &cursor {
            cursor::conflicts(cursor, &request, &consumer_text)?;
        }
        let topic_info = broker
            .get_topic(request.topic.clone())
            .await
            .map_err(broker_status)?;
        let mut request = request;
        let scope = match &cursor {
            Some(cursor) => {
                cursor::same_log(cursor, &topic_info)?;
                cursor.scope
            }
            None => match request.partition_id {
                Some(id) => Scope::One(id),
                None => Scope::All(topic_info.partitions_count),
            },
        };
        if let Some(cursor) = &cursor {
            if request.consumer.is_none() && !cursor.consumer.is_empty() {
                request.consumer = Some(
                    Identifier::parse(&cursor.consumer)
                        .map_err(|reason| invalid_field("consumer", reason))?,
                );
            }
            request.strategy = cursor.start.into();
        }
        let consumer_text = request
            .consumer
            .as_ref()
            .map(Identifier::to_string)
            .unwrap_or_default();
        if request.consumer.is_none()
            && (request.strategy == PollingStrategy::Next || request.commits())
        {
            return Err(invalid_field(
                "consumer",
                "is required with strategy NEXT and with commits",
            ));
        }
        let partitions: Vec<u32> = match scope {
            Scope::One(id) if id < topic_info.partitions_count => vec![id],
            Scope::One(id) => {
                return Err(broker_status(BrokerError::PartitionNotFound {
                    topic: request.topic.topic.clone(),
                    partition_id: id,
                    partitions_count: topic_info.partitions_count,
                }));
            }
            Scope::All(_) => (0..topic_info.partitions_count).collect(),
        };

        // Where each partition starts: the cursor's positions (partitions added since it was
        // issued from their first message), or the strategy's first poll.
        let mut next: BTreeMap<u32, Option<u64>> = partitions.iter().map(|p| (*p, None)).collect();
        if let Some(cursor) = &cursor {
            for (partition, slot) in &mut next {
                if let Some(offset) = cursor.next.get(partition) {
                    *slot = Some(*offset);
                } else if matches!(cursor.scope, Scope::All(count) if *partition >= count) {
                    *slot = Some(0);
                }
            }
        } else if request.strategy == PollingStrategy::Last {
            // "Last" for a subscription means only what arrives from now on.
            for partition in &topic_info.partitions {
                if let Some(slot) = next.get_mut(&partition.id) {
                    *slot = Some(partition.next_offset());
                }
            }
        }

        let (tx, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        let handed = Handed::default();
        let (_gone, gone) = oneshot::channel::<()>();
        let flow = Arc::new(Flow::default());
        let buffer = pump::Buffer {
            flow: Arc::clone(&flow),
            connection: request.connection.clone(),
            tx,
            room: Arc::new(Semaphore::new(BUFFER_BYTES)),
            handed: Arc::clone(&handed),
        };
        let settings = Arc::clone(&self.settings);
        let shutdown = self.shutdown.clone();
        let cursor = Cursor {
            stream: request.stream_text.clone(),
            topic: request.topic_text.clone(),
            consumer: consumer_text,
            topic_id: topic_info.id,
            topic_created_at: topic_info.created_at_micros,
            scope,
            start: request.strategy.into(),
            next: next
                .iter()
                .filter_map(|(partition, offset)| offset.map(|offset| (*partition, offset)))
                .collect(),
            partitions_created_at: topic_info
                .partitions
                .iter()
                .filter(|p| partitions.contains(&p.id))
                .map(|p| p.created_at_micros)
                .max()
                .unwrap_or(0),
        };
        // The stream's id and name, so the pump follows this stream and topic by id, and sees
        // a rename by name.
        let stream_info = broker
            .get_stream(request.topic.stream.clone())
            .await
            .map_err(broker_status)?;
        let followed = pump::Followed {
            stream_id: stream_info.id,
            stream_name: stream_info.name,
            topic_id: topic_info.id,
            topic_created_at: topic_info.created_at_micros,
            topic_name: topic_info.name.clone(),
            partitions: topic_info
                .partitions
                .iter()
                .filter(|p| partitions.contains(&p.id))
                .map(|p| (p.id, p.created_at_micros))
                .collect(),
        };
        // Scopes match names: one renamed since the check is not the one the key may read.
        if let Some((stream, topic)) = &request.scoped_names
            && (*stream != followed.stream_name || *topic != followed.topic_name)
        {
            return Err(followed.gone(&request, "was renamed while it opened"));
        }
        tokio::spawn(async move {
            let handed = Arc::clone(&buffer.handed);
            let slow_client = settings.slow_client;
            let mut request = pump::run(
                broker.clone(),
                request,
                followed.clone(),
                pump::Position { next, cursor },
                settings,
                shutdown,
                buffer,
            )
            .await;
            // The slot caps polling pumps: it is free once this one has stopped, whatever its
            // stream still hands on.
            drop(admitted);
            // What was handed on is committed when the subscription ends, however it ends: at
            // once (a shutdown may not wait), and again if its stream then hands on what its
            // buffer still held (an error, shutdown) before it ends or its client stops.
            // (`commit` stores by the ids followed, and where a backend gives ids again, first
            // makes sure they still name the log followed.)
            // A purge ends it without committing: what it read is the old log's. (One the
            // pump heard of comes back committing nothing; one announced since is heard
            // here, before each commit.)
            if request.commits() && !pump::purged_since(&mut request, &followed) {
                let snapshot = || {
                    handed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone()
                };
                let first = snapshot();
                let mut committed = std::collections::BTreeMap::new();
                pump::commit(&broker, &request, &followed, &handed, &mut committed).await;
                let _ = tokio::time::timeout(slow_client, gone).await;
                if snapshot() != first && !pump::purged_since(&mut request, &followed) {
                    pump::commit(&broker, &request, &followed, &handed, &mut committed).await;
                }
            }
        });
        Ok(Deliveries {
            receiver,
            handed,
            flow,
            _gone,
        })
    }
}
