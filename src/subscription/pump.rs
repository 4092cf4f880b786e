//! The pump: one task per subscription polls its partitions, pushes what it reads into the
//! subscriber's buffer (bounded in items and bytes), commits what the stream has handed on as
//! asked, and sends heartbeats while idle. It waits when the client reads slowly and sleeps
//! until an append when the backend announces them.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use tokio::sync::{
    Semaphore,
    broadcast::{self, error::TryRecvError},
    mpsc, watch,
};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{
    BUFFER_BYTES, Buffered, Delivery, Event, Handed, Item, PartitionLag, SubscribeSettings,
    Subscription,
    cursor::{self, Cursor},
};
use crate::{
    answer::{Problem, broker_status, shutting_down},
    broker::{
        Broker, BrokerError, CatalogChange, ConsumerOffsetRef, Identifier, PollMessages,
        PollingStrategy, Reset, TopicInfo, TopicRef, same_creation,
    },
    budget::AnswerWatch,
};

/// Messages read from one partition per poll.
const POLL_BATCH: u32 = 100;
/// The first idle wait; it doubles up to `SUBSCRIBE_IDLE_POLL_MS`.
const MIN_IDLE_WAIT: Duration = Duration::from_millis(5);

/// The pump's end of a subscription's buffer.
pub(super) struct Buffer {
    /// The reader's pace, shared with the stream ([`super::Flow`]).
    pub(super) flow: Arc<super::Flow>,
    /// The connection, closed when the reader is given up on.
    pub(super) connection: Option<Arc<AnswerWatch>>,
    pub(super) tx: mpsc::Sender<Buffered>,
    /// [`BUFFER_BYTES`] of room; an item holds its bytes' worth until the stream yields it.
    pub(super) room: Arc<Semaphore>,
    /// What the stream has yielded, which commits store.
    pub(super) handed: Handed,
}

/// What a subscription follows, as it was when it opened; the pump polls and commits by its
/// ids, so a topic deleted and created again under its name (another log) is never read nor
/// committed to. Scopes match names, so a rename of its stream or topic ends it too, as a
/// deletion and a purge do: one made through this gateway is seen before anything more is delivered
/// (`Broker::catalog_changes`), one made elsewhere (another replica, Iggy's own tools) at the
/// next check, every heartbeat interval.
#[derive(Debug, Clone)]
pub(super) struct Followed {
    pub(super) stream_id: u32,
    pub(super) stream_name: String,
    pub(super) topic_id: u32,
    pub(super) topic_created_at: u64,
    pub(super) topic_name: String,
    /// Each partition followed, by id, with when it was created: one deleted and created
    /// again under its id is another log.
    pub(super) partitions: BTreeMap<u32, u64>,
}

impl Followed {
    /// The topic by the ids it opened on.
    pub(super) fn topic(&self) -> TopicRef {
        TopicRef {
            stream: Identifier::Id(self.stream_id),
            topic: Identifier::Id(self.topic_id),
        }
    }

    /// Whether a rename or deletion names this subscription's stream (so, maybe, its topic)
    /// or its topic, by id or by the name it opened with: only those need a check.
    pub(super) fn concerned_by(&self, change: &CatalogChange) -> bool {
        fn names(id: u32, name: &str, by: &Identifier) -> bool {
            match by {
                Identifier::Id(by) => *by == id,
                Identifier::Name(by) => by == name,
            }
        }
        names(self.stream_id, &self.stream_name, &change.stream)
            && change
                .topic
                .as_ref()
                .is_none_or(|topic| names(self.topic_id, &self.topic_name, topic))
    }

