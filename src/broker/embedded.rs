//! The embedded backend: a durable store on local disk with Apache Iggy's semantics, so the
//! gateway runs and is tested with no Iggy server.
//!
//! Storage is one [redb](https://docs.rs/redb) file (`DATA_DIR/gateway.redb`): ACID write
//! transactions with copy-on-write pages and an fsync at commit, so an acknowledged batch
//! survives `kill -9` and a crash never leaves half a batch visible. The catalog (streams,
//! topics, partition heads) is also held in memory, rebuilt from its tables at start-up without
//! reading any message, so restart time does not grow with the data.

mod catalog;
mod codec;
mod log;
mod memory;
mod read;
mod schema;
mod writer;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError, RwLock},
};

use async_trait::async_trait;
use redb::Database;
use tokio::sync::{mpsc, oneshot, watch};

use self::{
    catalog::{
        Catalog, StreamState, TopicState, add_partitions, ensure_unique_stream,
        ensure_unique_topic, load_catalog, partitions_count, purge_topic_data,
        remove_partition_data, remove_topic_data, stream_mut, topic_info, write_stream,
        write_topic,
    },
    schema::{
        FORMAT_VERSION, META, PARTITIONS, STREAMS, StreamRecord, TOPICS, TopicRecord, remove_range,
        storage,
    },
    writer::{PendingSend, QUEUE_DEPTH, run_writer},
};
use super::{
    Broker, BrokerError, BrokerResult, ConsumerOffsetInfo, ConsumerOffsetRef, CreateTopic,
    Durability, ETag, Identifier, Name, PollMessages, PolledMessages, SendMessages, Sent,
    StreamInfo, TopicInfo, TopicRef, UpdateStream, UpdateTopic, now_micros,
};

/// redb's page cache. Its default (a gigabyte) lets the gateway's memory grow with the data it
/// has written; a bounded cache keeps it flat. Reads of cold data come from the OS page cache.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `DATA_DIR/gateway.redb`.
    Directory(std::path::PathBuf),
    /// Nothing on disk; for tests and throw-away runs (`DATA_DIR=:memory:`).
    Memory,
}

