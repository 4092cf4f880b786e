//! The writer thread and its group commit: sends queue up for one thread, which commits
//! everything queued since its last commit in one transaction, so concurrent callers share a
//! commit (and its fsync). Each caller is answered only after that commit; the partition heads
//! reach the catalog, and the append signals fire, only then too.

use std::{collections::HashMap, sync::Arc};

// Partition numbers from our own catalog: no caller chooses what these maps hash.
use foldhash::fast::RandomState as Fast;
use redb::ReadableTable;
use tokio::sync::{mpsc, oneshot};

use super::{
    Store,
    catalog::partitions_count,
    codec::{encode, encode_message},
    poisoned,
    schema::{IDEMPOTENCY, IDEMPOTENCY_EXPIRY, MESSAGES, PARTITIONS, PartitionRecord, storage},
};
use crate::broker::{
    BrokerError, BrokerResult, IdempotencyRecord, NewMessage, Partitioning, SendMessages, Sent,
    now_micros, partition_for_key,
};

/// Expired idempotency records pruned per commit at most, so pruning never holds a commit up.
const PRUNE_BATCH: usize = 1024;

/// A stored idempotency record: the fingerprint, then the expiry (big-endian micros).
fn encode_record(record: &IdempotencyRecord) -> [u8; 40] {
    let mut bytes = [0u8; 40];
    bytes[..32].copy_from_slice(&record.fingerprint);
    bytes[32..].copy_from_slice(&record.expires_at_micros.to_be_bytes());
    bytes
}

fn decode_record(bytes: &[u8]) -> Option<([u8; 32], u64)> {
    let fingerprint: [u8; 32] = bytes.get(..32)?.try_into().ok()?;
    let expires: [u8; 8] = bytes.get(32..40)?.try_into().ok()?;
    Some((fingerprint, u64::from_be_bytes(expires)))
}

/// One send waiting for the writer thread, and where its answer goes once committed.
pub(super) struct PendingSend {
    pub(super) request: SendMessages,
    pub(super) done: oneshot::Sender<BrokerResult<Sent>>,
}

impl PendingSend {
    fn payload_bytes(&self) -> usize {
        // Headers count too: a group of header-heavy sends must stay as small as any other.
        self.request.messages.iter().map(NewMessage::size).sum()
    }
}

/// Sends waiting for the writer; callers wait (backpressure) when it is full.
pub(super) const QUEUE_DEPTH: usize = 1024;
/// Bounds on one group, so one transaction (and the memory it holds) stays small.
const MAX_GROUP_SENDS: usize = 256;
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// Removes up to [`PRUNE_BATCH`] records that expired by `now`; a key recorded again since
/// (with a later expiry) keeps its new record.
fn prune_expired(
    idempotency: &mut redb::Table<&[u8], &[u8]>,
    expiry: &mut redb::Table<(u64, &[u8]), ()>,
    now: u64,
) -> BrokerResult<()> {
    let expired: Vec<(u64, Vec<u8>)> = expiry
        .range::<(u64, &[u8])>(..(now, &[][..]))
        .map_err(storage)?
        .take(PRUNE_BATCH)
        .filter_map(Result::ok)
        .map(|(key, _)| {
            let (at, digest) = key.value();
            (at, digest.to_vec())
        })
        .collect();
    for (at, digest) in expired {
        expiry.remove((at, &digest[..])).map_err(storage)?;
        let current = idempotency
            .get(&digest[..])
            .map_err(storage)?
            .and_then(|value| decode_record(value.value()));
        if current.is_some_and(|(_, expires)| expires == at) {
            idempotency.remove(&digest[..]).map_err(storage)?;
        }
    }
    Ok(())
}

/// The writer thread: takes the first waiting send, adds whatever else is already queued (no
/// waiting for more), commits the group, and repeats until every sender is gone.
pub(super) fn run_writer(store: Arc<Store>, mut queue: mpsc::Receiver<PendingSend>) {
    while let Some(first) = queue.blocking_recv() {
        let mut bytes = first.payload_bytes();
        let mut group = vec![first];
        while group.len() < MAX_GROUP_SENDS && bytes < MAX_GROUP_BYTES {
            match queue.try_recv() {
                Ok(next) => {
                    bytes += next.payload_bytes();
                    group.push(next);
                }
                Err(_) => break,
            }
        }
        store.send_group(group);
    }
}

