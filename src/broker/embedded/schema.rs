//! The redb file's layout: its tables, the records stored in them, and the on-disk format
//! version that start-up checks.
//!
//! Everything that knows a table's key or value type lives here, so a change to the layout is a
//! change to this file (and to `FORMAT_VERSION`).

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::broker::{BrokerError, Compression};

/// Counters (`next_stream_id`) and the on-disk format version.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// stream id → [`StreamRecord`].
pub(super) const STREAMS: TableDefinition<u32, &[u8]> = TableDefinition::new("streams");
/// (stream, topic) → [`TopicRecord`].
pub(super) const TOPICS: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("topics");
/// (stream, topic, partition) → [`PartitionRecord`]; written in the same transaction as the
/// messages it counts, so the head offset can never disagree with the log.
pub(super) const PARTITIONS: TableDefinition<(u32, u32, u32), &[u8]> =
    TableDefinition::new("partitions");
/// (stream, topic, partition, offset) → encoded message (see `codec::encode_message`).
pub(super) const MESSAGES: TableDefinition<(u32, u32, u32, u64), &[u8]> =
    TableDefinition::new("messages");
/// (stream, topic, partition, consumer) → last processed offset.
pub(super) const OFFSETS: TableDefinition<(u32, u32, u32, &str), u64> =
    TableDefinition::new("offsets");

/// idempotency key (a 32-byte digest of identity and `Idempotency-Key`) → the request's
/// 32-byte fingerprint and its expiry (microseconds, big-endian), written in the transaction of
/// the batch it stands for. Created when first written: older stores simply lack it.
pub(super) const IDEMPOTENCY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency");
/// (expiry, idempotency key) → (): expired records are pruned from here, a batch at a time.
pub(super) const IDEMPOTENCY_EXPIRY: TableDefinition<(u64, &[u8]), ()> =
    TableDefinition::new("idempotency_expiry");

pub(super) const FORMAT_VERSION: u64 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StreamRecord {
    pub(super) name: String,
    pub(super) created_at: u64,
    pub(super) next_topic_id: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TopicRecord {
    pub(super) name: String,
    pub(super) created_at: u64,
    pub(super) message_expiry_micros: Option<u64>,
    pub(super) max_topic_size_bytes: Option<u64>,
    pub(super) compression: Compression,
    pub(super) replication_factor: u8,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct PartitionRecord {
    pub(super) created_at: u64,
    /// Offset the next message gets; also the number of messages since the last purge.
    pub(super) next_offset: u64,
    pub(super) size_bytes: u64,
    pub(super) messages_count: u64,
    /// Timestamp of the newest message; new timestamps never go below it, so a partition's
    /// timestamps are ordered and a TIMESTAMP poll can binary-search them.
    pub(super) last_timestamp: u64,
}

pub(super) fn storage(err: impl Into<redb::Error>) -> BrokerError {
    BrokerError::Storage(err.into().to_string())
}

/// Deletes a key range of one table.
macro_rules! remove_range {
    ($tx:expr, $table:expr, $range:expr) => {{
        let mut table = $tx.open_table($table).map_err(storage)?;
        table.retain_in($range, |_, _| false).map_err(storage)?;
    }};
}
pub(super) use remove_range;
