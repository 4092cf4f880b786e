//! Reads: polls by every strategy (a `TIMESTAMP` poll binary-searches, since a partition's
//! timestamps never decrease), stopping at the byte budget so the rest is never loaded; and the
//! consumer offsets a poll commits or a caller stores, reads and deletes.

use bytes::Buf;
use redb::{ReadableDatabase, ReadableTable};

use super::{
    Store,
    catalog::{current_offset, partition_info},
    codec::decode_message,
    poisoned,
    schema::{MESSAGES, OFFSETS, PartitionRecord, storage},
};
use crate::broker::{
    BrokerError, BrokerResult, ConsumerOffsetInfo, ConsumerOffsetRef, Identifier, PollMessages,
    PolledMessages, PollingStrategy, StoredMessage,
};

/// What a poll read, in either store.
struct Read {
    at: (u32, u32, u32),
    partition: PartitionRecord,
    /// The topic's epoch when it read (see `TopicState::epoch`).
    epoch: u64,
    messages: Vec<StoredMessage>,
    /// The consumer whose offset an auto-commit stores.
    commit: Option<String>,
}

impl Store {
    pub(super) fn poll(&self, request: PollMessages) -> BrokerResult<PolledMessages> {
        if self.log.is_some() {
            return self.poll_memory(request);
        }
        let (s, t, partition, epoch) = {
            let catalog = self.read_catalog()?;
            let (s, t, partition) = catalog.partition(&request.topic, request.partition_id)?;
            (s, t, partition, catalog.epoch(s, t))
        };
        let p = request.partition_id;
        let consumer_key = request.consumer.as_ref().map(Identifier::to_string);

        let tx = self.db.begin_read().map_err(storage)?;
        let messages_table = tx.open_table(MESSAGES).map_err(storage)?;
        let start = match request.strategy {
            PollingStrategy::Offset(offset) => offset,
            PollingStrategy::First => first_offset(&messages_table, s, t, p)?,
            PollingStrategy::Last => {
                let first = first_offset(&messages_table, s, t, p)?;
                partition
                    .next_offset
                    .saturating_sub(u64::from(request.count))
                    .max(first)
            }
            PollingStrategy::Next => {
                let stored = match &consumer_key {
                    Some(key) => tx
                        .open_table(OFFSETS)
                        .map_err(storage)?
                        .get((s, t, p, key.as_str()))
                        .map_err(storage)?
                        .map(|v| v.value()),
                    None => None,
                };
                stored.map_or(0, |offset| offset + 1)
            }
            PollingStrategy::Timestamp(micros) => {
                timestamp_offset(&messages_table, s, t, p, partition, micros)?
            }
        };
        let mut messages = Vec::new();
        let mut bytes = 0usize;
        for row in messages_table
            .range((s, t, p, start)..(s, t, p, u64::MAX))
            .map_err(storage)?
            .take(request.count as usize)
        {
            let (key, value) = row.map_err(storage)?;
            let message = decode_message(key.value().3, value.value()).map_err(storage)?;
            bytes = bytes.saturating_add(message.size());
            // Reading stops at the byte budget: the rest is never loaded.
            if bytes > request.max_bytes && !messages.is_empty() {
                break;
            }
            messages.push(message);
        }
        drop(messages_table);
        drop(tx);

        self.answer(Read {
            at: (s, t, p),
            partition,
            epoch,
            messages,
            commit: consumer_key.filter(|_| request.auto_commit),
        })
    }

    /// [`Store::poll`] for a store in memory: the same strategies over [`MemoryLog`], read
    /// under the catalog's lock so a purge cannot swap the messages out from under the heads.
    ///
    /// [`MemoryLog`]: super::log::MemoryLog
    fn poll_memory(&self, request: PollMessages) -> BrokerResult<PolledMessages> {
        let log = self
            .log
            .as_ref()
            .ok_or_else(|| BrokerError::Storage("the store keeps no messages in memory".into()))?;
        let consumer_key = request.consumer.as_ref().map(Identifier::to_string);
        let p = request.partition_id;
        let (s, t, partition, epoch, messages) = {
            let catalog = self.read_catalog()?;
            let (s, t, partition) = catalog.partition(&request.topic, p)?;
            let epoch = catalog.epoch(s, t);
            // Offsets run from 0 without holes here (a purge starts again at 0).
            let start = match request.strategy {
                PollingStrategy::Offset(offset) => offset,
                PollingStrategy::First => 0,
                PollingStrategy::Last => partition
                    .next_offset
                    .saturating_sub(u64::from(request.count)),
                PollingStrategy::Next => match &consumer_key {
                    Some(key) => self
                        .db
                        .begin_read()
                        .map_err(storage)?
                        .open_table(OFFSETS)
                        .map_err(storage)?
                        .get((s, t, p, key.as_str()))
                        .map_err(storage)?
                        .map_or(0, |v| v.value() + 1),
                    None => 0,
                },
                PollingStrategy::Timestamp(micros) => {
                    log.timestamp_offset((s, t, p), &partition, micros)?
                }
            };
            let messages = log.read(
                (s, t, p),
                &partition,
                start,
                request.count,
                request.max_bytes,
            )?;
            (s, t, partition, epoch, messages)
        };
        self.answer(Read {
            at: (s, t, p),
            partition,
            epoch,
            messages,
            commit: consumer_key.filter(|_| request.auto_commit),
        })
    }