/// Why the store could not be opened; start-up turns it into exit code 69.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use data directory {path}: {source}")]
    Directory {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open store {path}: {source}")]
    Database {
        path: String,
        source: redb::DatabaseError,
    },
    #[error("cannot start the store's writer thread: {0}")]
    Writer(std::io::Error),
    #[error("cannot read store: {0}")]
    Read(#[from] redb::Error),
    #[error("store {path} has format version {found}; this build reads version {FORMAT_VERSION}")]
    Format { path: String, found: u64 },
}

pub struct EmbeddedBroker {
    inner: Arc<Store>,
    available: watch::Sender<bool>,
    description: String,
    /// `/stats` must not promise fsync for a store that keeps nothing.
    durability: Durability,
    /// Sends go to one writer thread, which commits whatever has queued up since its last
    /// commit in one transaction (group commit): concurrent callers share a commit (and its
    /// fsync) instead of taking turns on the writer lock. `None` only while dropping.
    queue: Option<mpsc::Sender<PendingSend>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EmbeddedBroker {
    /// Closing the queue lets the writer finish what is queued; joining it means the store is
    /// closed (and its file lock released) when the broker is gone.
    fn drop(&mut self) {
        self.queue.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

struct Store {
    db: Database,
    /// Read often, changed only after a commit, so readers never see uncommitted state.
    catalog: RwLock<Catalog>,
    /// Serialises writers: each one reads the catalog, commits, then publishes the change;
    /// redb allows one write transaction at a time anyway.
    writer: Mutex<()>,
    /// Append counters of the partitions subscribers follow, created when first asked for and
    /// moved after each commit that appends there: a write wakes only its own partition's
    /// followers.
    heads: Mutex<HashMap<(u32, u32, u32), watch::Sender<u64>>>,
    /// Where the messages are when the store keeps nothing; `None` keeps them in redb.
    log: Option<log::MemoryLog>,
}

/// The error for a lock that a panicking thread left poisoned: the call fails as a storage
/// fault. One helper, so every lock of the store reports it in the same words.
fn poisoned<T>(lock: &'static str) -> impl FnOnce(PoisonError<T>) -> BrokerError {
    move |_| BrokerError::Storage(format!("{lock} lock poisoned"))
}

impl EmbeddedBroker {
    pub fn open(location: &Location) -> Result<Self, OpenError> {
        let (db, description) = match location {
            Location::Memory => {
                let db = Database::builder()
                    .create_with_backend(memory::ChunkedMemory::default())
                    .map_err(|source| OpenError::Database {
                        path: ":memory:".into(),
                        source,
                    })?;
                (
                    db,
                    "embedded backend, in memory (nothing is kept)".to_owned(),
                )
            }
            Location::Directory(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| OpenError::Directory {
                    path: dir.display().to_string(),
                    source,
                })?;
                let file = dir.join("gateway.redb");
                let db = Database::builder()
                    .set_cache_size(CACHE_BYTES)
                    .create(&file)
                    .map_err(|source| OpenError::Database {
                        path: file.display().to_string(),
                        source,
                    })?;
                (db, format!("embedded backend, data in {}", file.display()))
            }
        };
        let catalog = load_catalog(&db, location)?;
        let (available, _) = watch::channel(true);
        let inner = Arc::new(Store {
            db,
            catalog: RwLock::new(catalog),
            writer: Mutex::new(()),
            heads: Mutex::new(HashMap::new()),
            log: (*location == Location::Memory).then(log::MemoryLog::default),
        });
        let (queue, pending) = mpsc::channel(QUEUE_DEPTH);
        let store = Arc::clone(&inner);
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run_writer(store, pending))
            .map_err(OpenError::Writer)?;
        let durability = match location {
            Location::Memory => Durability::InMemory,
            Location::Directory(_) => Durability::FsyncedBeforeAck,
        };
        Ok(Self {
            inner,
            available,
            description,
            durability,
            queue: Some(queue),
            writer: Some(writer),
        })
    }

    /// Runs blocking store work off the async runtime.
    async fn blocking<T, F>(&self, work: F) -> BrokerResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> BrokerResult<T> + Send + 'static,
    {
        let store = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|err| BrokerError::Storage(format!("store task failed: {err}")))?
    }
}

#[async_trait]
impl Broker for EmbeddedBroker {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn durability(&self) -> Durability {
        self.durability.clone()
    }

    fn reuses_topic_ids(&self) -> bool {
        false
    }

    fn availability(&self) -> watch::Receiver<bool> {
        self.available.subscribe()
    }

    fn partition_appends(
        &self,
        topic: &TopicRef,
        partition_id: u32,
    ) -> Option<watch::Receiver<u64>> {
        let (s, t, _) = self
            .inner
            .read_catalog()
            .ok()?
            .partition(topic, partition_id)
            .ok()?;
        let mut watched = self.inner.heads.lock().ok()?;
        // Partitions nobody follows any more are forgotten here, so the map stays as small as
        // the set of followed partitions.
        watched.retain(|_, appends| appends.receiver_count() > 0);
        Some(
            watched
                .entry((s, t, partition_id))
                .or_insert_with(|| watch::channel(0).0)
                .subscribe(),
        )
    }

    async fn create_stream(&self, name: Name) -> BrokerResult<StreamInfo> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                ensure_unique_stream(catalog, &name, None)?;
                let id = catalog.next_stream_id;
                let record = StreamRecord {
                    name: name.to_string(),
                    created_at: now_micros(),
                    next_topic_id: 0,
                };
                write_stream(tx, id, &record)?;
                catalog.next_stream_id = id
                    .checked_add(1)
                    .ok_or_else(|| BrokerError::Storage("stream ids exhausted".into()))?;
                tx.open_table(META)
                    .map_err(storage)?
                    .insert("next_stream_id", u64::from(catalog.next_stream_id))
                    .map_err(storage)?;
                let state = StreamState {
                    record,
                    topics: BTreeMap::new(),
                };
                let info = catalog.stream_info(id, &state, true);
                catalog.streams.insert(id, state);
                Ok(info)
            })
        })
        .await
    }

    async fn get_stream(&self, stream: Identifier) -> BrokerResult<StreamInfo> {
        let catalog = self.inner.read_catalog()?;
        let (id, state) = catalog.stream(&stream)?;
        Ok(catalog.stream_info(id, state, true))
    }

    async fn list_streams(&self) -> BrokerResult<Vec<StreamInfo>> {
        let catalog = self.inner.read_catalog()?;
        Ok(catalog
            .streams
            .iter()
            .map(|(id, state)| catalog.stream_info(*id, state, false))
            .collect())
    }

    async fn update_stream(&self, request: UpdateStream) -> BrokerResult<StreamInfo> {
        let UpdateStream {
            stream,
            name,
            expected,
        } = request;
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                // Checked under the writer lock that the change holds: nothing can change the
                // stream between the check and the write.
                let id = catalog.ensure_stream_etag(&stream, expected.as_ref())?;
                ensure_unique_stream(catalog, &name, Some(id))?;
                let state = stream_mut(catalog, id)?;
                state.record.name = name.to_string();
                write_stream(tx, id, &state.record)?;
                let state = state.clone();
                Ok(catalog.stream_info(id, &state, true))
            })
        })
        .await
    }

    async fn delete_stream(&self, stream: Identifier, expected: Option<ETag>) -> BrokerResult<()> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let id = catalog.ensure_stream_etag(&stream, expected.as_ref())?;
                tx.open_table(STREAMS)
                    .map_err(storage)?
                    .remove(id)
                    .map_err(storage)?;
                remove_range!(tx, TOPICS, (id, 0)..=(id, u32::MAX));
                remove_range!(tx, PARTITIONS, (id, 0, 0)..=(id, u32::MAX, u32::MAX));
                let topic_ids: Vec<u32> = catalog
                    .streams
                    .get(&id)
                    .map(|s| s.topics.keys().copied().collect())
                    .unwrap_or_default();
                for t in topic_ids {
                    remove_topic_data(tx, id, t)?;
                }
                catalog.streams.remove(&id);
                Ok(())
            })
        })
        .await
    }

    async fn purge_stream(&self, stream: Identifier) -> BrokerResult<()> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let id = catalog.stream_id(&stream)?;
                for (t, topic) in stream_mut(catalog, id)?.topics.iter_mut() {
                    purge_topic_data(tx, id, *t, topic)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn create_topic(&self, request: CreateTopic) -> BrokerResult<TopicInfo> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let s = catalog.stream_id(&request.stream)?;
                let stream = stream_mut(catalog, s)?;
                ensure_unique_topic(stream, &request.stream, &request.name, None)?;
                let t = stream.record.next_topic_id;
                stream.record.next_topic_id = t
                    .checked_add(1)
                    .ok_or_else(|| BrokerError::Storage("topic ids exhausted".into()))?;
                write_stream(tx, s, &stream.record)?;
                let mut topic = TopicState {
                    record: TopicRecord {
                        name: request.name.to_string(),
                        created_at: now_micros(),
                        message_expiry_micros: request.message_expiry_micros,
                        max_topic_size_bytes: request.max_topic_size_bytes,
                        compression: request.compression,
                        replication_factor: request.replication_factor,
                    },
                    partitions: Vec::new(),
                    next_balanced: 0,
                    epoch: 0,
                };
                write_topic(tx, s, t, &topic.record)?;
                add_partitions(tx, s, t, &mut topic, request.partitions_count)?;
                let info = topic_info(t, &topic, true);
                stream.topics.insert(t, topic);
                Ok(info)
            })
        })
        .await
    }

    async fn get_topic(&self, topic: TopicRef) -> BrokerResult<TopicInfo> {
        let catalog = self.inner.read_catalog()?;
        let (_, t, state) = catalog.topic(&topic)?;
        Ok(topic_info(t, state, true))
    }

    async fn list_topics(&self, stream: Identifier) -> BrokerResult<Vec<TopicInfo>> {
        let catalog = self.inner.read_catalog()?;
        let (_, state) = catalog.stream(&stream)?;
        Ok(state
            .topics
            .iter()
            .map(|(id, topic)| topic_info(*id, topic, false))
            .collect())
    }

    async fn update_topic(&self, request: UpdateTopic) -> BrokerResult<TopicInfo> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let (s, t) =
                    catalog.ensure_topic_etag(&request.topic, request.expected.as_ref())?;
                if let Some(name) = &request.name {
                    let stream = stream_mut(catalog, s)?;
                    ensure_unique_topic(stream, &request.topic.stream, name, Some(t))?;
                }
                let topic = catalog.topic_mut(s, t)?;
                let record = &mut topic.record;
                if let Some(name) = request.name {
                    record.name = name.to_string();
                }
                if let Some(expiry) = request.message_expiry_micros {
                    record.message_expiry_micros = expiry;
                }
                if let Some(max) = request.max_topic_size_bytes {
                    record.max_topic_size_bytes = max;
                }
                if let Some(compression) = request.compression {
                    record.compression = compression;
                }
                if let Some(factor) = request.replication_factor {
                    record.replication_factor = factor;
                }
                write_topic(tx, s, t, &topic.record)?;
                Ok(topic_info(t, topic, true))
            })
        })
        .await
    }

    async fn delete_topic(&self, topic: TopicRef, expected: Option<ETag>) -> BrokerResult<()> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let (s, t) = catalog.ensure_topic_etag(&topic, expected.as_ref())?;
                tx.open_table(TOPICS)
                    .map_err(storage)?
                    .remove((s, t))
                    .map_err(storage)?;
                remove_range!(tx, PARTITIONS, (s, t, 0)..=(s, t, u32::MAX));
                remove_topic_data(tx, s, t)?;
                stream_mut(catalog, s)?.topics.remove(&t);
                Ok(())
            })
        })
        .await
    }

    async fn purge_topic(&self, topic: TopicRef) -> BrokerResult<()> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let (s, t) = catalog.topic_ids(&topic)?;
                purge_topic_data(tx, s, t, catalog.topic_mut(s, t)?)
            })
        })
        .await
    }

    async fn create_partitions(&self, topic: TopicRef, count: u32) -> BrokerResult<TopicInfo> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let (s, t) = catalog.topic_ids(&topic)?;
                let state = catalog.topic_mut(s, t)?;
                add_partitions(tx, s, t, state, count)?;
                Ok(topic_info(t, state, true))
            })
        })
        .await
    }

    async fn delete_partitions(&self, topic: TopicRef, count: u32) -> BrokerResult<TopicInfo> {
        self.blocking(move |store| {
            store.change(|catalog, tx| {
                let (s, t) = catalog.topic_ids(&topic)?;
                let state = catalog.topic_mut(s, t)?;
                let existing = partitions_count(state);
                if count == 0 || count >= existing {
                    return Err(BrokerError::InvalidArgument {
                        field: "partitions_count",
                        reason: format!(
                            "must be between 1 and {} (the topic has {existing} and keeps at least one)",
                            existing.saturating_sub(1)
                        ),
                    });
                }
                let mut table = tx.open_table(PARTITIONS).map_err(storage)?;
                for p in existing - count..existing {
                    table.remove((s, t, p)).map_err(storage)?;
                    remove_partition_data(tx, s, t, p)?;
                }
                drop(table);
                state.partitions.truncate((existing - count) as usize);
                state.epoch += 1;
                state.next_balanced %= partitions_count(state).max(1);
                Ok(topic_info(t, state, true))
            })
        })
        .await
    }

    async fn send_messages(&self, request: SendMessages) -> BrokerResult<Sent> {
        // In memory, a send without an idempotency record writes nothing to redb and costs a few
        // microseconds under the writer's lock: committed on the caller's task, it skips the two
        // thread hand-offs that going through the writer thread costs. A keyed send still goes
        // there, as its record is written in a redb transaction.
        if self.inner.log.is_some() && request.idempotency.is_none() {
            let mut results = self.inner.commit_sends(std::slice::from_ref(&request))?;
            return results
                .pop()
                .unwrap_or_else(|| Err(BrokerError::Storage("a send went unanswered".into())));
        }
        let stopped = || BrokerError::Storage("the store's writer has stopped".into());
        let queue = self.queue.as_ref().ok_or_else(stopped)?;
        let (done, reply) = oneshot::channel();
        queue
            .send(PendingSend { request, done })
            .await
            .map_err(|_| stopped())?;
        reply.await.map_err(|_| stopped())?
    }

    async fn poll_messages(&self, request: PollMessages) -> BrokerResult<PolledMessages> {
        self.blocking(move |store| store.poll(request)).await
    }

    async fn store_consumer_offset(&self, at: ConsumerOffsetRef, offset: u64) -> BrokerResult<()> {
        self.blocking(move |store| store.store_consumer_offset(&at, offset))
            .await
    }

    async fn get_consumer_offset(&self, at: ConsumerOffsetRef) -> BrokerResult<ConsumerOffsetInfo> {
        self.blocking(move |store| store.get_consumer_offset(&at))
            .await
    }

    async fn delete_consumer_offset(&self, at: ConsumerOffsetRef) -> BrokerResult<()> {
        self.blocking(move |store| store.delete_consumer_offset(&at))
            .await
    }
}

#[cfg(test)]
mod tests;
