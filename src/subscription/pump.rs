//! The pump: one task per subscription polls its partitions, pushes what it reads into the
//! subscriber's buffer (bounded in items and bytes), commits what the stream has handed on as
//! asked, and sends heartbeats while idle. It waits when the client reads slowly and sleeps
//! until an append when the backend announces them.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{
    BUFFER_BYTES, Buffered, Delivery, Event, Handed, Item, PartitionLag, SubscribeSettings,
    Subscription,
    cursor::{self, Cursor},
};
use crate::{
    answer::broker_status,
    broker::{Broker, BrokerError, ConsumerOffsetRef, PollMessages, PollingStrategy},
};

/// Messages read from one partition per poll.
const POLL_BATCH: u32 = 100;
/// The first idle wait; it doubles up to `SUBSCRIBE_IDLE_POLL_MS`.
const MIN_IDLE_WAIT: Duration = Duration::from_millis(5);

/// The pump's end of a subscription's buffer.
pub(super) struct Buffer {
    pub(super) tx: mpsc::Sender<Buffered>,
    /// [`BUFFER_BYTES`] of room; an item holds its bytes' worth until the stream yields it.
    pub(super) room: Arc<Semaphore>,
    /// What the stream has yielded, which commits store.
    pub(super) handed: Handed,
}

pub(super) async fn run(
    broker: Arc<dyn Broker>,
    request: Subscription,
    mut next: BTreeMap<u32, Option<u64>>,
    mut cursor: Cursor,
    settings: Arc<SubscribeSettings>,
    shutdown: CancellationToken,
    buffer: Buffer,
) -> Subscription {
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
                    let _ = buffer.tx.send((Err(broker_status(err)), None)).await;
                    return request;
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
                    since_commit = 0;
                    last_commit = tokio::time::Instant::now();
                    commit(&broker, &request, &buffer.handed).await;
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
            if !deliver(&buffer, item, 0, &settings, &shutdown).await {
                return request;
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
                let _ = buffer.tx.send((Err(Status::unavailable(
                    "the gateway is shutting down; resume with the last cursor",
                )), None)).await;
                return request;
            }
            () = buffer.tx.closed() => return request,
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
    tokio::select! {
        () = shutdown.cancelled() => {
            let _ = buffer.tx.try_send((Err(Status::unavailable(
                "the gateway is shutting down; resume with the last cursor",
            )), None));
            false
        }
        () = buffer.tx.closed() => false,
        sent = tokio::time::timeout(settings.slow_client, buffered) => match sent {
            Ok(true) => ended_ok,
            Ok(false) => false,
            Err(_) => {
                tracing::warn!(timeout = ?settings.slow_client, "subscriber stopped reading; closing its stream");
                false
            }
        },
    }
}

/// Stores the consumer's offset in every partition up to what the stream has handed on.
pub(super) async fn commit(broker: &Arc<dyn Broker>, request: &Subscription, handed: &Handed) {
    let Some(consumer) = &request.consumer else {
        return;
    };
    let handed = handed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for (partition, next) in &handed {
        if let Some(offset) = next.checked_sub(1) {
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
) -> Item {
    let heads: BTreeMap<u32, u64> = match broker.get_topic(request.topic.clone()).await {
        Ok(topic) => topic
            .partitions
            .iter()
            .map(|p| (p.id, p.next_offset()))
            .collect(),
        // Deleted under the subscriber: its stream ends as a poll there would end it. (A
        // backend that announces appends wakes no poll for a partition that is gone.)
        Err(err @ (BrokerError::StreamNotFound(_) | BrokerError::TopicNotFound { .. })) => {
            return Err(broker_status(err));
        }
        Err(_) => BTreeMap::new(),
    };
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
