//! The pool of SDK clients and the supervisors that keep them connected: each client belongs to
//! one task that connects (with exponential backoff and full jitter), pings it, and rebuilds it
//! from scratch when a ping or a call fails or times out. A call leases the connected client
//! with the fewest calls in flight, and waits a bounded time when none is connected.

use std::{
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use iggy::prelude::{
    Client, IggyClient, IggyError, SnapshotCompression, SystemClient, SystemSnapshotType,
};
use iggy_common::DiagnosticEvent;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::{
    coalesce::SendBatching,
    convert::{durability_from_config, is_connection_error},
};
use crate::broker::{BrokerError, BrokerResult, Durability};

/// How the pool connects and recovers.
#[derive(Debug, Clone)]
pub struct IggySettings {
    pub connection_string: String,
    pub pool_size: usize,
    pub reconnect_base_delay: Duration,
    pub reconnect_max_delay: Duration,
    /// 0: keep trying forever.
    pub max_reconnect_attempts: u32,
    pub operation_timeout: Duration,
    pub health_check_interval: Duration,
    /// How long a call waits for a connection before answering UNAVAILABLE.
    pub connect_wait: Duration,
    /// How concurrent sends to one lane share a round trip (see `coalesce.rs`).
    pub send_batching: SendBatching,
    /// The longest wait between reads of a followed topic while nothing changes
    /// (`SUBSCRIBE_IDLE_POLL_MS`; see `appends.rs`).
    pub appends_idle: Duration,
}

#[derive(Clone)]
pub(super) enum SlotState {
    /// Connecting or reconnecting (backing off between attempts).
    Reconnecting,
    Connected(Arc<IggyClient>),
    /// Gave up after `MAX_RECONNECT_ATTEMPTS`.
    Failed,
}

pub(super) struct Slot {
    state: Mutex<SlotState>,
    /// Wakes the supervisor to rebuild the client after a failed or timed-out call.
    broken: Notify,
    /// Calls on this client now. The SDK runs one request at a time per connection, so a call
    /// given a busy client queues behind it while another may sit idle.
    pub(super) in_flight: AtomicUsize,
}

/// A call's claim on one pooled client; counted in the slot's `in_flight` until dropped.
pub(super) struct Lease<'a> {
    slot: &'a Slot,
    pub(super) index: usize,
    pub(super) client: Arc<IggyClient>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.slot.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) struct Pool {
    pub(super) slots: Vec<Slot>,
    next: AtomicUsize,
    /// Signalled whenever a slot changes state, for callers waiting for a connection.
    changed: Notify,
    /// Successful reconnections since start-up, for metrics.
    pub(super) reconnects: std::sync::atomic::AtomicU64,
    /// Signalled when one connection is found dead: the others check themselves at once, since
    /// a server that went away took them all.
    check_now: Notify,
    pub(super) available: watch::Sender<bool>,
    /// `true` once every slot has failed for good.
    pub(super) gave_up: watch::Sender<bool>,
    /// The server's durability settings, read from its configuration at each connection.
    pub(super) durability: Mutex<Durability>,
    pub(super) settings: IggySettings,
}

impl Pool {
    /// `size` slots, all reconnecting until their supervisors connect them.
    pub(super) fn new(size: usize, available: watch::Sender<bool>, settings: IggySettings) -> Self {
        Self {
            slots: (0..size)
                .map(|_| Slot {
                    state: Mutex::new(SlotState::Reconnecting),
                    broken: Notify::new(),
                    in_flight: AtomicUsize::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
            changed: Notify::new(),
            check_now: Notify::new(),
            reconnects: std::sync::atomic::AtomicU64::new(0),
            available,
            gave_up: watch::channel(false).0,
            durability: Mutex::new(Durability::Unknown),
            settings,
        }
    }

    pub(super) fn set_state(&self, index: usize, state: SlotState) {
        if let Some(slot) = self.slots.get(index)
            && let Ok(mut current) = slot.state.lock()
        {
            *current = state;
        }
        let any_connected = self.slots.iter().any(|slot| {
            slot.state
                .lock()
                .is_ok_and(|state| matches!(*state, SlotState::Connected(_)))
        });
        self.available.send_if_modified(|available| {
            let changed = *available != any_connected;
            *available = any_connected;
            changed
        });
        let all_failed = self.slots.iter().all(|slot| {
            slot.state
                .lock()
                .is_ok_and(|state| matches!(*state, SlotState::Failed))
        });
        if all_failed {
            self.gave_up.send_replace(true);
        }
        self.changed.notify_waiters();
    }

    /// The connected client with the fewest calls in flight (ties go round-robin); `Err` when
    /// every slot has given up.
    pub(super) fn pick(&self) -> Result<Option<Lease<'_>>, BrokerError> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut all_failed = true;
        let mut best: Option<(usize, usize, Arc<IggyClient>)> = None;
        for offset in 0..self.slots.len() {
            let index = (start + offset) % self.slots.len();
            let slot = &self.slots[index];
            let Ok(state) = slot.state.lock() else {
                continue;
            };
            match &*state {
                SlotState::Connected(client) => {
                    all_failed = false;
                    let busy = slot.in_flight.load(Ordering::Relaxed);
                    if best.as_ref().is_none_or(|(_, fewest, _)| busy < *fewest) {
                        best = Some((index, busy, Arc::clone(client)));
                    }
                    if busy == 0 {
                        break;
                    }
                }
                SlotState::Reconnecting => all_failed = false,
                SlotState::Failed => {}
            }
        }
        if let Some((index, _, client)) = best {
            let slot = &self.slots[index];
            slot.in_flight.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(Lease {
                slot,
                index,
                client,
            }));
        }
        if all_failed {
            return Err(BrokerError::Unavailable(format!(
                "gave up reconnecting to Iggy after {} attempts (MAX_RECONNECT_ATTEMPTS)",
                self.settings.max_reconnect_attempts
            )));
        }
        Ok(None)
    }

