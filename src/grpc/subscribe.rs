//! Live subscriptions (`MessageService.Subscribe`): a poll loop per subscriber that pushes
//! messages into a bounded channel as they arrive, with one resumable cursor for every
//! transport, heartbeats carrying the consumer lag, and optional commits as it goes.
//!
//! The loop waits when the client reads slowly (the channel is bounded), backs off to
//! `SUBSCRIBE_IDLE_POLL_MS` while nothing arrives, and ends a stream whose client stopped
//! reading for `SUBSCRIBE_SLOW_CLIENT_MS`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{convert::identifier, message::polled_to_proto};
use crate::{
    broker::{
        Broker, BrokerError, ConsumerOffsetRef, Identifier, PartitionInfo, PollMessages,
        PollingStrategy, TopicInfo, TopicRef,
    },
    error::{broker_status, invalid_field},
    proto,
};

/// 2: cursors carry their subscription's scope and the topic's incarnation.
const CURSOR_VERSION: u8 = 2;
/// Messages read from one partition per poll.
const POLL_BATCH: u32 = 100;
/// The first idle wait; it doubles up to `SUBSCRIBE_IDLE_POLL_MS`.
const MIN_IDLE_WAIT: Duration = Duration::from_millis(5);
/// Answers buffered per subscriber before the poll loop waits for the client.
const CHANNEL_CAPACITY: usize = 32;

#[derive(Debug, Clone)]
pub struct SubscribeSettings {
    /// Signs cursors; replicas that share it resume each other's cursors.
    pub cursor_secret: Vec<u8>,
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
    permits: Arc<Semaphore>,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
    shutdown: CancellationToken,
}

impl Subscriptions {
    pub fn new(settings: SubscribeSettings, shutdown: CancellationToken) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(settings.max_subscribers)),
            settings: Arc::new(settings),
            per_client: Arc::new(Mutex::new(HashMap::new())),
            shutdown,
        }
    }
}

/// One subscription counted against its client IP, released when dropped.
struct ClientSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: Option<IpAddr>,
}

impl ClientSlot {
    fn take(counts: Arc<Mutex<HashMap<IpAddr, usize>>>, client: Option<IpAddr>) -> Self {
        Self { counts, client }
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let (Some(client), Ok(mut counts)) = (self.client, self.counts.lock())
            && let Some(count) = counts.get_mut(&client)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&client);
            }
        }
    }
}