    /// The topic as it stands, while it is still the one followed; `Ok(None)` when the backend
    /// cannot tell now (unavailable), which ends nothing. A purge starts the offsets again at
    /// 0, so a subscription that has read past 0 would skip the new log's first messages
    /// without a word: it ends instead, at once when the purge was announced (`news`), or
    /// when a partition stands behind where it reads (a purge made elsewhere, seen if the new
    /// log has not grown past that since).
    pub(super) async fn check(
        &self,
        broker: &Arc<dyn Broker>,
        request: &Subscription,
        next: &BTreeMap<u32, Option<u64>>,
        news: News,
    ) -> Result<Option<TopicInfo>, Gone> {
        if let Some(reset) = news.reset
            && read_past_0(reset, next)
        {
            return Err(self.reset(request, reset));
        }
        let topic = match broker.get_topic(self.topic()).await {
            Ok(topic) => topic,
            Err(err) if is_gone(&err) => return Err(self.gone(request, "was deleted").into()),
            Err(_) => return Ok(None),
        };
        let stream = match broker.get_stream(Identifier::Id(self.stream_id)).await {
            Ok(stream) => stream,
            Err(err) if is_gone(&err) => return Err(self.gone(request, "was deleted").into()),
            Err(_) => return Ok(None),
        };
        if !same_creation(topic.created_at_micros, self.topic_created_at) {
            return Err(self.gone(request, "was deleted and created again").into());
        }
        if topic.name != self.topic_name || stream.name != self.stream_name {
            return Err(self.gone(request, "was renamed").into());
        }
        for (id, created_at) in &self.partitions {
            let what = match topic.partitions.iter().find(|p| p.id == *id) {
                None => format!("had partition {id} deleted"),
                Some(p) if !same_creation(p.created_at_micros, *created_at) => {
                    format!("had partition {id} deleted and created again")
                }
                Some(_) => continue,
            };
            return Err(Gone::purged(self.gone(request, &what)));
        }
        for partition in &topic.partitions {
            // Where the partition ends. One emptied by retention still counts its offsets
            // (`current_offset` stays); only a purged (or never written) one reads 0 and 0.
            let end = if partition.messages_count == 0 && partition.current_offset == 0 {
                0
            } else {
                partition.current_offset + 1
            };
            if let Some(Some(at)) = next.get(&partition.id)
                && end < *at
            {
                let what = format!(
                    "was purged (partition {} now ends before offset {at}, where this \
                     subscription reads)",
                    partition.id
                );
                return Err(Gone::purged(self.gone(request, &what)));
            }
        }
        Ok(Some(topic))
    }

    /// Whether the topic by its ids is still the log it opened on (its creation time, and
    /// each followed partition's that is still there); a backend that cannot tell now does not
    /// stop a commit.
    async fn same_log(&self, broker: &Arc<dyn Broker>) -> bool {
        match broker.get_topic(self.topic()).await {
            Ok(topic) => {
                same_creation(topic.created_at_micros, self.topic_created_at)
                    && topic.partitions.iter().all(|partition| {
                        self.partitions.get(&partition.id).is_none_or(|created_at| {
                            same_creation(partition.created_at_micros, *created_at)
                        })
                    })
            }
            Err(err) => !is_gone(&err),
        }
    }

    /// Whether `reset` reset a partition this subscription follows.
    fn reset_by(&self, reset: Reset) -> bool {
        self.partitions
            .keys()
            .any(|partition| reset.resets(*partition))
    }

    /// How a subscription ends whose topic was purged, or had partitions deleted, through
    /// this gateway.
    fn reset(&self, request: &Subscription, reset: Reset) -> Gone {
        Gone::purged(self.gone(request, &reset.said()))
    }

    /// How a subscription whose topic is no longer the one it followed ends: NOT_FOUND, named
    /// as the client named it.
    pub(super) fn gone(&self, request: &Subscription, what: &str) -> Status {
        Problem::new(
            axum::http::StatusCode::NOT_FOUND,
            "SUBSCRIBED_TOPIC_GONE",
            format!(
                "the topic this subscription followed ({}/{}) {what} since it opened; open a \
                 new subscription",
                request.stream_text, request.topic_text
            ),
        )
        .to_status()
    }
}

/// Why a subscription's topic is no longer the one it followed: the status it ends with.
pub(super) struct Gone {
    status: Status,
    /// Purged: the offsets it read belong to a log that is no more, and a commit of them would
    /// make the consumer's next read skip the new log's start.
    purged: bool,
}

impl Gone {
    fn purged(status: Status) -> Self {
        Self {
            status,
            purged: true,
        }
    }

    /// The status to end with; after a purge nothing read is committed (the subscription's
    /// end reads [`Subscription::commits`]).
    fn end(self, request: &mut Subscription) -> Status {
        if self.purged {
            request.stop_commits();
        }
        self.status
    }
}

impl From<Status> for Gone {
    fn from(status: Status) -> Self {
        Self {
            status,
            purged: false,
        }
    }
}

/// What the catalog announcements since the last look say about one subscription.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct News {
    /// A change names what it follows: check it.
    pub(super) moved: bool,
    /// One of those was a purge or a deletion of partitions (the last such).
    pub(super) reset: Option<Reset>,
}