    pub(super) async fn client(&self) -> BrokerResult<Lease<'_>> {
        let deadline = tokio::time::Instant::now() + self.settings.connect_wait;
        loop {
            // Registered before looking, so a state change in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(found) = self.pick()? {
                return Ok(found);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(BrokerError::Unavailable(
                    "not connected to Iggy; the gateway is reconnecting, retry later".into(),
                ));
            }
        }
    }

    /// One call on a pooled client, under the operation timeout: the outer error when no
    /// client answered, the inner one as the server (or the SDK) gave it, for callers that act
    /// on a particular refusal before it is mapped.
    pub(super) async fn answer<T, F, Fut>(&self, op: F) -> BrokerResult<Result<T, IggyError>>
    where
        F: FnOnce(Arc<IggyClient>) -> Fut,
        Fut: Future<Output = Result<T, IggyError>>,
    {
        let lease = self.client().await?;
        let (slot, client) = (lease.index, Arc::clone(&lease.client));
        let timeout = self.settings.operation_timeout;
        match tokio::time::timeout(timeout, op(Arc::clone(&client))).await {
            Ok(answer) => {
                if let Err(err) = &answer
                    && is_connection_error(err)
                {
                    self.mark_broken(slot, &client);
                }
                Ok(answer)
            }
            Err(_) => {
                // The SDK keeps the connection busy until the server answers; start afresh.
                self.mark_broken(slot, &client);
                Err(BrokerError::Timeout(timeout))
            }
        }
    }

    /// Whether a wake-up to rebuild the slot's connection waits (taken by asking).
    #[cfg(test)]
    pub(super) fn take_broken(&self, index: usize) -> bool {
        use futures_util::FutureExt;
        self.slots[index].broken.notified().now_or_never().is_some()
    }

    /// Has the slot's connection rebuilt, if `client` (the one a call failed on) is still
    /// it: a call begun on a connection since replaced must not bring down its successor (a
    /// wake-up sent while nobody waits is kept for the next to wait).
    pub(super) fn mark_broken(&self, index: usize, client: &Arc<IggyClient>) {
        let Some(slot) = self.slots.get(index) else {
            return;
        };
        let current = slot.state.lock().is_ok_and(
            |state| matches!(&*state, SlotState::Connected(now) if Arc::ptr_eq(now, client)),
        );
        if current {
            slot.broken.notify_one();
        }
    }
}

/// Full-jitter exponential backoff: a random delay in `[0, min(max, base · 2^attempt)]`.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let ceiling = base
        .checked_mul(2u32.saturating_pow(attempt.min(20)))
        .unwrap_or(max)
        .min(max);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(fastrand::u64(0..=millis))
}

/// The connection string without its password, for logs.
pub(super) fn redact(connection_string: &str) -> String {
    match (connection_string.find("://"), connection_string.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &connection_string[scheme_end + 3..at];
            let user = credentials.split(':').next().unwrap_or("");
            format!(
                "{}{user}:***{}",
                &connection_string[..scheme_end + 3],
                &connection_string[at..]
            )
        }
        _ => connection_string.to_owned(),
    }
}

