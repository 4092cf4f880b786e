//! Admission: a subscription holds one of `MAX_SUBSCRIBERS` permits and one of its client's
//! `MAX_SUBSCRIBERS_PER_CLIENT` slots for as long as it runs; both are released when it ends,
//! however it ends, early refusals included.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// The caps every subscription is admitted against.
pub(super) struct Admission {
    max_subscribers: usize,
    max_per_client: usize,
    permits: Arc<Semaphore>,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// What an admitted subscription holds; dropping it frees both its places.
pub(super) struct Admitted {
    _permit: OwnedSemaphorePermit,
    _slot: ClientSlot,
}

impl Admission {
    pub(super) fn new(max_subscribers: usize, max_per_client: usize) -> Self {
        Self {
            max_subscribers,
            max_per_client,
            permits: Arc::new(Semaphore::new(max_subscribers)),
            per_client: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Admits one more subscription of `client`, or refuses it with RESOURCE_EXHAUSTED naming
    /// the cap it hit.
    pub(super) fn admit(&self, client: Option<IpAddr>) -> Result<Admitted, Status> {
        if let Some(client) = client
            && let Ok(mut counts) = self.per_client.lock()
        {
            let count = counts.entry(client).or_insert(0);
            if *count >= self.max_per_client {
                return Err(Status::resource_exhausted(format!(
                    "{client} already has {count} subscriptions (MAX_SUBSCRIBERS_PER_CLIENT)"
                )));
            }
            *count += 1;
        }
        // From here on the slot is released on every path, early errors included.
        let slot = ClientSlot {
            counts: Arc::clone(&self.per_client),
            client,
        };
        let permit = Arc::clone(&self.permits).try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "the gateway already serves {} subscribers (MAX_SUBSCRIBERS)",
                self.max_subscribers
            ))
        })?;
        Ok(Admitted {
            _permit: permit,
            _slot: slot,
        })
    }
}

/// One subscription counted against its client IP, released when dropped.
struct ClientSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    client: Option<IpAddr>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let (Some(client), Ok(mut counts)) = (self.client, self.counts.lock())
            && let Some(count) = counts.get_mut(&client)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&client);
            }
        }
    }
}
