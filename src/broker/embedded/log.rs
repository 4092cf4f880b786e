//! The messages of a store that keeps nothing (`DATA_DIR=:memory:`): each partition's records in
//! a vector indexed by offset. A copy-on-write B-tree and its commit protect nothing there, and
//! were two thirds of a unary send's instructions; everything else (catalog, consumer offsets,
//! idempotency records) stays in redb, so the semantics are the durable store's.
//!
//! A partition's offsets run from 0 without holes (a purge starts again at 0), and only offsets
//! below the catalog's head are read, so a record written ahead of a failed commit is never
//! seen and the next append overwrites it. Records are `Bytes`: a poll takes references under
//! the lock and decodes after it, its payloads slices of the records, so a large poll holds
//! the lock (and the sends waiting for it) no longer than a small one.

use std::{
    collections::HashMap,
    sync::{PoisonError, RwLock},
};

use bytes::Bytes;

use super::{catalog::Catalog, codec::decode_shared, schema::PartitionRecord};
use crate::broker::{BrokerError, BrokerResult, StoredMessage};

type PartitionKey = (u32, u32, u32);

#[derive(Debug, Default)]
pub(super) struct MemoryLog {
    partitions: RwLock<HashMap<PartitionKey, Vec<Bytes>>>,
}

/// Records [`MemoryLog::keep`] took out, to be dropped once no lock is held: freeing a large
/// partition's messages takes time nobody should wait for.
#[must_use]
pub(super) struct Removed(
    #[expect(dead_code, reason = "held only to be dropped once no lock is held")] Vec<Vec<Bytes>>,
);

fn poisoned<T>(_: PoisonError<T>) -> BrokerError {
    BrokerError::Storage("the in-memory log's lock is poisoned".into())
}

fn missing(offset: u64) -> BrokerError {
    BrokerError::Storage(format!("message {offset} is missing"))
}

impl MemoryLog {
    /// Writes each partition's records from its first offset on, replacing whatever an earlier,
    /// uncommitted group left there.
    /// The records are moved out of `writes`.
    pub(super) fn append(
        &self,
        writes: &mut [(PartitionKey, u64, Vec<Vec<u8>>)],
    ) -> BrokerResult<()> {
        let mut partitions = self.partitions.write().map_err(poisoned)?;
        for (key, first, records) in writes {
            let log = partitions.entry(*key).or_default();
            let first = usize::try_from(*first).map_err(|_| missing(*first))?;
            if first > log.len() {
                return Err(missing(log.len() as u64));
            }
            log.truncate(first);
            log.extend(records.drain(..).map(Bytes::from));
        }
        Ok(())
    }

    /// Up to `count` messages from `start`, below the partition's committed head, and no more
    /// than `max_bytes` of them (at least one).
    pub(super) fn read(
        &self,
        key: PartitionKey,
        head: &PartitionRecord,
        start: u64,
        count: u32,
        max_bytes: usize,
    ) -> BrokerResult<Vec<StoredMessage>> {
        let records: Vec<Bytes> = {
            let partitions = self.partitions.read().map_err(poisoned)?;
            let Some(log) = partitions.get(&key) else {
                return Ok(Vec::new());
            };
            (start..head.next_offset)
                .take(count as usize)
                .map(|offset| {
                    usize::try_from(offset)
                        .ok()
                        .and_then(|at| log.get(at))
                        .cloned()
                        .ok_or_else(|| missing(offset))
                })
                .collect::<BrokerResult<_>>()?
        };
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        for (offset, record) in (start..).zip(&records) {
            let message = decode_shared(offset, record)
                .map_err(|err| BrokerError::Storage(err.to_string()))?;
            bytes = bytes.saturating_add(message.size());
            // The same budget as the durable store's read.
            if bytes > max_bytes && !messages.is_empty() {
                break;
            }
            messages.push(message);
        }
        Ok(messages)
    }

    /// The first offset whose timestamp is at or after `micros`: a binary search, since a
    /// partition's timestamps never decrease.
    pub(super) fn timestamp_offset(
        &self,
        key: PartitionKey,
        head: &PartitionRecord,
        micros: u64,
    ) -> BrokerResult<u64> {
        let partitions = self.partitions.read().map_err(poisoned)?;
        let log = partitions.get(&key).map_or(&[][..], Vec::as_slice);
        let committed = usize::try_from(head.next_offset).map_err(|_| missing(head.next_offset))?;
        let log = log
            .get(..committed)
            .ok_or_else(|| missing(log.len() as u64))?;
        // A record's timestamp follows its version byte (`codec::encode_message`).
        let mut corrupt = false;
        let found = log.partition_point(|record| {
            match record.get(1..9).and_then(|ts| <[u8; 8]>::try_from(ts).ok()) {
                Some(ts) => u64::from_le_bytes(ts) < micros,
                None => {
                    corrupt = true;
                    false
                }
            }
        });
        if corrupt {
            return Err(BrokerError::Storage("a message record is corrupt".into()));
        }
        Ok(found as u64)
    }

    /// Makes the log match a catalog just committed, under the writer's lock (no send appends
    /// meanwhile): a partition gone is taken out, a purged one emptied (its head went back to
    /// 0). Readers never read past a head, so this need not hold the catalog's lock.
    pub(super) fn keep(&self, catalog: &Catalog) -> Removed {
        // Nothing holding this lock panics part-way through a change, so a poisoned log is
        // still whole.
        let mut partitions = self
            .partitions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut removed = Vec::new();
        partitions.retain(|(s, t, p), log| {
            let head = catalog
                .streams
                .get(s)
                .and_then(|stream| stream.topics.get(t))
                .and_then(|topic| topic.partitions.get(*p as usize));
            match head.and_then(|head| usize::try_from(head.next_offset).ok()) {
                // A purge: the whole vector goes, its capacity too.
                Some(0) => {
                    removed.push(std::mem::take(log));
                    true
                }
                Some(committed) => {
                    if committed < log.len() {
                        removed.push(log.split_off(committed));
                    }
                    true
                }
                None => {
                    removed.push(std::mem::take(log));
                    false
                }
            }
        });
        Removed(removed)
    }
}
