//! The messages of a store that keeps nothing (`DATA_DIR=:memory:`): each partition's records in
//! a vector indexed by offset. A copy-on-write B-tree and its commit protect nothing there, and
//! were two thirds of a unary send's instructions; everything else (catalog, consumer offsets,
//! idempotency records) stays in redb, so the semantics are the durable store's.
//!
//! A partition's offsets run from 0 without holes (a purge starts again at 0), and only offsets
//! below the catalog's head are read, so a record written ahead of a failed commit is never
//! seen and the next append overwrites it.

use std::{
    collections::HashMap,
    sync::{PoisonError, RwLock},
};

use super::{catalog::Catalog, codec::decode_message, schema::PartitionRecord};
use crate::broker::{BrokerError, BrokerResult, StoredMessage};

type PartitionKey = (u32, u32, u32);

#[derive(Debug, Default)]
pub(super) struct MemoryLog {
    partitions: RwLock<HashMap<PartitionKey, Vec<Vec<u8>>>>,
}

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
            log.append(records);
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
        let partitions = self.partitions.read().map_err(poisoned)?;
        let Some(log) = partitions.get(&key) else {
            return Ok(Vec::new());
        };
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        for offset in (start..head.next_offset).take(count as usize) {
            let record = usize::try_from(offset)
                .ok()
                .and_then(|at| log.get(at))
                .ok_or_else(|| missing(offset))?;
            let message = decode_message(offset, record)
                .map_err(|err| BrokerError::Storage(err.to_string()))?;
            bytes = bytes.saturating_add(message.size());
            // The same budget as the durable store's read: the rest is never copied out.
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

    /// Makes the log match a catalog just committed: a partition gone is dropped, a purged one
    /// is emptied (its head went back to 0).
    pub(super) fn keep(&self, catalog: &Catalog) {
        // Nothing holding this lock panics part-way through a change, so a poisoned log is
        // still whole.
        let mut partitions = self
            .partitions
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        partitions.retain(|(s, t, p), log| {
            let head = catalog
                .streams
                .get(s)
                .and_then(|stream| stream.topics.get(t))
                .and_then(|topic| topic.partitions.get(*p as usize));
            match head.and_then(|head| usize::try_from(head.next_offset).ok()) {
                Some(committed) => {
                    log.truncate(committed);
                    true
                }
                None => false,
            }
        });
    }
}
