//! The catalog: streams, topics and partition heads, mirrored in memory from the metadata
//! tables and rebuilt from them alone at start-up (no message is read), so restart time does not
//! grow with the data. A metadata change edits a copy and swaps it in only after its commit
//! ([`Store::change`]); the table edits those changes make are here too.

use std::{collections::BTreeMap, ops::Bound, sync::PoisonError};

use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use super::{
    Location, OpenError, Store,
    codec::{decode, encode},
    poisoned,
    schema::{
        FORMAT_VERSION, MESSAGES, META, OFFSETS, PARTITIONS, PartitionRecord, STREAMS,
        StreamRecord, TOPICS, TopicRecord, remove_range, storage,
    },
};
use crate::broker::{
    BrokerError, BrokerResult, ETag, Identifier, MAX_PARTITIONS, Name, PartitionInfo, StreamInfo,
    TopicInfo, TopicRef, now_micros,
};

#[derive(Debug, Clone)]
pub(super) struct StreamState {
    pub(super) record: StreamRecord,
    pub(super) topics: BTreeMap<u32, TopicState>,
}

#[derive(Debug, Clone)]
pub(super) struct TopicState {
    pub(super) record: TopicRecord,
    pub(super) partitions: Vec<PartitionRecord>,
    /// Where balanced partitioning sends the next batch; not persisted, as in Iggy.
    pub(super) next_balanced: u32,
    /// Moved by every change that empties or renumbers its partitions (a purge, partitions
    /// deleted or added): an auto-commit stores its offset only if this has not moved since its
    /// poll read, since an offset read before a purge would make the consumer skip as many new
    /// messages. Not persisted: no poll outlives the process.
    pub(super) epoch: u64,
}

/// The in-memory image of the metadata tables.
#[derive(Debug, Clone, Default)]
pub(super) struct Catalog {
    pub(super) next_stream_id: u32,
    pub(super) streams: BTreeMap<u32, StreamState>,
}

impl Catalog {
    pub(super) fn stream_id(&self, stream: &Identifier) -> BrokerResult<u32> {
        let found = match stream {
            Identifier::Id(id) => self.streams.contains_key(id).then_some(*id),
            Identifier::Name(name) => self
                .streams
                .iter()
                .find(|(_, s)| s.record.name == *name)
                .map(|(id, _)| *id),
        };
        found.ok_or_else(|| BrokerError::StreamNotFound(stream.clone()))
    }

    pub(super) fn stream(&self, stream: &Identifier) -> BrokerResult<(u32, &StreamState)> {
        let id = self.stream_id(stream)?;
        self.streams
            .get(&id)
            .map(|s| (id, s))
            .ok_or_else(|| BrokerError::StreamNotFound(stream.clone()))
    }

    pub(super) fn topic_ids(&self, at: &TopicRef) -> BrokerResult<(u32, u32)> {
        let (stream_id, stream) = self.stream(&at.stream)?;
        let found = match &at.topic {
            Identifier::Id(id) => stream.topics.contains_key(id).then_some(*id),
            Identifier::Name(name) => stream
                .topics
                .iter()
                .find(|(_, t)| t.record.name == *name)
                .map(|(id, _)| *id),
        };
        let topic_id = found.ok_or_else(|| BrokerError::TopicNotFound {
            stream: at.stream.clone(),
            topic: at.topic.clone(),
        })?;
        Ok((stream_id, topic_id))
    }

    pub(super) fn topic(&self, at: &TopicRef) -> BrokerResult<(u32, u32, &TopicState)> {
        let (s, t) = self.topic_ids(at)?;
        self.streams
            .get(&s)
            .and_then(|stream| stream.topics.get(&t))
            .map(|topic| (s, t, topic))
            .ok_or_else(|| BrokerError::TopicNotFound {
                stream: at.stream.clone(),
                topic: at.topic.clone(),
            })
    }

    /// The topic's [`TopicState::epoch`]; 0 for a topic gone (whose offsets are not stored).
    pub(super) fn epoch(&self, s: u32, t: u32) -> u64 {
        self.streams
            .get(&s)
            .and_then(|stream| stream.topics.get(&t))
            .map_or(0, |topic| topic.epoch)
    }

    pub(super) fn topic_mut(&mut self, s: u32, t: u32) -> BrokerResult<&mut TopicState> {
        self.streams
            .get_mut(&s)
            .and_then(|stream| stream.topics.get_mut(&t))
            .ok_or_else(|| BrokerError::Storage(format!("catalog lost topic {s}/{t}")))
    }