/// What a cursor resumes: the subscription it came from, bound to the topic's incarnation, and
/// where each of its partitions is read next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Cursor {
    stream: String,
    topic: String,
    consumer: String,
    /// The topic's id and creation time when the cursor was issued: a topic deleted and created
    /// again under the same name is another log, and the cursor is refused there.
    topic_id: u32,
    topic_created_at: u64,
    scope: Scope,
    /// Where partitions without a position yet start (the subscription's strategy).
    start: Start,
    /// The next offset of each partition that has one, written compactly (see `positions`).
    #[serde(with = "positions")]
    next: BTreeMap<u32, u64>,
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
enum Scope {
    One(u32),
    /// Every partition; this many existed when the subscription started. Partitions added
    /// since are read from their first message.
    All(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Start {
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

fn encode_cursor(cursor: &Cursor, secret: &[u8]) -> String {
    let mut bytes = vec![CURSOR_VERSION];
    // Serializing plain structs into a Vec cannot fail; an empty body would not decode, so
    // the cursor would be refused rather than misread.
    bytes.extend(postcard::to_stdvec(cursor).unwrap_or_default());
    let mut signer = mac(secret);
    signer.update(&bytes);
    bytes.extend(signer.finalize().into_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_cursor(text: &str, secret: &[u8]) -> Result<Cursor, Status> {
    let refuse = |why: &str| invalid_field("cursor", why.to_owned());
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| refuse("is not a cursor this gateway issued"))?;
    if bytes.len() < 1 + 32 {
        return Err(refuse("is not a cursor this gateway issued"));
    }
    let (body, tag) = bytes.split_at(bytes.len() - 32);
    let mut verifier = mac(secret);
    verifier.update(body);
    verifier
        .verify_slice(tag)
        .map_err(|_| refuse("was altered or signed with another key (CURSOR_SECRET)"))?;
    if body[0] != CURSOR_VERSION {
        return Err(refuse(
            "comes from another version of the gateway; subscribe again without it",
        ));
    }
    postcard::from_bytes(&body[1..]).map_err(|_| refuse("does not decode"))
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
}

type Item = Result<proto::SubscribeResponse, Status>;

impl Subscriptions {
    /// Starts a subscription's poll loop and returns the receiving end of its stream.
    pub async fn start(
        &self,
        broker: Arc<dyn Broker>,
        request: Subscription,
    ) -> Result<mpsc::Receiver<Item>, Status> {
        if let Some(client) = request.client
            && let Ok(mut counts) = self.per_client.lock()
        {
            let count = counts.entry(client).or_insert(0);
            if *count >= self.settings.max_subscribers_per_client {
                return Err(Status::resource_exhausted(format!(
                    "{client} already has {count} subscriptions (MAX_SUBSCRIBERS_PER_CLIENT)"
                )));
            }
            *count += 1;
        }
        // From here on the slot is released on every path, early errors included.
        let client_slot = ClientSlot::take(Arc::clone(&self.per_client), request.client);
        let permit = Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the gateway already serves {} subscribers (MAX_SUBSCRIBERS)",
                self.settings.max_subscribers
            ))
        })?;
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
            .map(|text| decode_cursor(text, &self.settings.cursor_secret))
            .transpose()?;
        if let Some(cursor) = &cursor {
            conflicts(cursor, &request, &consumer_text)?;
        }
        let topic_info = broker
            .get_topic(request.topic.clone())
            .await
            .map_err(broker_status)?;
        let mut request = request;
        let scope = match &cursor {
            Some(cursor) => {
                same_log(cursor, &topic_info)?;
                cursor.scope
            }
            None => match request.partition_id {
                Some(id) => Scope::One(id),
                None => Scope::All(topic_info.partitions_count),
            },
        };
        if let Some(cursor) = &cursor {
            if request.consumer.is_none() && !cursor.consumer.is_empty() {
                request.consumer = Some(identifier("consumer", &cursor.consumer)?);
            }
            request.strategy = cursor.start.into();
        }
        let consumer_text = request
            .consumer
            .as_ref()
            .map(Identifier::to_string)
            .unwrap_or_default();
        let commits = request.commit_every > 0 || !request.commit_interval.is_zero();
        if request.consumer.is_none() && (request.strategy == PollingStrategy::Next || commits) {
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
                    *slot = Some(head_of(partition));
                }
            }
        }

        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
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
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _client_slot = client_slot;
            let commit_every = request.commit_every;
            let (request, next) = run(
                broker.clone(),
                request,
                next,
                cursor,
                settings,
                shutdown,
                tx,
            )
            .await;
            // What was delivered is committed when the subscription ends, however it ends.
            if commit_every > 0 {
                commit(&broker, &request, &next).await;
            }
        });
        Ok(rx)
    }
}

/// The offset a partition's next message will get.
fn head_of(partition: &PartitionInfo) -> u64 {
    if partition.messages_count == 0 {
        0
    } else {
        partition.current_offset + 1
    }
}