impl News {
    fn add(&mut self, followed: &Followed, change: &CatalogChange) {
        if followed.concerned_by(change) {
            self.moved = true;
            self.reset = match (self.reset, change.reset) {
                (Some(seen), Some(reset)) => Some(seen.and(reset)),
                (seen, reset) => seen.or(reset),
            };
        }
    }

    /// Some announcements were missed: any could have been ours, a purge too (the check then
    /// ends the subscription only if a partition stands behind where it reads).
    fn lagged(&mut self) {
        self.moved = true;
    }

    /// Takes what is waiting on the channel, without waiting.
    fn take(
        mut self,
        catalog: &mut Option<broadcast::Receiver<CatalogChange>>,
        followed: &Followed,
    ) -> Self {
        if let Some(changes) = catalog.as_mut() {
            loop {
                match changes.try_recv() {
                    Ok(change) => self.add(followed, &change),
                    Err(TryRecvError::Lagged(_)) => self.lagged(),
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
        }
        self
    }
}

fn is_gone(err: &BrokerError) -> bool {
    matches!(
        err,
        BrokerError::StreamNotFound(_) | BrokerError::TopicNotFound { .. }
    )
}

/// Where a subscription starts: each partition's next offset (`None`: by its strategy), and
/// the cursor that says so.
pub(super) struct Position {
    pub(super) next: BTreeMap<u32, Option<u64>>,
    pub(super) cursor: Cursor,
}

/// Whether a purge of what the subscription followed was announced and not yet heard; if so
/// nothing it read may be committed any more.
pub(super) fn purged_since(request: &mut Subscription, followed: &Followed) -> bool {
    let news = News::default().take(&mut request.catalog, followed);
    let reset = news.reset.is_some_and(|reset| followed.reset_by(reset));
    if reset {
        request.stop_commits();
    }
    reset
}

/// Whether `reset` reset a partition the subscription had read past offset 0 of: reading on
/// there would skip the new log's start.
fn read_past_0(reset: Reset, next: &BTreeMap<u32, Option<u64>>) -> bool {
    next.iter()
        .any(|(partition, at)| reset.resets(*partition) && at.is_some_and(|at| at > 0))
}

/// Runs the subscription until it ends; the request comes back with its announcements
/// channel, so its end can still hear of a purge before it commits (`purged_since`).
pub(super) async fn run(
    broker: Arc<dyn Broker>,
    mut request: Subscription,
    followed: Followed,
    position: Position,
    settings: Arc<SubscribeSettings>,
    shutdown: CancellationToken,
    buffer: Buffer,
) -> Subscription {
    let Position {
        mut next,
        mut cursor,
    } = position;
    let mut idle_wait = MIN_IDLE_WAIT;
    // One append signal per followed partition, taken before the first poll so no append
    // falls between the two. With every partition signalled, a subscriber polls only the
    // partitions that moved (or still had more to read); otherwise it polls on a timer.
    let mut appends: BTreeMap<u32, watch::Receiver<u64>> = next
        .keys()
        .filter_map(|p| {
            broker
                .partition_appends(&followed.topic(), *p)
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
    // What this pump has stored, by partition (see `commit`).
    let mut committed = BTreeMap::new();
    let mut last_commit = tokio::time::Instant::now();
    // When the topic was last checked to be the one followed: at every heartbeat, and as often
    // while messages flow, which send no heartbeats.
    let mut last_checked = tokio::time::Instant::now();
    // Renames, deletions and purges made through this gateway, checked before anything more
    // is delivered: scopes match names, so a rename must not let more through than was read.
    // Only those naming what this subscription follows cost it a check.
    if request.catalog.is_none() {
        request.catalog = broker.catalog_changes();
    }
    // Set when a wait ended on a change of ours (waiting took it from the channel).
    let mut waited_news = News::default();
    loop {
        let news = std::mem::take(&mut waited_news).take(&mut request.catalog, &followed);
        if news.moved {
            last_checked = tokio::time::Instant::now();
            if let Err(gone) = followed.check(&broker, &request, &next, news).await {
                let status = gone.end(&mut request);
                let _ = deliver(&buffer, Err(status), 0, &settings, &shutdown).await;
                return request;
            }
        }
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
                    topic: followed.topic(),
                    partition_id: partition,
                    consumer: request.consumer.clone(),
                    strategy,
                    count: POLL_BATCH,
                    max_bytes: settings.batch_max_bytes.min(BUFFER_BYTES),
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
                    let status = if is_gone(&err) {
                        followed.gone(&request, "was deleted")
                    } else {
                        broker_status(err)
                    };
                    let _ = buffer.tx.send((Err(status), None)).await;
                    return request;
                }
            };
            if polled.messages.is_empty() {
                draining.remove(&partition);
                // Nothing yet for a first poll by strategy: keep asking the same way.
                continue;
            }
            // A change announced while this round polled is checked before what the poll
            // read is delivered. A purge (announced before it is made, and again after) may
            // have come between this poll and the last: what it read may be either log's, so
            // none of it goes.
            let news = News::default().take(&mut request.catalog, &followed);
            if let Some(reset) = news.reset.filter(|reset| followed.reset_by(*reset)) {
                let status = followed.reset(&request, reset).end(&mut request);
                let _ = deliver(&buffer, Err(status), 0, &settings, &shutdown).await;
                return request;
            }
            if news.moved {
                last_checked = tokio::time::Instant::now();
                if let Err(gone) = followed.check(&broker, &request, &next, news).await {
                    let status = gone.end(&mut request);
                    let _ = deliver(&buffer, Err(status), 0, &settings, &shutdown).await;
                    return request;
                }
            }
            // It may hold more than one poll returns: read it again before sleeping.
            draining.insert(partition);
            for message in polled.messages {
                let (offset, size) = (message.offset, message.size());
                next.insert(partition, Some(offset + 1));
                cursor.next.insert(partition, offset + 1);
                let item = cursor::encode(&cursor, &settings.cursor_keys).map(|cursor| Delivery {
                    cursor,
                    event: Event::Message {
                        partition_id: partition,
                        message,
                    },
                });
                if !deliver(&buffer, item, size, &settings, &shutdown).await {
                    return request;
                }
                delivered += 1;
                last_sent = tokio::time::Instant::now();
                since_commit += 1;
                let by_count = request.commit_every > 0 && since_commit >= request.commit_every;
                let by_time = !request.commit_interval.is_zero()
                    && last_commit.elapsed() >= request.commit_interval;
                if by_count || by_time {
                    // A purge announced while these were delivered: what they were read at is
                    // the old log's, and stored now it would skip the new log's start.
                    waited_news =
                        std::mem::take(&mut waited_news).take(&mut request.catalog, &followed);
                    if let Some(reset) = waited_news.reset.filter(|reset| followed.reset_by(*reset))
                    {
                        let status = followed.reset(&request, reset).end(&mut request);
                        let _ = deliver(&buffer, Err(status), 0, &settings, &shutdown).await;
                        return request;
                    }
                    since_commit = 0;
                    last_commit = tokio::time::Instant::now();
                    commit(&broker, &request, &followed, &buffer.handed, &mut committed).await;
                }
            }
        }
        first_round = false;
        let heartbeat_due = delivered == 0 && last_sent.elapsed() >= settings.heartbeat;
        let check_due = last_checked.elapsed() >= settings.heartbeat;
        let topic = if heartbeat_due || check_due {
            last_checked = tokio::time::Instant::now();
            match followed
                .check(&broker, &request, &next, News::default())
                .await
            {
                Ok(topic) => topic,
                Err(gone) => {
                    let status = gone.end(&mut request);
                    let _ = deliver(&buffer, Err(status), 0, &settings, &shutdown).await;
                    return request;
                }
            }
        } else {
            None
        };
        if delivered > 0 {
            idle_wait = MIN_IDLE_WAIT;
            continue;
        }
        if heartbeat_due {
            let item = heartbeat(topic.as_ref(), &next, &cursor, &settings);
            if !deliver(&buffer, item, 0, &settings, &shutdown).await {
                return request;
            }
            last_sent = tokio::time::Instant::now();
        }
        // A backend that announces appends lets an idle subscriber sleep until one happens
        // (or its next heartbeat is due); otherwise it polls, backing off to the idle interval.
        let until_heartbeat = settings.heartbeat.saturating_sub(last_sent.elapsed());
        // A partition whose poll failed is tried again at the idle pace, signalled or not:
        // its signal may not move again.
        let wait = if signalled && draining.is_empty() {
            until_heartbeat
        } else {
            idle_wait
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = buffer.tx.send((Err(shutting_down("resume with the last cursor")), None)).await;
                    return request;
                }
                () = buffer.tx.closed() => return request,
                () = tokio::time::sleep_until(deadline) => break,
                // Ours is checked at the top of the next round; another's changes nothing
                // here, and the wait goes on to the same deadline.
                news = async {
                    match request.catalog.as_mut() {
                        Some(changes) => changes.recv().await,
                        None => std::future::pending().await,
                    }
                } => match news {
                    Ok(change) if !followed.concerned_by(&change) => {}
                    Err(broadcast::error::RecvError::Closed) => request.catalog = None,
                    Ok(change) => {
                        waited_news.add(&followed, &change);
                        break;
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        waited_news.lagged();
                        break;
                    }
                },
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
                    break;
                }
            }
        }
        idle_wait = (idle_wait * 2).min(settings.idle_poll);
    }
}

