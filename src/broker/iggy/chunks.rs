//! Polls within a byte budget from a server that polls by count only. Iggy answers `count`
//! messages whatever their size, so one poll of 1000 messages of 1 MiB would fetch 1 GiB before
//! the gateway could cut it to `POLL_MAX_BYTES`. The gateway reads in chunks instead: at most
//! [`FIRST_CHUNK`] messages first, then chunks sized by the largest message seen so far to fit
//! the bytes left, each from the offset after the last one read. What one poll holds at once is
//! then about `POLL_MAX_BYTES` plus one chunk (the first: `FIRST_CHUNK` × the largest message).

use std::future::Future;

use crate::broker::{BrokerResult, PollingStrategy, StoredMessage};

/// Messages in the first chunk, before any size is known. Small enough that a first chunk of
/// large messages stays near the budget; polls of up to this many messages take one round trip.
pub(super) const FIRST_CHUNK: u32 = 16;

/// What one fetch from the server answered.
pub(super) struct Fetched {
    pub current_offset: u64,
    pub messages: Vec<StoredMessage>,
}

/// Polls up to `count` messages and `max_bytes` bytes (the longest prefix within them, and at
/// least one message, as `PollMessages::max_bytes` promises), calling `fetch(strategy, count)`
/// once per chunk. `Last` is read as "from `count` before the head seen by a first one-message fetch", so its
/// chunks read forward like every other strategy's. Answers the server's current offset and the
/// messages, in offset order.
pub(super) async fn poll_in_chunks<F, Fut>(
    strategy: PollingStrategy,
    count: u32,
    max_bytes: usize,
    mut fetch: F,
) -> BrokerResult<Fetched>
where
    F: FnMut(PollingStrategy, u32) -> Fut,
    Fut: Future<Output = BrokerResult<Fetched>>,
{
    let mut next = strategy;
    // For `Last`, the newest offset when the poll began: nothing after it belongs to the answer.
    let mut head = None;
    if strategy == PollingStrategy::Last {
        let newest = fetch(PollingStrategy::Last, 1).await?;
        let Some(last) = newest.messages.last().map(|message| message.offset) else {
            return Ok(newest);
        };
        head = Some(last);
        next = PollingStrategy::Offset((last + 1).saturating_sub(u64::from(count)));
    }
    let count_wanted = usize::try_from(count).unwrap_or(usize::MAX);
    let mut answer = Fetched {
        current_offset: 0,
        messages: Vec::new(),
    };
    let (mut bytes, mut largest) = (0usize, 0usize);
    let mut chunk = count.min(FIRST_CHUNK);
    loop {
        let fetched = fetch(next, chunk).await?;
        answer.current_offset = fetched.current_offset;
        let short = fetched.messages.len() < usize::try_from(chunk).unwrap_or(usize::MAX);
        for message in fetched.messages {
            let size = message.size();
            let past_head = head.is_some_and(|head| message.offset > head);
            let over_budget = !answer.messages.is_empty() && bytes.saturating_add(size) > max_bytes;
            if past_head || over_budget {
                return Ok(answer);
            }
            bytes = bytes.saturating_add(size);
            largest = largest.max(size);
            next = PollingStrategy::Offset(message.offset.saturating_add(1));
            answer.messages.push(message);
            if answer.messages.len() >= count_wanted {
                return Ok(answer);
            }
        }
        if short || answer.messages.is_empty() {
            return Ok(answer);
        }
        let left = count_wanted - answer.messages.len();
        let fits = max_bytes.saturating_sub(bytes) / largest.max(1);
        chunk = u32::try_from(fits.clamp(1, left)).unwrap_or(u32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;

    use super::{FIRST_CHUNK, Fetched, poll_in_chunks};
    use crate::broker::{BrokerResult, Headers, PollingStrategy, StoredMessage};

    /// A partition as Iggy polls it: by count, from an offset (or the start, or the last N).
    struct Partition {
        messages: Vec<StoredMessage>,
        /// Every (strategy, count) fetched, and the bytes each answer held.
        fetches: Mutex<Vec<(PollingStrategy, u32, usize)>>,
    }

    impl Partition {
        fn with_sizes(sizes: &[usize]) -> Self {
            let messages = sizes
                .iter()
                .enumerate()
                .map(|(offset, size)| StoredMessage {
                    offset: offset as u64,
                    timestamp_micros: 1_000 + offset as u64,
                    id: offset as u128 + 1,
                    headers: Headers::new(),
                    payload: Bytes::from(vec![b'x'; *size]),
                })
                .collect();
            Self {
                messages,
                fetches: Mutex::new(Vec::new()),
            }
        }

        async fn fetch(&self, strategy: PollingStrategy, count: u32) -> BrokerResult<Fetched> {
            let count = count as usize;
            let start = match strategy {
                PollingStrategy::Offset(offset) => offset as usize,
                PollingStrategy::First | PollingStrategy::Next => 0,
                PollingStrategy::Timestamp(micros) => micros.saturating_sub(1_000) as usize,
                PollingStrategy::Last => self.messages.len().saturating_sub(count),
            };
            let messages: Vec<_> = self
                .messages
                .iter()
                .skip(start)
                .take(count)
                .cloned()
                .collect();
            let bytes = messages.iter().map(StoredMessage::size).sum();
            self.fetches
                .lock()
                .expect("lock")
                .push((strategy, count as u32, bytes));
            Ok(Fetched {
                current_offset: self.messages.len().saturating_sub(1) as u64,
                messages,
            })
        }

        fn largest_fetch(&self) -> usize {
            let fetches = self.fetches.lock().expect("lock");
            fetches
                .iter()
                .map(|(_, _, bytes)| *bytes)
                .max()
                .unwrap_or(0)
        }
    }

    async fn poll(
        partition: &Partition,
        strategy: PollingStrategy,
        count: u32,
        max_bytes: usize,
    ) -> Vec<u64> {
        let fetched = poll_in_chunks(strategy, count, max_bytes, |strategy, count| {
            partition.fetch(strategy, count)
        })
        .await
        .expect("poll");
        fetched.messages.iter().map(|m| m.offset).collect()
    }

    #[tokio::test]
    async fn large_messages_are_fetched_a_few_at_a_time_not_count_at_once() {
        // 1000 messages of 64 KiB; a 1 MiB budget fits 16 of them.
        let partition = Partition::with_sizes(&[64 * 1024; 1000]);
        let offsets = poll(&partition, PollingStrategy::First, 1000, 1024 * 1024).await;
        assert_eq!(offsets, (0..16).collect::<Vec<_>>());
        // Never more than the first chunk's worth fetched at once, not 1000 × 64 KiB.
        assert!(partition.largest_fetch() <= FIRST_CHUNK as usize * 64 * 1024);
        let total: usize = partition
            .fetches
            .lock()
            .expect("lock")
            .iter()
            .map(|f| f.2)
            .sum();
        assert!(total <= 2 * 1024 * 1024, "fetched {total} bytes in all");
    }

    #[tokio::test]
    async fn small_messages_come_in_two_round_trips_and_keep_their_order() {
        let partition = Partition::with_sizes(&[100; 1000]);
        let offsets = poll(&partition, PollingStrategy::Offset(10), 500, 8 << 20).await;
        assert_eq!(offsets, (10..510).collect::<Vec<_>>());
        let fetches = partition.fetches.lock().expect("lock").clone();
        assert_eq!(fetches.len(), 2, "{fetches:?}");
        assert_eq!(fetches[0].0, PollingStrategy::Offset(10));
        assert_eq!(
            fetches[1].0,
            PollingStrategy::Offset(10 + u64::from(FIRST_CHUNK))
        );
        // A poll of a few messages is one round trip.
        let partition = Partition::with_sizes(&[100; 1000]);
        assert_eq!(
            poll(&partition, PollingStrategy::Next, 5, 8 << 20)
                .await
                .len(),
            5
        );
        assert_eq!(partition.fetches.lock().expect("lock").len(), 1);
    }

    #[tokio::test]
    async fn one_message_larger_than_the_budget_is_still_answered_alone() {
        let partition = Partition::with_sizes(&[10, 5000, 10]);
        assert_eq!(
            poll(&partition, PollingStrategy::Offset(1), 3, 100).await,
            vec![1]
        );
        assert_eq!(
            poll(&partition, PollingStrategy::First, 3, 100).await,
            vec![0]
        );
    }

    #[tokio::test]
    async fn a_partition_that_runs_out_ends_the_poll_early() {
        let partition = Partition::with_sizes(&[100; 20]);
        let offsets = poll(&partition, PollingStrategy::Timestamp(1_005), 100, 8 << 20).await;
        assert_eq!(offsets, (5..20).collect::<Vec<_>>());
        let empty = Partition::with_sizes(&[]);
        assert!(
            poll(&empty, PollingStrategy::First, 100, 8 << 20)
                .await
                .is_empty()
        );
        assert!(
            poll(&empty, PollingStrategy::Last, 100, 8 << 20)
                .await
                .is_empty()
        );
    }

    #[tokio::test]
    async fn last_answers_the_newest_count_oldest_first_within_the_budget() {
        let partition = Partition::with_sizes(&[100; 50]);
        assert_eq!(
            poll(&partition, PollingStrategy::Last, 30, 8 << 20).await,
            (20..50).collect::<Vec<_>>()
        );
        // Within the budget, the oldest of the newest 30 (as the embedded store keeps).
        assert_eq!(
            poll(&partition, PollingStrategy::Last, 30, 1000).await,
            (20..30).collect::<Vec<_>>()
        );
        // More than the partition holds: all of it.
        assert_eq!(
            poll(&partition, PollingStrategy::Last, 80, 8 << 20).await,
            (0..50).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn messages_of_mixed_sizes_fill_the_budget_without_passing_it() {
        let sizes: Vec<usize> = (0..200).map(|i| 100 + (i * 7919) % 3000).collect();
        let partition = Partition::with_sizes(&sizes);
        let budget = 40_000;
        let offsets = poll(&partition, PollingStrategy::First, 200, budget).await;
        let held: usize = offsets.iter().map(|o| sizes[*o as usize]).sum();
        assert!(held <= budget);
        // The next message would have passed it: the answer is the longest prefix that fits.
        let next = sizes[offsets.len()];
        assert!(held + next > budget, "held {held}, next {next}");
        assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
    }
}