    pub(super) fn partition(
        &self,
        at: &TopicRef,
        partition_id: u32,
    ) -> BrokerResult<(u32, u32, PartitionRecord)> {
        let (s, t, topic) = self.topic(at)?;
        let partition = topic
            .partitions
            .get(partition_id as usize)
            .copied()
            .ok_or_else(|| BrokerError::PartitionNotFound {
                topic: at.topic.clone(),
                partition_id,
                partitions_count: partitions_count(topic),
            })?;
        Ok((s, t, partition))
    }

    /// The stream's id, once its etag is checked against `expected` (when given). Called in
    /// a [`Store::change`], so the check and the change it guards are one atomic step.
    pub(super) fn ensure_stream_etag(
        &self,
        stream: &Identifier,
        expected: Option<&ETag>,
    ) -> BrokerResult<u32> {
        let (id, state) = self.stream(stream)?;
        if expected.is_some() {
            self.stream_info(id, state, false)
                .etag()
                .ensure(expected, || format!("stream '{stream}'"))?;
        }
        Ok(id)
    }

    /// The topic's ids, once its etag is checked against `expected` (when given); as
    /// [`Catalog::ensure_stream_etag`].
    pub(super) fn ensure_topic_etag(
        &self,
        at: &TopicRef,
        expected: Option<&ETag>,
    ) -> BrokerResult<(u32, u32)> {
        let (s, t, topic) = self.topic(at)?;
        if expected.is_some() {
            topic_info(t, topic, false).etag().ensure(expected, || {
                format!("topic '{}' in stream '{}'", at.topic, at.stream)
            })?;
        }
        Ok((s, t))
    }

    pub(super) fn stream_info(
        &self,
        id: u32,
        stream: &StreamState,
        with_topics: bool,
    ) -> StreamInfo {
        let topics: Vec<TopicInfo> = stream
            .topics
            .iter()
            .map(|(topic_id, topic)| topic_info(*topic_id, topic, false))
            .collect();
        StreamInfo {
            id,
            name: stream.record.name.clone(),
            created_at_micros: stream.record.created_at,
            topics_count: u32::try_from(stream.topics.len()).unwrap_or(u32::MAX),
            size_bytes: topics.iter().map(|t| t.size_bytes).sum(),
            messages_count: topics.iter().map(|t| t.messages_count).sum(),
            topics: if with_topics { topics } else { Vec::new() },
        }
    }
}

pub(super) fn partitions_count(topic: &TopicState) -> u32 {
    u32::try_from(topic.partitions.len()).unwrap_or(u32::MAX)
}

pub(super) fn current_offset(partition: &PartitionRecord) -> u64 {
    partition.next_offset.saturating_sub(1)
}

/// The partition as the broker seam reports it.
pub(super) fn partition_info(id: u32, p: &PartitionRecord) -> PartitionInfo {
    PartitionInfo {
        id,
        created_at_micros: p.created_at,
        current_offset: current_offset(p),
        size_bytes: p.size_bytes,
        messages_count: p.messages_count,
    }
}

pub(super) fn topic_info(id: u32, topic: &TopicState, with_partitions: bool) -> TopicInfo {
    let partitions: Vec<PartitionInfo> = topic
        .partitions
        .iter()
        .enumerate()
        .map(|(index, p)| partition_info(u32::try_from(index).unwrap_or(u32::MAX), p))
        .collect();
    TopicInfo {
        id,
        name: topic.record.name.clone(),
        created_at_micros: topic.record.created_at,
        partitions_count: partitions_count(topic),
        message_expiry_micros: topic.record.message_expiry_micros,
        max_topic_size_bytes: topic.record.max_topic_size_bytes,
        compression: topic.record.compression,
        replication_factor: topic.record.replication_factor,
        size_bytes: partitions.iter().map(|p| p.size_bytes).sum(),
        messages_count: partitions.iter().map(|p| p.messages_count).sum(),
        partitions: if with_partitions {
            partitions
        } else {
            Vec::new()
        },
    }
}