/// Buffers one answer of `bytes` payload and header bytes, waiting while the client reads
/// slowly (for room in items and in bytes); `false` ends the subscription, as does an error,
/// which is the stream's last item.
async fn deliver(
    buffer: &Buffer,
    item: Item,
    bytes: usize,
    settings: &SubscribeSettings,
    shutdown: &CancellationToken,
) -> bool {
    let ended_ok = item.is_ok();
    // A message larger than the whole buffer waits for all of it, and goes alone.
    let permits = u32::try_from(bytes.min(BUFFER_BYTES)).unwrap_or(u32::MAX);
    let buffered = async {
        let room = Arc::clone(&buffer.room)
            .acquire_many_owned(permits)
            .await
            .ok();
        buffer.tx.send((item, room)).await.is_ok()
    };
    tokio::pin!(buffered);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = buffer.tx.try_send((Err(shutting_down("resume with the last cursor")), None));
                return false;
            }
            () = buffer.tx.closed() => return false,
            sent = tokio::time::timeout(settings.slow_client, &mut buffered) => match sent {
                Ok(true) => return ended_ok,
                Ok(false) => return false,
                // Held back by its own quota, the reader is not slow: wait on.
                Err(_) if buffer.flow.is_paused() => {}
                Err(_) => {
                    tracing::warn!(
                        timeout = ?settings.slow_client,
                        "subscriber stopped reading; closing its stream and connection"
                    );
                    buffer.flow.slow.store(true, Ordering::Release);
                    // Over HTTP/2 a client that opens no window is never asked for its
                    // stream's next part: only closing the connection frees what it holds.
                    if let Some(connection) = &buffer.connection {
                        connection.cut();
                    }
                    return false;
                }
            },
        }
    }
}