/// The connection string with `nodelay=true` unless it sets `nodelay` itself. The SDK leaves
/// Nagle's algorithm on by default and writes a request larger than its 8 KiB buffer as two
/// writes (the 8-byte header, then the body): the body then waits for the server's delayed
/// ACK of the header, about 40 ms on Linux, and every such send takes that long.
pub(super) fn with_nodelay(connection_string: &str) -> String {
    // Options follow the address, after the credentials (a password may hold a `?`).
    let address = connection_string
        .rsplit_once('@')
        .map_or(connection_string, |(_, address)| address);
    match address.split_once('?') {
        Some((_, options))
            if options
                .split('&')
                .any(|option| option.split('=').next() == Some("nodelay")) =>
        {
            connection_string.to_owned()
        }
        Some(_) => format!("{connection_string}&nodelay=true"),
        None => format!("{connection_string}?nodelay=true"),
    }
}

/// Connects one client: build, connect (which logs in with the string's credentials), ping.
async fn connect_once(settings: &IggySettings) -> Result<Arc<IggyClient>, String> {
    let client = IggyClient::from_connection_string(&with_nodelay(&settings.connection_string))
        .map_err(|err| format!("bad IGGY_CONNECTION_STRING: {err}"))?;
    let client = Arc::new(client);
    let timeout = settings.operation_timeout;
    let attempt = async {
        client.connect().await?;
        client.ping().await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(())) => Ok(client),
        Ok(Err(err)) => {
            shut_down(Arc::clone(&client));
            Err(err.to_string())
        }
        Err(_) => {
            shut_down(Arc::clone(&client));
            Err(format!("no answer within {timeout:?}"))
        }
    }
}

/// Stops a client for good (its heartbeat task would otherwise keep it, and its connection,
/// alive), off the caller's path. Not under a timeout: the SDK closes the socket only once the
/// request in flight on it lets go, which takes as long as the server (or the network) holds
/// that answer; given up earlier, the client and its connection would live on beside the new
/// one.
fn shut_down(client: Arc<IggyClient>) {
    tokio::spawn(async move {
        let _ = client.shutdown().await;
    });
}

pub(super) async fn supervise(pool: Arc<Pool>, index: usize, cancel: CancellationToken) {
    let settings = pool.settings.clone();
    let mut attempt: u32 = 0;
    // Set once a connection has been up, so the next success counts as a reconnection.
    let mut lost_before = false;
    loop {
        let connected = tokio::select! {
            () = cancel.cancelled() => return,
            result = connect_once(&settings) => result,
        };
        match connected {
            Ok(client) => {
                if attempt > 0 || lost_before {
                    pool.reconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(connection = index, "reconnected to Iggy");
                }
                lost_before = true;
                attempt = 0;
                read_durability(&pool, &client).await;
                pool.set_state(index, SlotState::Connected(Arc::clone(&client)));
                watch_connection(&pool, index, &client, &cancel).await;
                shut_down(client);
                if cancel.is_cancelled() {
                    return;
                }
                tracing::warn!(
                    connection = index,
                    "lost the connection to Iggy; reconnecting"
                );
            }
            Err(err) => {
                tracing::warn!(connection = index, attempt, error = %err, "cannot connect to Iggy");
                attempt = attempt.saturating_add(1);
            }
        }
        if settings.max_reconnect_attempts > 0 && attempt >= settings.max_reconnect_attempts {
            tracing::error!(
                connection = index,
                attempts = attempt,
                "giving up on Iggy (MAX_RECONNECT_ATTEMPTS)"
            );
            pool.set_state(index, SlotState::Failed);
            return;
        }
        pool.set_state(index, SlotState::Reconnecting);
        let delay = backoff(
            settings.reconnect_base_delay,
            settings.reconnect_max_delay,
            attempt,
        );
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Reads the server's `[system.partition]` settings from its configuration (the one API that
/// shows them: a snapshot of type `ServerConfig`, which needs the right to take snapshots) and
/// logs a change. Unknown when the server does not tell, which the caller is not held up by.
async fn read_durability(pool: &Pool, client: &IggyClient) {
    let snapshot = client.snapshot(
        SnapshotCompression::Stored,
        vec![SystemSnapshotType::ServerConfig],
    );
    let read = match tokio::time::timeout(pool.settings.operation_timeout, snapshot).await {
        // Stored, not compressed: the configuration's text is in the archive as it is.
        Ok(Ok(snapshot)) => durability_from_config(&String::from_utf8_lossy(&snapshot.0)),
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "cannot read the Iggy server's configuration");
            None
        }
        Err(_) => None,
    };
    let durability = read.unwrap_or(Durability::Unknown);
    let Ok(mut known) = pool.durability.lock() else {
        return;
    };
    if *known == durability {
        return;
    }
    *known = durability.clone();
    drop(known);
    match &durability {
        Durability::ServerSettings {
            fsync: true,
            messages_required_to_save: 1,
        }
        | Durability::FsyncedBeforeAck => {
            tracing::info!(
                durability = durability.as_str(),
                "acknowledged messages are kept {durability}"
            );
        }
        Durability::ServerSettings { .. } | Durability::Unknown | Durability::InMemory => {
            tracing::warn!(
                durability = durability.as_str(),
                "acknowledged messages are kept {durability}: a crash of the Iggy server can lose \
                 some (README, \"Durability with Iggy\")"
            );
        }
    }
}