pub(super) fn load_catalog(db: &Database, location: &Location) -> Result<Catalog, OpenError> {
    // Create every table once so readers never meet a missing one.
    let tx = db.begin_write().map_err(redb::Error::from)?;
    let version = {
        let mut meta = tx.open_table(META).map_err(redb::Error::from)?;
        let version = meta
            .get("format_version")
            .map_err(redb::Error::from)?
            .map(|v| v.value());
        if version.is_none() {
            meta.insert("format_version", FORMAT_VERSION)
                .map_err(redb::Error::from)?;
        }
        tx.open_table(STREAMS).map_err(redb::Error::from)?;
        tx.open_table(TOPICS).map_err(redb::Error::from)?;
        tx.open_table(PARTITIONS).map_err(redb::Error::from)?;
        tx.open_table(MESSAGES).map_err(redb::Error::from)?;
        tx.open_table(OFFSETS).map_err(redb::Error::from)?;
        version
    };
    tx.commit().map_err(redb::Error::from)?;
    if let Some(found) = version.filter(|v| *v != FORMAT_VERSION) {
        let path = match location {
            Location::Directory(dir) => dir.display().to_string(),
            Location::Memory => ":memory:".into(),
        };
        return Err(OpenError::Format { path, found });
    }

    let tx = db.begin_read().map_err(redb::Error::from)?;
    let mut catalog = Catalog {
        next_stream_id: tx
            .open_table(META)
            .map_err(redb::Error::from)?
            .get("next_stream_id")
            .map_err(redb::Error::from)?
            .map(|v| u32::try_from(v.value()).unwrap_or(u32::MAX))
            .unwrap_or(0),
        streams: BTreeMap::new(),
    };
    for row in tx
        .open_table(STREAMS)
        .map_err(redb::Error::from)?
        .iter()
        .map_err(redb::Error::from)?
    {
        let (id, value) = row.map_err(redb::Error::from)?;
        catalog.streams.insert(
            id.value(),
            StreamState {
                record: decode(value.value())?,
                topics: BTreeMap::new(),
            },
        );
    }
    for row in tx
        .open_table(TOPICS)
        .map_err(redb::Error::from)?
        .iter()
        .map_err(redb::Error::from)?
    {
        let (key, value) = row.map_err(redb::Error::from)?;
        let (s, t) = key.value();
        let record: TopicRecord = decode(value.value())?;
        if let Some(stream) = catalog.streams.get_mut(&s) {
            stream.topics.insert(
                t,
                TopicState {
                    record,
                    partitions: Vec::new(),
                    next_balanced: 0,
                    epoch: 0,
                },
            );
        }
    }
    // Keys are ordered (stream, topic, partition), so partitions arrive 0, 1, 2, ...
    for row in tx
        .open_table(PARTITIONS)
        .map_err(redb::Error::from)?
        .iter()
        .map_err(redb::Error::from)?
    {
        let (key, value) = row.map_err(redb::Error::from)?;
        let (s, t, _) = key.value();
        let record: PartitionRecord = decode(value.value())?;
        if let Some(topic) = catalog
            .streams
            .get_mut(&s)
            .and_then(|stream| stream.topics.get_mut(&t))
        {
            topic.partitions.push(record);
        }
    }
    Ok(catalog)
}

impl Store {
    pub(super) fn read_catalog(&self) -> BrokerResult<std::sync::RwLockReadGuard<'_, Catalog>> {
        self.catalog.read().map_err(poisoned("catalog"))
    }

    /// Runs one metadata change: `change` edits a copy of the catalog and writes the same
    /// change to the transaction; the copy replaces the catalog only after the commit, so a
    /// failed write leaves both as they were.
    pub(super) fn change<T>(
        &self,
        change: impl FnOnce(&mut Catalog, &WriteTransaction) -> BrokerResult<T>,
    ) -> BrokerResult<T> {
        let writer = self.writer.lock().map_err(poisoned("writer"))?;
        let mut next = self.read_catalog()?.clone();
        let tx = self.db.begin_write().map_err(storage)?;
        let result = change(&mut next, &tx)?;
        let Some(log) = &self.log else {
            tx.commit().map_err(storage)?;
            *self.catalog.write().map_err(poisoned("catalog"))? = next;
            return Ok(result);
        };
        // In memory a poll reads its consumer's offset from redb but its messages from the
        // log, under the catalog's read lock: the commit and the catalog must change as one
        // for it, or a NEXT poll across a purge would pair the purge's offsets with the old
        // messages. On disk a poll reads both from one redb snapshot, and a commit's fsync
        // holds no reader up.
        let mut catalog = self.catalog.write().map_err(poisoned("catalog"))?;
        tx.commit().map_err(storage)?;
        *catalog = next;
        drop(catalog);
        // The change is committed and in place: a poisoned lock (whose catalog is whole, as
        // it is only ever replaced) must not report it as failed.
        let removed = log.keep(&self.catalog.read().unwrap_or_else(PoisonError::into_inner));
        drop(writer);
        drop(removed);
        Ok(result)
    }
}

/// Consumer-offset keys end in a string, so "every key of this topic" is bounded by the first
/// key of the next topic rather than by a largest string.
fn offsets_after_topic(s: u32, t: u32) -> Bound<(u32, u32, u32, &'static str)> {
    match (t.checked_add(1), s.checked_add(1)) {
        (Some(next), _) => Bound::Excluded((s, next, 0, "")),
        (None, Some(next)) => Bound::Excluded((next, 0, 0, "")),
        (None, None) => Bound::Unbounded,
    }
}