/// The partitions whose handed-on position moved past what was last `committed`, with that
/// position: a commit stores only these, so a subscription over many partitions that commits
/// after every message stores one offset, not one per partition it has read.
pub(super) fn moved(
    handed: &BTreeMap<u32, u64>,
    committed: &BTreeMap<u32, u64>,
) -> Vec<(u32, u64)> {
    handed
        .iter()
        .filter(|(partition, next)| committed.get(*partition) != Some(*next))
        .map(|(partition, next)| (*partition, *next))
        .collect()
}

/// Stores the consumer's offset in every partition up to what the stream has handed on, by
/// the topic's ids, and never on a topic since created again under its name; only where it
/// moved since this subscription's last commit (`committed`, kept by the caller).
pub(super) async fn commit(
    broker: &Arc<dyn Broker>,
    request: &Subscription,
    followed: &Followed,
    handed: &Handed,
    committed: &mut BTreeMap<u32, u64>,
) {
    let Some(consumer) = &request.consumer else {
        return;
    };
    // Where an id may name a topic created since, the log is compared first: one read.
    if broker.reuses_topic_ids() && !followed.same_log(broker).await {
        tracing::info!("a subscriber's offsets are not committed: its topic was created again");
        return;
    }
    let moved = moved(
        &handed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
        committed,
    );
    for (partition, next) in moved {
        if let Some(offset) = next.checked_sub(1) {
            let at = ConsumerOffsetRef {
                topic: followed.topic(),
                consumer: consumer.clone(),
                partition_id: partition,
            };
            match broker.store_consumer_offset(at, offset).await {
                Ok(()) => {
                    committed.insert(partition, next);
                }
                Err(err) => {
                    tracing::warn!(error = %err, partition, "cannot commit a subscriber's offset");
                }
            }
        }
    }
}

