//! Admission: a subscription holds one of `MAX_SUBSCRIBERS` permits, one of its client's
//! `MAX_SUBSCRIBERS_PER_CLIENT` slots and, for a keys-file identity, a place in its identity's
//! count (capped when its quota says `subscriptions`, so a cap a reload adds counts what is
//! open), for as long as it runs; all are released when it ends, however it ends, early
//! refusals included.

use std::{
    collections::HashMap,
    hash::Hash,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Code, Status};

use super::Holder;
use crate::answer::{QUOTA_EXCEEDED, Rejection};

/// The caps every subscription is admitted against.
pub(super) struct Admission {
    max_subscribers: usize,
    max_per_client: usize,
    permits: Arc<Semaphore>,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Keyed by the identity's name, so a reload that changes its quota keeps the count.
    per_identity: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

/// What an admitted subscription holds; dropping it frees its places.
pub(super) struct Admitted {
    _permit: OwnedSemaphorePermit,
    _client: Option<Slot<IpAddr>>,
    _identity: Option<Slot<Arc<str>>>,
}

impl Admission {
    pub(super) fn new(max_subscribers: usize, max_per_client: usize) -> Self {
        Self {
            max_subscribers,
            max_per_client,
            permits: Arc::new(Semaphore::new(max_subscribers)),
            per_client: Arc::new(Mutex::new(HashMap::new())),
            per_identity: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Admits one more subscription of `client` for `holder`, or refuses it with
    /// RESOURCE_EXHAUSTED naming the cap it hit: the identity's own first, so a team over its
    /// quota hears that rather than the gateway's.
    pub(super) fn admit(
        &self,
        client: Option<IpAddr>,
        holder: Option<&Holder>,
    ) -> Result<Admitted, Status> {
        let identity = match holder {
            None => None,
            Some(holder) => Some(
                Slot::take(&self.per_identity, Arc::clone(&holder.name), holder.most).map_err(
                    |count| {
                        Rejection::new(
                            Code::ResourceExhausted,
                            QUOTA_EXCEEDED,
                            format!(
                                "'{}' already has {count} subscriptions, its quota's most",
                                holder.name
                            ),
                        )
                        .metadata("identity", &*holder.name)
                        .metadata("quota", "subscriptions")
                        .status()
                    },
                )?,
            ),
        };
        let client = match client {
            None => None,
            Some(client) => Some(
                Slot::take(&self.per_client, client, Some(self.max_per_client)).map_err(|count| {
                    Status::resource_exhausted(format!(
                        "{client} already has {count} subscriptions (MAX_SUBSCRIBERS_PER_CLIENT)"
                    ))
                })?,
            ),
        };
        let permit = Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the gateway already serves {} subscribers (MAX_SUBSCRIBERS)",
                self.max_subscribers
            ))
        })?;
        Ok(Admitted {
            _permit: permit,
            _client: client,
            _identity: identity,
        })
    }
}

/// One subscription counted against a client or an identity, released when dropped.
struct Slot<K: Eq + Hash> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Eq + Hash + Clone> Slot<K> {
    /// Counts one more under `key` unless it holds `most` already (then: how many it holds).
    fn take(
        counts: &Arc<Mutex<HashMap<K, usize>>>,
        key: K,
        most: Option<usize>,
    ) -> Result<Self, usize> {
        // A poisoned count admits: the other caps still hold.
        if let Ok(mut map) = counts.lock() {
            let count = map.entry(key.clone()).or_insert(0);
            if most.is_some_and(|most| *count >= most) {
                let held = *count;
                if held == 0 {
                    map.remove(&key);
                }
                return Err(held);
            }
            *count += 1;
        }
        Ok(Self {
            counts: Arc::clone(counts),
            key,
        })
    }
}

impl<K: Eq + Hash> Drop for Slot<K> {
    fn drop(&mut self) {
        if let Ok(mut counts) = self.counts.lock()
            && let Some(count) = counts.get_mut(&self.key)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}