impl Store {
    /// Commits a group of sends in one write transaction and answers each of them. A send the
    /// catalog refuses (unknown topic or partition, bad headers) gets its own error and the
    /// others go ahead; a storage failure fails the whole group, with nothing written.
    pub(super) fn send_group(&self, group: Vec<PendingSend>) {
        // A caller that gave up while its send waited (its deadline passed, it disconnected)
        // was told nothing was stored: drop the send, so a retry does not store it twice.
        let (requests, replies): (Vec<_>, Vec<_>) = group
            .into_iter()
            .filter(|pending| !pending.done.is_closed())
            .map(|p| (p.request, p.done))
            .unzip();
        if requests.is_empty() {
            return;
        }
        match self.commit_sends(&requests) {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(err) => {
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }

    pub(super) fn commit_sends(
        &self,
        requests: &[SendMessages],
    ) -> BrokerResult<Vec<BrokerResult<Sent>>> {
        let _writer = self.writer.lock().map_err(poisoned("writer"))?;
        let any_keyed = requests.iter().any(|r| r.idempotency.is_some());
        // Begun first: a keyed send's record is read in the transaction that would write it. In
        // memory, a group without a keyed send has nothing for redb: no transaction at all.
        let tx = if self.log.is_none() || any_keyed {
            Some(self.db.begin_write().map_err(storage)?)
        } else {
            None
        };
        // Keys written by this group so far, with their fingerprints.
        let mut keyed: HashMap<[u8; 32], [u8; 32]> = HashMap::new();
        let mut records: Vec<IdempotencyRecord> = Vec::new();
        // Partition heads and balanced cursors as this group moves them; the catalog takes
        // them only after the commit, so readers never see offsets that are not stored.
        let mut heads: HashMap<(u32, u32, u32), PartitionRecord, Fast> = HashMap::default();
        let mut balanced: HashMap<(u32, u32), u32, Fast> = HashMap::default();
        let mut writes = Vec::with_capacity(requests.len());
        let mut results = Vec::with_capacity(requests.len());
        let now = now_micros();
        {
            let catalog = self.read_catalog()?;
            // Opened only for a group with a keyed send: a table opened costs its lookup and
            // close in every commit.
            let idempotency = match &tx {
                Some(tx) if any_keyed => Some(tx.open_table(IDEMPOTENCY).map_err(storage)?),
                _ => None,
            };
            for request in requests {
                // A key seen before (in the store and not expired, or earlier in this group):
                // the same request is answered as stored already, another one is refused.
                if let Some(record) = &request.idempotency
                    && let Some(idempotency) = &idempotency
                {
                    let earlier = match keyed.get(&record.key) {
                        Some(fingerprint) => Some(*fingerprint),
                        None => idempotency
                            .get(&record.key[..])
                            .map_err(storage)?
                            .and_then(|value| decode_record(value.value()))
                            .filter(|(_, expires)| *expires > now)
                            .map(|(fingerprint, _)| fingerprint),
                    };
                    match earlier {
                        Some(fingerprint) if fingerprint == record.fingerprint => {
                            results.push(Ok(Sent::Replayed));
                            continue;
                        }
                        Some(_) => {
                            results.push(Err(BrokerError::IdempotencyKeyReused));
                            continue;
                        }
                        None => {}
                    }
                }
                let planned = (|| {
                    let (s, t, topic) = catalog.topic(&request.topic)?;
                    let count = partitions_count(topic).max(1);
                    let p = match &request.partitioning {
                        Partitioning::Balanced => {
                            *balanced.entry((s, t)).or_insert(topic.next_balanced) % count
                        }
                        Partitioning::PartitionId(id) => *id,
                        Partitioning::Key(key) => partition_for_key(key, count),
                    };
                    let (_, _, stored) = catalog.partition(&request.topic, p)?;
                    let head = heads.entry((s, t, p)).or_insert(stored);
                    let timestamp = now.max(head.last_timestamp);
                    let records = request
                        .messages
                        .iter()
                        .map(|message| encode_message(timestamp, message))
                        .collect::<BrokerResult<Vec<_>>>()?;
                    let first = head.next_offset;
                    head.next_offset += records.len() as u64;
                    head.messages_count += records.len() as u64;
                    head.size_bytes += records.iter().map(|r| r.len() as u64).sum::<u64>();
                    head.last_timestamp = timestamp;
                    if request.partitioning == Partitioning::Balanced {
                        balanced.insert((s, t), (p + 1) % count);
                    }
                    Ok(((s, t, p), first, records))
                })();
                match planned {
                    Ok(write) => {
                        writes.push(write);
                        if let Some(record) = request.idempotency {
                            keyed.insert(record.key, record.fingerprint);
                            records.push(record);
                        }
                        results.push(Ok(Sent::Stored));
                    }
                    Err(err) => results.push(Err(err)),
                }
            }
        }
        if writes.is_empty() {
            return Ok(results);
        }

        // Written ahead of the commit; readers see them only once the catalog's heads move.
        if let Some(log) = &self.log {
            log.append(&mut writes)?;
        }
        if let Some(tx) = tx {
            if self.log.is_none() {
                let mut messages = tx.open_table(MESSAGES).map_err(storage)?;
                for ((s, t, p), first, records) in &writes {
                    for (offset, record) in (*first..).zip(records) {
                        messages
                            .insert((*s, *t, *p, offset), record.as_slice())
                            .map_err(storage)?;
                    }
                }
                // The in-memory store's heads live in the catalog alone.
                let mut partitions = tx.open_table(PARTITIONS).map_err(storage)?;
                for (key, head) in &heads {
                    partitions
                        .insert(*key, encode(head)?.as_slice())
                        .map_err(storage)?;
                }
            }
            if !records.is_empty() {
                let mut idempotency = tx.open_table(IDEMPOTENCY).map_err(storage)?;
                let mut expiry = tx.open_table(IDEMPOTENCY_EXPIRY).map_err(storage)?;
                for record in &records {
                    idempotency
                        .insert(&record.key[..], &encode_record(record)[..])
                        .map_err(storage)?;
                    expiry
                        .insert((record.expires_at_micros, &record.key[..]), ())
                        .map_err(storage)?;
                }
                prune_expired(&mut idempotency, &mut expiry, now)?;
            }
            tx.commit().map_err(storage)?;
        }

        let mut catalog = self.catalog.write().map_err(poisoned("catalog"))?;
        for ((s, t, p), head) in heads {
            let topic = catalog.topic_mut(s, t)?;
            if let Some(slot) = topic.partitions.get_mut(p as usize) {
                *slot = head;
            }
        }
        for ((s, t), next) in balanced {
            catalog.topic_mut(s, t)?.next_balanced = next;
        }
        drop(catalog);
        if let Ok(watched) = self.heads.lock() {
            for ((s, t, p), _, _) in &writes {
                if let Some(appends) = watched.get(&(*s, *t, *p)) {
                    appends.send_modify(|count| *count = count.wrapping_add(1));
                }
            }
        }
        Ok(results)
    }
}