/// Where each followed partition stands, from the topic as just read (`None`: the backend
/// could not tell, so no heads).
fn heartbeat(
    topic: Option<&TopicInfo>,
    next: &BTreeMap<u32, Option<u64>>,
    cursor: &Cursor,
    settings: &SubscribeSettings,
) -> Item {
    let heads: BTreeMap<u32, u64> = topic
        .map(|topic| {
            topic
                .partitions
                .iter()
                .map(|p| (p.id, p.next_offset()))
                .collect()
        })
        .unwrap_or_default();
    let partitions = next
        .iter()
        .map(|(partition, position)| {
            let head = heads.get(partition).copied().unwrap_or(0);
            let next_offset = position.unwrap_or(head);
            PartitionLag {
                partition_id: *partition,
                next_offset,
                lag: head.saturating_sub(next_offset),
            }
        })
        .collect();
    Ok(Delivery {
        cursor: cursor::encode(cursor, &settings.cursor_keys)?,
        event: Event::Heartbeat(partitions),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_stores_only_the_partitions_that_moved_since_the_last() {
        let handed: BTreeMap<u32, u64> = (0..1000).map(|p| (p, 1)).collect();
        let mut committed = BTreeMap::new();
        assert_eq!(
            moved(&handed, &committed).len(),
            1000,
            "the first commit stores all"
        );
        committed.extend(handed.iter().map(|(p, next)| (*p, *next)));
        let mut handed = handed;
        handed.insert(412, 2);
        assert_eq!(moved(&handed, &committed), vec![(412, 2)]);
        committed.insert(412, 2);
        assert!(moved(&handed, &committed).is_empty());
    }

    fn request(commit_every: u32) -> Subscription {
        Subscription {
            topic: TopicRef {
                stream: Identifier::Id(3),
                topic: Identifier::Id(7),
            },
            stream_text: "orders".into(),
            topic_text: "created".into(),
            partition_id: None,
            consumer: Some(Identifier::Name("billing".into())),
            strategy: PollingStrategy::First,
            cursor: None,
            commit_every,
            commit_interval: Duration::ZERO,
            client: None,
            holder: None,
            scoped_names: None,
            catalog: None,
            connection: None,
        }
    }

    /// The subscription's end commits only while it still commits: after a purge its offsets
    /// are the old log's, and stored in the new one they would skip its start. One that
    /// commits by interval alone commits at its end too.
    #[test]
    fn a_subscription_ended_by_a_purge_commits_nothing_more_and_one_ended_otherwise_does() {
        let by_interval = || Subscription {
            commit_interval: Duration::from_secs(100),
            ..request(0)
        };
        for commits in [request(5), by_interval()] {
            assert!(commits.commits());
            let mut purged = commits;
            let status = Gone::purged(Status::not_found("was purged")).end(&mut purged);
            assert_eq!(status.message(), "was purged");
            assert!(!purged.commits());
            assert!(purged.commit_interval.is_zero() && purged.commit_every == 0);
        }
        for mut renamed in [request(5), by_interval()] {
            let status = Gone::from(Status::not_found("was renamed")).end(&mut renamed);
            assert_eq!(status.message(), "was renamed");
            assert!(renamed.commits());
        }
        assert!(!request(0).commits());
    }

    #[test]
    fn a_change_concerns_the_subscriptions_of_what_it_names_by_id_or_name() {
        let followed = Followed {
            stream_id: 3,
            stream_name: "orders".into(),
            topic_id: 7,
            topic_name: "created".into(),
            topic_created_at: 0,
            partitions: BTreeMap::new(),
        };
        let change = |stream: Identifier, topic: Option<Identifier>| {
            followed.concerned_by(&CatalogChange {
                stream,
                topic,
                reset: None,
            })
        };
        let name = |text: &str| Identifier::Name(text.into());
        assert!(change(name("orders"), None));
        assert!(change(Identifier::Id(3), None));
        assert!(change(name("orders"), Some(name("created"))));
        assert!(change(Identifier::Id(3), Some(Identifier::Id(7))));
        assert!(!change(name("payments"), None));
        assert!(!change(Identifier::Id(4), None));
        assert!(!change(name("orders"), Some(name("audit"))));
        assert!(!change(name("orders"), Some(Identifier::Id(8))));
        // Another stream's topic of the same name is another topic.
        assert!(!change(name("payments"), Some(name("created"))));
    }
}