/// Refuses a cursor whose subscription differs from what `request` names.
fn conflicts(cursor: &Cursor, request: &Subscription, consumer: &str) -> Result<(), Status> {
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
fn same_log(cursor: &Cursor, topic: &TopicInfo) -> Result<(), Status> {
    let conflict = |what: String| invalid_field("cursor", what);
    if cursor.topic_id != topic.id || cursor.topic_created_at != topic.created_at_micros {
        return Err(conflict(
            "belongs to a topic that was deleted since (this one was created again under its \
             name); subscribe again without it"
                .into(),
        ));
    }
    for partition in &topic.partitions {
        if let Some(next) = cursor.next.get(&partition.id)
            && *next > head_of(partition)
        {
            return Err(conflict(format!(
                "is past the end of partition {} ({} < {next}): it was purged since; subscribe \
                 again without it",
                partition.id,
                head_of(partition)
            )));
        }
    }
    Ok(())
}

async fn run(
    broker: Arc<dyn Broker>,
    request: Subscription,
    mut next: BTreeMap<u32, Option<u64>>,
    mut cursor: Cursor,
    settings: Arc<SubscribeSettings>,
    shutdown: CancellationToken,
    tx: mpsc::Sender<Item>,
) -> (Subscription, BTreeMap<u32, Option<u64>>) {
    let mut idle_wait = MIN_IDLE_WAIT;
    // One append signal per followed partition, taken before the first poll so no append
    // falls between the two. With every partition signalled, a subscriber polls only the
    // partitions that moved (or still had more to read); otherwise it polls on a timer.
    let mut appends: BTreeMap<u32, watch::Receiver<u64>> = next
        .keys()
        .filter_map(|p| {
            broker
                .partition_appends(&request.topic, *p)
                .map(|rx| (*p, rx))
        })
        .collect();
    let mut signalled = appends.len() == next.len();
    // The signal's value at each partition's last poll (waiting marks values seen, so the
    // values themselves are compared).
    let mut polled_at: BTreeMap<u32, u64> = BTreeMap::new();
    let mut first_round = true;
    let mut draining: BTreeSet<u32> = BTreeSet::new();
    let mut last_sent = tokio::time::Instant::now();
    let mut since_commit = 0u32;
    let mut last_commit = tokio::time::Instant::now();
    loop {
        let mut delivered = 0usize;
        for (partition, position) in next.clone() {
            let signal = appends.get(&partition).map(|rx| *rx.borrow());
            let moved = signal != polled_at.get(&partition).copied();
            if signalled && !first_round && !moved && !draining.contains(&partition) {
                continue;
            }
            // Read before the poll: an append during it moves the signal again.
            if let Some(signal) = signal {
                polled_at.insert(partition, signal);
            }
            let strategy = match position {
                Some(offset) => PollingStrategy::Offset(offset),
                None => request.strategy,
            };
            let polled = broker
                .poll_messages(PollMessages {
                    topic: request.topic.clone(),
                    partition_id: partition,
                    consumer: request.consumer.clone(),
                    strategy,
                    count: POLL_BATCH,
                    max_bytes: settings.batch_max_bytes,
                    auto_commit: false,
                })
                .await;
            let polled = match polled {
                Ok(polled) => polled,
                Err(err) if err.is_retryable() => {
                    // Not read: poll it again next round, signal or not.
                    polled_at.remove(&partition);
                    draining.insert(partition);
                    continue;
                }
                Err(err) => {
                    let _ = tx.send(Err(broker_status(err))).await;
                    return (request, next);
                }
            };
            if polled.messages.is_empty() {
                draining.remove(&partition);
                // Nothing yet for a first poll by strategy: keep asking the same way.
                continue;
            }
            // It may hold more than one poll returns: read it again before sleeping.
            draining.insert(partition);
            for message in polled.messages {
                let offset = message.offset;
                next.insert(partition, Some(offset + 1));
                cursor.next.insert(partition, offset + 1);
                let item = proto::SubscribeResponse {
                    cursor: encode_cursor(&cursor, &settings.cursor_secret),
                    event: Some(proto::subscribe_response::Event::Message(polled_to_proto(
                        partition, message,
                    ))),
                };
                if !deliver(&tx, item, &settings, &shutdown).await {
                    return (request, next);
                }
                delivered += 1;
                last_sent = tokio::time::Instant::now();
                since_commit += 1;
                let by_count = request.commit_every > 0 && since_commit >= request.commit_every;
                let by_time = !request.commit_interval.is_zero()
                    && last_commit.elapsed() >= request.commit_interval;
                if by_count || by_time {
                    since_commit = 0;
                    last_commit = tokio::time::Instant::now();
                    commit(&broker, &request, &next).await;
                }
            }
        }
        first_round = false;
        if delivered > 0 {
            idle_wait = MIN_IDLE_WAIT;
            continue;
        }
        if last_sent.elapsed() >= settings.heartbeat {
            let item = heartbeat(&broker, &request, &next, &cursor, &settings).await;
            if !deliver(&tx, item, &settings, &shutdown).await {
                return (request, next);
            }
            last_sent = tokio::time::Instant::now();
        }
        // A backend that announces appends lets an idle subscriber sleep until one happens
        // (or its next heartbeat is due); otherwise it polls, backing off to the idle interval.
        let until_heartbeat = settings.heartbeat.saturating_sub(last_sent.elapsed());
        let wait = if signalled {
            until_heartbeat
        } else {
            idle_wait
        };
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable(
                    "the gateway is shutting down; resume with the last cursor",
                ))).await;
                return (request, next);
            }
            () = tx.closed() => return (request, next),
            () = tokio::time::sleep(wait) => {}
            changed = async {
                if signalled && !appends.is_empty() {
                    let waits = appends.values_mut().map(|rx| Box::pin(rx.changed()));
                    futures_util::future::select_all(waits).await.0
                } else {
                    std::future::pending().await
                }
            } => {
                // The backend went away: fall back to polling on a timer.
                if changed.is_err() {
                    signalled = false;
                }
            }
        }
        idle_wait = (idle_wait * 2).min(settings.idle_poll);
    }
}