    /// A poll's answer, once its auto-commit (if any) has stored the offset of the last message
    /// it returns.
    fn answer(&self, read: Read) -> BrokerResult<PolledMessages> {
        let (s, t, p) = read.at;
        if let (Some(last), Some(key)) = (read.messages.last(), &read.commit) {
            self.store_offset(s, t, p, key, last.offset, Some(read.epoch))?;
        }
        Ok(PolledMessages {
            partition_id: p,
            current_offset: current_offset(&read.partition),
            messages: read.messages,
        })
    }

    /// Stores `consumer`'s offset unless the partition has changed under it: an auto-commit
    /// gives the topic's epoch its poll read at, and stores nothing if that has moved since.
    pub(super) fn store_offset(
        &self,
        s: u32,
        t: u32,
        p: u32,
        consumer: &str,
        offset: u64,
        read_at: Option<u64>,
    ) -> BrokerResult<()> {
        let _writer = self.writer.lock().map_err(poisoned("writer"))?;
        // Checked under the writer's lock, which every change of the catalog holds. The topic
        // may have been deleted since the caller looked it up (an offset for it would be an
        // orphan row), or purged: the messages an auto-committing poll read before a purge
        // are gone, and their offset would make the consumer skip as many new messages, even
        // once new ones have brought the head past it (hence the epoch). An auto-commit that
        // is dropped leaves those messages to be read again: at least once, never skipped.
        let stored = self
            .read_catalog()?
            .streams
            .get(&s)
            .and_then(|stream| stream.topics.get(&t))
            .filter(|topic| read_at.is_none_or(|epoch| epoch == topic.epoch))
            .and_then(|topic| topic.partitions.get(p as usize))
            .is_some_and(|head| offset < head.next_offset);
        if !stored {
            return Ok(());
        }
        let tx = self.db.begin_write().map_err(storage)?;
        tx.open_table(OFFSETS)
            .map_err(storage)?
            .insert((s, t, p, consumer), offset)
            .map_err(storage)?;
        tx.commit().map_err(storage)
    }

    /// Stores a consumer's offset after checking that it does not pass the newest message.
    pub(super) fn store_consumer_offset(
        &self,
        at: &ConsumerOffsetRef,
        offset: u64,
    ) -> BrokerResult<()> {
        let (s, t, partition) = self.read_catalog()?.partition(&at.topic, at.partition_id)?;
        if offset >= partition_info(at.partition_id, &partition).next_offset() {
            return Err(BrokerError::InvalidArgument {
                field: "offset",
                reason: format!(
                    "{offset} is beyond the newest message of partition {} ({})",
                    at.partition_id,
                    if partition.messages_count == 0 {
                        "it is empty".to_owned()
                    } else {
                        format!("offset {}", current_offset(&partition))
                    }
                ),
            });
        }
        self.store_offset(
            s,
            t,
            at.partition_id,
            &at.consumer.to_string(),
            offset,
            None,
        )
    }

    pub(super) fn get_consumer_offset(
        &self,
        at: &ConsumerOffsetRef,
    ) -> BrokerResult<ConsumerOffsetInfo> {
        let (s, t, partition) = self.read_catalog()?.partition(&at.topic, at.partition_id)?;
        let tx = self.db.begin_read().map_err(storage)?;
        let stored = tx
            .open_table(OFFSETS)
            .map_err(storage)?
            .get((s, t, at.partition_id, at.consumer.to_string().as_str()))
            .map_err(storage)?
            .map(|v| v.value());
        Ok(ConsumerOffsetInfo {
            partition_id: at.partition_id,
            current_offset: current_offset(&partition),
            stored_offset: stored,
        })
    }

    /// Fails with `ConsumerOffsetNotFound` when nothing is stored.
    pub(super) fn delete_consumer_offset(&self, at: &ConsumerOffsetRef) -> BrokerResult<()> {
        self.change(|catalog, tx| {
            let (s, t, _) = catalog.partition(&at.topic, at.partition_id)?;
            let consumer = at.consumer.to_string();
            let removed = tx
                .open_table(OFFSETS)
                .map_err(storage)?
                .remove((s, t, at.partition_id, consumer.as_str()))
                .map_err(storage)?
                .is_some();
            if removed {
                Ok(())
            } else {
                Err(BrokerError::ConsumerOffsetNotFound {
                    consumer: at.consumer.clone(),
                    partition_id: at.partition_id,
                })
            }
        })
    }
}

fn first_offset(
    table: &impl ReadableTable<(u32, u32, u32, u64), &'static [u8]>,
    s: u32,
    t: u32,
    p: u32,
) -> BrokerResult<u64> {
    Ok(table
        .range((s, t, p, 0)..(s, t, p, u64::MAX))
        .map_err(storage)?
        .next()
        .transpose()
        .map_err(storage)?
        .map_or(0, |(key, _)| key.value().3))
}

/// The first offset whose timestamp is at or after `micros`: a binary search, since a
/// partition's timestamps never decrease.
fn timestamp_offset(
    table: &impl ReadableTable<(u32, u32, u32, u64), &'static [u8]>,
    s: u32,
    t: u32,
    p: u32,
    partition: PartitionRecord,
    micros: u64,
) -> BrokerResult<u64> {
    let mut low = first_offset(table, s, t, p)?;
    let mut high = partition.next_offset;
    while low < high {
        let mid = low + (high - low) / 2;
        let timestamp = match table.get((s, t, p, mid)).map_err(storage)? {
            Some(value) => {
                let record = value.value();
                if record.len() < 9 {
                    return Err(BrokerError::Storage(format!("message {mid} is corrupt")));
                }
                let mut ts = &record[1..9];
                ts.get_u64_le()
            }
            None => return Err(BrokerError::Storage(format!("message {mid} is missing"))),
        };
        if timestamp < micros {
            low = mid + 1;
        } else {
            high = mid;
        }
    }
    Ok(low)
}
