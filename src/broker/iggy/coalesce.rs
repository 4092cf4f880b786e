//! Natural batching of sends to Iggy, as the embedded store's group commit is for fsync: while a
//! lane (one stream, topic and partitioning) has as many sends on their way as the pool has
//! connections, later sends to it queue, and the next send to leave takes every queued call it
//! can carry as one batch. Each call's messages stay contiguous and in call order; Iggy stores a
//! batch whole or refuses it whole, so every call in it gets the batch's outcome.

use std::{
    collections::{HashMap, VecDeque},
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::oneshot;

use crate::broker::{BrokerError, BrokerResult, Partitioning, SendCounts, TopicRef};

/// How sends are coalesced (`SEND_COALESCE`, `SEND_LINGER_US`) and how large a coalesced batch
/// may grow: never beyond what one call may send (`BATCH_MAX_SIZE` messages,
/// `MAX_REQUEST_BODY_SIZE` bytes), so Iggy never meets a batch the gateway would have refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendBatching {
    /// Off: every call is a send of its own, as before coalescing.
    pub enabled: bool,
    /// How long a send waits for company before it leaves a lane with nothing on its way.
    pub linger: Duration,
    pub max_messages: usize,
    pub max_bytes: usize,
}

impl Default for SendBatching {
    fn default() -> Self {
        Self {
            enabled: true,
            linger: Duration::ZERO,
            max_messages: 1000,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Where a batch goes: one send of `messages`, in order, to one lane.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Lane {
    pub(super) topic: TopicRef,
    /// Calls coalesce only with the same partitioning: the same partition, the same key (Iggy
    /// hashes it on the server), or balanced, where Iggy picks one partition per batch.
    pub(super) partitioning: Partitioning,
}

/// One send to the backend; `Ok` means every message of the batch is stored.
pub(super) type SendFuture = Pin<Box<dyn Future<Output = BrokerResult<()>> + Send>>;
pub(super) type Sender<M> = Arc<dyn Fn(Lane, Vec<M>) -> SendFuture + Send + Sync>;

/// One call waiting in its lane.
struct Waiting<M> {
    messages: Vec<M>,
    bytes: usize,
    /// Closed when the caller went away (cancelled, deadline): its messages are then dropped
    /// unsent, as the caller was told nothing was stored.
    done: oneshot::Sender<BrokerResult<()>>,
}

struct Queue<M> {
    waiting: VecDeque<Waiting<M>>,
    /// Sends of this lane on their way (each one a task that goes on while calls wait).
    sending: usize,
}

pub(super) struct Coalescer<M> {
    lanes: Mutex<HashMap<Lane, Queue<M>>>,
    sender: Sender<M>,
    settings: SendBatching,
    /// Sends one lane may have on their way at once: the pool's connections, since a send
    /// beyond them would only queue inside the pool, where nothing can join it.
    max_sending: usize,
    sends: AtomicU64,
    calls: AtomicU64,
}

impl<M: Send + 'static> Coalescer<M> {
    pub(super) fn new(sender: Sender<M>, settings: SendBatching, max_sending: usize) -> Self {
        Self {
            lanes: Mutex::new(HashMap::new()),
            sender,
            settings,
            max_sending: max_sending.max(1),
            sends: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }

    pub(super) fn counts(&self) -> SendCounts {
        SendCounts {
            sends: self.sends.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
        }
    }

    /// Sends one call's `messages` (`bytes` as the caps count them), alone or with others of
    /// its lane; answers once the send that carried them is answered. A call dropped before
    /// its batch leaves is never sent; once it has left, the batch's outcome is the call's.
    pub(super) async fn send(
        self: &Arc<Self>,
        lane: Lane,
        messages: Vec<M>,
        bytes: usize,
    ) -> BrokerResult<()> {
        if !self.settings.enabled {
            self.count(1);
            return (self.sender)(lane, messages).await;
        }
        let (done, answer) = oneshot::channel();
        let start = {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            let queue = lanes.entry(lane.clone()).or_insert_with(|| Queue {
                waiting: VecDeque::new(),
                sending: 0,
            });
            queue.waiting.push_back(Waiting {
                messages,
                bytes,
                done,
            });
            let start = queue.sending < self.max_sending;
            if start {
                queue.sending += 1;
            }
            start
        };
        if start {
            // A task of its own: the send carries other callers' messages, so this caller
            // going away must not cut it short.
            tokio::spawn(Arc::clone(self).drain(lane));
        }
        answer.await.unwrap_or_else(|_| {
            Err(BrokerError::Unavailable(
                "the send was dropped unanswered (the gateway is stopping)".into(),
            ))
        })
    }

    /// Calls waiting in `lane`, for tests that queue calls in a known order.
    #[cfg(test)]
    fn waiting(&self, lane: &Lane) -> usize {
        let lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        lanes.get(lane).map_or(0, |queue| queue.waiting.len())
    }

    fn count(&self, calls: usize) {
        self.sends.fetch_add(1, Ordering::Relaxed);
        self.calls.fetch_add(calls as u64, Ordering::Relaxed);
    }

    /// One of the lane's senders: sends batches until nothing is left waiting.
    async fn drain(self: Arc<Self>, lane: Lane) {
        let mut place = Place {
            coalescer: Arc::clone(&self),
            lane: lane.clone(),
            retired: false,
        };
        if !self.settings.linger.is_zero() {
            tokio::time::sleep(self.settings.linger).await;
        }
        loop {
            let Some(batch) = self.take(&lane) else {
                place.retired = true;
                return;
            };
            self.count(batch.len());
            let total = batch.iter().map(|call| call.messages.len()).sum();
            let mut messages = Vec::with_capacity(total);
            let mut answers = Vec::with_capacity(batch.len());
            for call in batch {
                messages.extend(call.messages);
                answers.push(call.done);
            }
            let outcome = (self.sender)(lane.clone(), messages).await;
            for done in answers {
                // A caller gone since the batch left learns nothing; the batch stands.
                let _ = done.send(outcome.clone());
            }
        }
    }

    /// A sender ended without retiring (its send panicked): its place goes to a new sender
    /// when calls wait, or back to the lane.
    fn replace_sender(self: &Arc<Self>, lane: &Lane) {
        let restart = {
            let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
            match lanes.get_mut(lane) {
                Some(queue) if queue.waiting.is_empty() => {
                    queue.sending = queue.sending.saturating_sub(1);
                    if queue.sending == 0 {
                        lanes.remove(lane);
                    }
                    false
                }
                Some(_) => true,
                None => false,
            }
        };
        // Not when the runtime itself is going away (its tasks are dropped, this one too).
        if restart && let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(Arc::clone(self).drain(lane.clone()));
        }
    }

    /// The next batch of the lane: the calls at the head of its queue, in order, while they
    /// fit the caps (the first one always, however large: a call is never split). Calls whose
    /// callers went away are dropped here. `None`, and this sender retires, when none waits.
    fn take(&self, lane: &Lane) -> Option<Vec<Waiting<M>>> {
        let mut lanes = self.lanes.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = lanes.get_mut(lane)?;
        let (mut batch, mut messages, mut bytes) = (Vec::new(), 0usize, 0usize);
        while let Some(next) = queue.waiting.front() {
            if next.done.is_closed() {
                queue.waiting.pop_front();
                continue;
            }
            let fits = messages + next.messages.len() <= self.settings.max_messages
                && bytes + next.bytes <= self.settings.max_bytes;
            if !batch.is_empty() && !fits {
                break;
            }
            let Some(next) = queue.waiting.pop_front() else {
                break;
            };
            messages += next.messages.len();
            bytes += next.bytes;
            batch.push(next);
        }
        if batch.is_empty() {
            queue.sending = queue.sending.saturating_sub(1);
            if queue.sending == 0 {
                lanes.remove(lane);
            }
            return None;
        }
        Some(batch)
    }
}

/// A sender's place in its lane, given back if its task ends without retiring: otherwise the
/// lane would count a sender that no longer runs, and with every place lost, calls would wait
/// forever. (The calls of the batch it carried are answered UNAVAILABLE: their answers drop.)
struct Place<M: Send + 'static> {
    coalescer: Arc<Coalescer<M>>,
    lane: Lane,
    retired: bool,
}

impl<M: Send + 'static> Drop for Place<M> {
    fn drop(&mut self) {
        if !self.retired {
            self.coalescer.replace_sender(&self.lane);
        }
    }
}

#[cfg(test)]
mod tests;