/// Sends one answer, waiting while the client reads slowly; `false` ends the subscription.
async fn deliver(
    tx: &mpsc::Sender<Item>,
    item: proto::SubscribeResponse,
    settings: &SubscribeSettings,
    shutdown: &CancellationToken,
) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => {
            let _ = tx.try_send(Err(Status::unavailable(
                "the gateway is shutting down; resume with the last cursor",
            )));
            false
        }
        sent = tx.send_timeout(Ok(item), settings.slow_client) => match sent {
            Ok(()) => true,
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                tracing::warn!(timeout = ?settings.slow_client, "subscriber stopped reading; closing its stream");
                false
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
        },
    }
}

async fn commit(
    broker: &Arc<dyn Broker>,
    request: &Subscription,
    next: &BTreeMap<u32, Option<u64>>,
) {
    let Some(consumer) = &request.consumer else {
        return;
    };
    for (partition, position) in next {
        if let Some(offset) = position.and_then(|n| n.checked_sub(1)) {
            let at = ConsumerOffsetRef {
                topic: request.topic.clone(),
                consumer: consumer.clone(),
                partition_id: *partition,
            };
            if let Err(err) = broker.store_consumer_offset(at, offset).await {
                tracing::warn!(error = %err, partition, "cannot commit a subscriber's offset");
            }
        }
    }
}

async fn heartbeat(
    broker: &Arc<dyn Broker>,
    request: &Subscription,
    next: &BTreeMap<u32, Option<u64>>,
    cursor: &Cursor,
    settings: &SubscribeSettings,
) -> proto::SubscribeResponse {
    let heads: BTreeMap<u32, u64> = match broker.get_topic(request.topic.clone()).await {
        Ok(topic) => topic
            .partitions
            .iter()
            .map(|p| (p.id, head_of(p)))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    let partitions = next
        .iter()
        .map(|(partition, position)| {
            let head = heads.get(partition).copied().unwrap_or(0);
            let next_offset = position.unwrap_or(head);
            proto::PartitionLag {
                partition_id: *partition,
                next_offset,
                lag: head.saturating_sub(next_offset),
            }
        })
        .collect();
    proto::SubscribeResponse {
        cursor: encode_cursor(cursor, &settings.cursor_secret),
        event: Some(proto::subscribe_response::Event::Heartbeat(
            proto::Heartbeat { partitions },
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let text = encode_cursor(&wide, b"secret-a");
        assert!(text.len() < 4096, "{} bytes", text.len());
        assert_eq!(decode_cursor(&text, b"secret-a").expect("valid"), wide);
        let sparse = Cursor {
            next: [(3, u64::MAX), (900, 0), (901, 5)].into_iter().collect(),
            ..cursor()
        };
        let text = encode_cursor(&sparse, b"secret-a");
        assert_eq!(decode_cursor(&text, b"secret-a").expect("valid"), sparse);
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
            let text = encode_cursor(&original, b"secret-a");
            proptest::prop_assert_eq!(decode_cursor(&text, b"secret-a").ok(), Some(original));
        }

        #[test]
        fn any_text_is_refused_or_decoded_without_panicking(text in "\\PC{0,300}") {
            let _ = decode_cursor(&text, b"secret-a");
        }
    }

    #[test]
    fn cursors_round_trip_under_the_same_secret_only() {
        let text = encode_cursor(&cursor(), b"secret-a");
        assert_eq!(decode_cursor(&text, b"secret-a").expect("valid"), cursor());
        assert!(decode_cursor(&text, b"secret-b").is_err(), "foreign key");
        let mut tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&text)
            .expect("base64");
        tampered[3] ^= 1;
        let tampered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tampered);
        assert_eq!(
            decode_cursor(&tampered, b"secret-a")
                .expect_err("tampered")
                .code(),
            tonic::Code::InvalidArgument
        );
        assert!(decode_cursor("not a cursor", b"secret-a").is_err());
    }
}
