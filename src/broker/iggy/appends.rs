//! Appends, as far as Iggy lets them be seen. Iggy announces none, so an idle subscriber used
//! to poll each of its partitions every round: S idle subscribers of a topic of P partitions
//! cost Iggy S × P polls a round, which a few readers of a wide topic made into all the work
//! the pool could do. Now one task per followed topic reads the topic once a round (one
//! `GetTopic`, whatever S and P) and moves a partition's signal when its next offset changes;
//! subscribers wait on their signals and poll only what moved.
//!
//! A round follows a change at once and backs off, doubling, to `SUBSCRIBE_IDLE_POLL_MS` while
//! nothing changes: the pace an idle subscriber polled at before. The task ends when no
//! subscriber listens, when the topic is gone (its signals close, so subscribers poll and find
//! out), and at shutdown.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use iggy::prelude::TopicClient;
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    convert::{to_iggy_id, topic_details_info},
    pool::Pool,
};
use crate::broker::TopicRef;

/// The first wait after a change; it doubles up to the idle interval.
const MIN_WAIT: Duration = Duration::from_millis(5);

/// Each partition's signal of one topic: the value is a partition's next offset as last read.
type Signals = HashMap<u32, watch::Sender<u64>>;

pub(super) struct Appends {
    pool: Arc<Pool>,
    idle: Duration,
    topics: Arc<Mutex<HashMap<TopicRef, Signals>>>,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Appends {
    pub(super) fn new(
        pool: Arc<Pool>,
        idle: Duration,
        tasks: TaskTracker,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            pool,
            idle: idle.max(MIN_WAIT),
            topics: Arc::default(),
            tasks,
            cancel,
        }
    }

    /// A signal that moves when `partition_id` of `topic` (by ids, as subscriptions follow it)
    /// may have grown; `None` outside a runtime or when the ids cannot name an Iggy topic.
    pub(super) fn follow(
        &self,
        topic: &TopicRef,
        partition_id: u32,
    ) -> Option<watch::Receiver<u64>> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let (stream_id, topic_id) = (
            to_iggy_id(&topic.stream).ok()?,
            to_iggy_id(&topic.topic).ok()?,
        );
        let mut topics = self.topics.lock().ok()?;
        let started = topics.contains_key(topic);
        let signals = topics.entry(topic.clone()).or_default();
        let receiver = signals
            .entry(partition_id)
            .or_insert_with(|| watch::channel(u64::MAX).0)
            .subscribe();
        if !started {
            let (pool, idle, topics, cancel) = (
                Arc::clone(&self.pool),
                self.idle,
                Arc::clone(&self.topics),
                self.cancel.clone(),
            );
            let topic = topic.clone();
            self.tasks.spawn_on(
                async move {
                    let mut wait = MIN_WAIT;
                    loop {
                        // Ends (under the map's lock, so no new follower is missed) when no
                        // subscriber listens any more.
                        {
                            let Ok(mut topics) = topics.lock() else { return };
                            let Some(signals) = topics.get_mut(&topic) else { return };
                            signals.retain(|_, signal| signal.receiver_count() > 0);
                            if signals.is_empty() {
                                topics.remove(&topic);
                                return;
                            }
                        }
                        let (stream_id, topic_id) = (stream_id.clone(), topic_id.clone());
                        let read = tokio::select! {
                            () = cancel.cancelled() => break,
                            read = pool.answer(|c| async move { c.get_topic(&stream_id, &topic_id).await }) => read,
                        };
                        wait = match read {
                            Ok(Ok(Some(details))) => {
                                let info = topic_details_info(&details);
                                let Ok(topics) = topics.lock() else { return };
                                let mut moved = false;
                                if let Some(signals) = topics.get(&topic) {
                                    for partition in &info.partitions {
                                        if let Some(signal) = signals.get(&partition.id) {
                                            let next = partition.next_offset();
                                            moved |= signal.send_if_modified(|value| {
                                                std::mem::replace(value, next) != next
                                            });
                                        }
                                    }
                                }
                                if moved { MIN_WAIT } else { (wait * 2).min(idle) }
                            }
                            // Gone: its signals close, and subscribers poll and find out.
                            Ok(Ok(None)) => break,
                            // Unreachable or refused for now: try again at the idle pace.
                            Ok(Err(_)) | Err(_) => idle,
                        };
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                    if let Ok(mut topics) = topics.lock() {
                        topics.remove(&topic);
                    }
                },
                &handle,
            );
        }
        Some(receiver)
    }
}