/// Returns when the connection should be rebuilt: a ping failed or timed out, a call reported it
/// broken, or the gateway is stopping.
async fn watch_connection(
    pool: &Pool,
    index: usize,
    client: &Arc<IggyClient>,
    cancel: &CancellationToken,
) {
    let settings = &pool.settings;
    // A healthy server answers a ping in well under a millisecond; a ping the SDK holds while
    // it tries to reconnect must not keep the slot "connected" for a whole operation timeout.
    let ping_timeout = settings
        .operation_timeout
        .min(settings.health_check_interval)
        .min(Duration::from_secs(1));
    // A wake-up stored for the client this one replaces (a call on it failed while nobody
    // waited: during a ping, or before the slot left it) is not this one's. One for this
    // client dropped with it is caught by the next ping.
    let _ = futures_util::FutureExt::now_or_never(pool.slots[index].broken.notified());
    // The SDK announces a lost connection when it notices one; pings catch what it does not.
    let mut events = client.subscribe_events().await;
    loop {
        let check = tokio::select! {
            () = cancel.cancelled() => return,
            () = pool.slots[index].broken.notified() => false,
            () = pool.check_now.notified() => true,
            () = tokio::time::sleep(settings.health_check_interval) => true,
            event = events.recv() => match event {
                Ok(DiagnosticEvent::Connected | DiagnosticEvent::SignedIn) => continue,
                // Disconnected, shut down, signed out, or the event channel closed with the client.
                Ok(DiagnosticEvent::Disconnected | DiagnosticEvent::Shutdown | DiagnosticEvent::SignedOut)
                | Err(_) => false,
            },
        };
        if check {
            match tokio::time::timeout(ping_timeout, client.ping()).await {
                Ok(Ok(())) => continue,
                Ok(Err(err)) => {
                    tracing::warn!(connection = index, error = %err, "Iggy ping failed")
                }
                Err(_) => tracing::warn!(connection = index, "Iggy ping timed out"),
            }
        }
        pool.check_now.notify_waiters();
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Arc<IggyClient> {
        Arc::new(IggyClient::from_connection_string("iggy://u:p@127.0.0.1:1").expect("client"))
    }

    /// Calls failing on a connection as it is replaced (a server restart fails every call in
    /// flight) may leave a wake-up stored while nobody waits; the new connection's watcher
    /// must not take it as its own and tear the new connection down.
    #[tokio::test]
    async fn a_wake_up_left_for_a_replaced_connection_does_not_end_its_successor() {
        let settings = IggySettings {
            connection_string: "iggy://u:p@127.0.0.1:1".into(),
            pool_size: 1,
            reconnect_base_delay: Duration::from_millis(1),
            reconnect_max_delay: Duration::from_millis(1),
            max_reconnect_attempts: 1,
            operation_timeout: Duration::from_secs(60),
            health_check_interval: Duration::from_secs(60),
            connect_wait: Duration::from_millis(10),
            send_batching: SendBatching::default(),
            appends_idle: Duration::from_millis(10),
        };
        let pool = Pool::new(1, watch::channel(false).0, settings);
        let (old, new) = (client(), client());
        let cancel = CancellationToken::new();
        pool.set_state(0, SlotState::Connected(Arc::clone(&old)));
        // Two calls on the old one fail while its watcher is not waiting (it pings).
        pool.mark_broken(0, &old);
        pool.mark_broken(0, &old);
        pool.set_state(0, SlotState::Reconnecting);
        pool.set_state(0, SlotState::Connected(Arc::clone(&new)));
        let ended = tokio::time::timeout(
            Duration::from_millis(300),
            watch_connection(&pool, 0, &new, &cancel),
        )
        .await;
        assert!(ended.is_err(), "the new connection's watcher ended at once");
        // Its own failure still ends it.
        let watching = watch_connection(&pool, 0, &new, &cancel);
        tokio::pin!(watching);
        assert!(futures_util::FutureExt::now_or_never(watching.as_mut()).is_none());
        pool.mark_broken(0, &new);
        assert!(
            tokio::time::timeout(Duration::from_secs(5), watching)
                .await
                .is_ok()
        );
    }
}
