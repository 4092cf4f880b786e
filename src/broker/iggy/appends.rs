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
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use iggy::prelude::{Identifier as IggyIdentifier, TopicClient};
use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    convert::{to_iggy_id, topic_details_info},
    pool::Pool,
};
use crate::broker::TopicRef;

/// The first wait after a change; it doubles up to the idle interval. A topic written to
/// without pause is read at most this often (its subscribers read on without waiting for a
/// signal while a partition has more).
const MIN_WAIT: Duration = Duration::from_millis(20);

/// Each partition's signal of one followed topic (the value is a partition's next offset as
/// last read), and which task keeps them.
struct Watched {
    task: u64,
    signals: HashMap<u32, watch::Sender<u64>>,
}

type Topics = Arc<Mutex<HashMap<TopicRef, Watched>>>;

pub(super) struct Appends {
    pool: Arc<Pool>,
    idle: Duration,
    topics: Topics,
    next_task: AtomicU64,
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
            next_task: AtomicU64::new(0),
            tasks,
            cancel,
        }
    }

    /// A signal that moves when `partition_id` of `topic` (by ids, as subscriptions follow it)
    /// may have grown, and closes when the topic or the partition is gone; `None` outside a
    /// runtime or when the ids cannot name an Iggy topic.
    pub(super) fn follow(
        &self,
        topic: &TopicRef,
        partition_id: u32,
    ) -> Option<watch::Receiver<u64>> {
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let ids = (
            to_iggy_id(&topic.stream).ok()?,
            to_iggy_id(&topic.topic).ok()?,
        );
        let mut topics = self.topics.lock().ok()?;
        let started = topics.contains_key(topic);
        let watched = topics.entry(topic.clone()).or_insert_with(|| Watched {
            task: self.next_task.fetch_add(1, Ordering::Relaxed),
            signals: HashMap::new(),
        });
        let receiver = watched
            .signals
            .entry(partition_id)
            .or_insert_with(|| watch::channel(u64::MAX).0)
            .subscribe();
        if !started {
            let entry = Entry {
                topics: Arc::clone(&self.topics),
                topic: topic.clone(),
                task: watched.task,
            };
            self.tasks.spawn_on(
                watch_topic(
                    entry,
                    ids,
                    Arc::clone(&self.pool),
                    self.idle,
                    self.cancel.clone(),
                ),
                &handle,
            );
        }
        Some(receiver)
    }
}

/// Reads the topic once a round while anyone follows it, moving the signals of partitions
/// whose next offset changed.
async fn watch_topic(
    entry: Entry,
    (stream_id, topic_id): (IggyIdentifier, IggyIdentifier),
    pool: Arc<Pool>,
    idle: Duration,
    cancel: CancellationToken,
) {
    let mut wait = MIN_WAIT;
    loop {
        if !entry.followed() {
            return;
        }
        let (stream, topic) = (stream_id.clone(), topic_id.clone());
        let read = tokio::select! {
            () = cancel.cancelled() => return,
            read = pool.answer(|c| async move { c.get_topic(&stream, &topic).await }) => read,
        };
        wait = match read {
            Ok(Ok(Some(details))) => {
                let info = topic_details_info(&details);
                let moved = entry.with(|signals| {
                    // A partition deleted since: its signal closes, so its subscribers poll
                    // it and hear that it is gone.
                    signals.retain(|id, _| info.partitions.iter().any(|p| p.id == *id));
                    let mut moved = false;
                    for partition in &info.partitions {
                        if let Some(signal) = signals.get(&partition.id) {
                            let next = partition.next_offset();
                            moved |= signal
                                .send_if_modified(|value| std::mem::replace(value, next) != next);
                        }
                    }
                    moved
                });
                match moved {
                    None => return,
                    Some(true) => MIN_WAIT,
                    Some(false) => (wait * 2).min(idle),
                }
            }
            // Gone: its signals close, and subscribers poll and find out.
            Ok(Ok(None)) => return,
            // Unreachable or refused for now: try again at the idle pace.
            Ok(Err(_)) | Err(_) => idle,
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

/// A watcher's place in the map, given up (its signals closed) however its task ends, a
/// panic included, so no follower waits on a signal that neither moves nor closes.
struct Entry {
    topics: Topics,
    topic: TopicRef,
    task: u64,
}

impl Entry {
    /// Whether anyone still follows the topic; if not, the place is given up at once, under
    /// the same lock, so a follower that comes now starts a task of its own.
    fn followed(&self) -> bool {
        let Ok(mut topics) = self.topics.lock() else {
            return false;
        };
        let Some(watched) = topics.get_mut(&self.topic) else {
            return false;
        };
        if watched.task != self.task {
            return false;
        }
        watched
            .signals
            .retain(|_, signal| signal.receiver_count() > 0);
        if watched.signals.is_empty() {
            topics.remove(&self.topic);
            return false;
        }
        true
    }

    /// Runs `f` on the signals while the place is still this task's; `None` once it is not.
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<u32, watch::Sender<u64>>) -> T) -> Option<T> {
        let mut topics = self.topics.lock().ok()?;
        let watched = topics.get_mut(&self.topic)?;
        (watched.task == self.task).then(|| f(&mut watched.signals))
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        if let Ok(mut topics) = self.topics.lock()
            && topics
                .get(&self.topic)
                .is_some_and(|watched| watched.task == self.task)
        {
            topics.remove(&self.topic);
        }
    }
}