pub(super) fn remove_topic_data(tx: &WriteTransaction, s: u32, t: u32) -> BrokerResult<()> {
    remove_range!(tx, MESSAGES, (s, t, 0, 0)..=(s, t, u32::MAX, u64::MAX));
    remove_range!(
        tx,
        OFFSETS,
        (Bound::Included((s, t, 0, "")), offsets_after_topic(s, t))
    );
    Ok(())
}

pub(super) fn remove_partition_data(
    tx: &WriteTransaction,
    s: u32,
    t: u32,
    p: u32,
) -> BrokerResult<()> {
    remove_range!(tx, MESSAGES, (s, t, p, 0)..=(s, t, p, u64::MAX));
    // p < MAX_PARTITIONS, so p + 1 cannot overflow.
    remove_range!(tx, OFFSETS, (s, t, p, "")..(s, t, p + 1, ""));
    Ok(())
}

pub(super) fn purge_topic_data(
    tx: &WriteTransaction,
    s: u32,
    t: u32,
    topic: &mut TopicState,
) -> BrokerResult<()> {
    remove_topic_data(tx, s, t)?;
    topic.epoch += 1;
    let mut partitions = tx.open_table(PARTITIONS).map_err(storage)?;
    for (index, partition) in topic.partitions.iter_mut().enumerate() {
        *partition = PartitionRecord {
            created_at: partition.created_at,
            ..PartitionRecord::default()
        };
        let p = u32::try_from(index).unwrap_or(u32::MAX);
        partitions
            .insert((s, t, p), encode(partition)?.as_slice())
            .map_err(storage)?;
    }
    Ok(())
}

pub(super) fn write_stream(
    tx: &WriteTransaction,
    id: u32,
    record: &StreamRecord,
) -> BrokerResult<()> {
    tx.open_table(STREAMS)
        .map_err(storage)?
        .insert(id, encode(record)?.as_slice())
        .map_err(storage)?;
    Ok(())
}

pub(super) fn write_topic(
    tx: &WriteTransaction,
    s: u32,
    t: u32,
    record: &TopicRecord,
) -> BrokerResult<()> {
    tx.open_table(TOPICS)
        .map_err(storage)?
        .insert((s, t), encode(record)?.as_slice())
        .map_err(storage)?;
    Ok(())
}

pub(super) fn add_partitions(
    tx: &WriteTransaction,
    s: u32,
    t: u32,
    topic: &mut TopicState,
    count: u32,
) -> BrokerResult<()> {
    let existing = partitions_count(topic);
    if count == 0 || existing.saturating_add(count) > MAX_PARTITIONS {
        return Err(BrokerError::InvalidArgument {
            field: "partitions_count",
            reason: format!(
                "must be between 1 and {} (the topic has {existing} of at most {MAX_PARTITIONS})",
                MAX_PARTITIONS.saturating_sub(existing)
            ),
        });
    }
    let now = now_micros();
    topic.epoch += 1;
    let mut table = tx.open_table(PARTITIONS).map_err(storage)?;
    for p in existing..existing + count {
        let record = PartitionRecord {
            created_at: now,
            ..PartitionRecord::default()
        };
        table
            .insert((s, t, p), encode(&record)?.as_slice())
            .map_err(storage)?;
        topic.partitions.push(record);
    }
    Ok(())
}

pub(super) fn ensure_unique_stream(
    catalog: &Catalog,
    name: &Name,
    except: Option<u32>,
) -> BrokerResult<()> {
    let taken = catalog
        .streams
        .iter()
        .any(|(id, s)| Some(*id) != except && s.record.name == name.as_str());
    if taken {
        return Err(BrokerError::StreamAlreadyExists(name.to_string()));
    }
    Ok(())
}

pub(super) fn ensure_unique_topic(
    stream: &StreamState,
    at: &Identifier,
    name: &Name,
    except: Option<u32>,
) -> BrokerResult<()> {
    let taken = stream
        .topics
        .iter()
        .any(|(id, t)| Some(*id) != except && t.record.name == name.as_str());
    if taken {
        return Err(BrokerError::TopicAlreadyExists {
            stream: at.clone(),
            topic: name.to_string(),
        });
    }
    Ok(())
}

pub(super) fn stream_mut(catalog: &mut Catalog, id: u32) -> BrokerResult<&mut StreamState> {
    catalog
        .streams
        .get_mut(&id)
        .ok_or_else(|| BrokerError::Storage(format!("catalog lost stream {id}")))
}
