//! Idempotent produce (`Idempotency-Key`, as in the IETF httpapi draft): a send under a key is
//! made once per identity and key, whoever retries it and however often.
//!
//! - Each message the client gave no id gets one derived from (identity, key, index), so a retry
//!   carries the very ids of the first try (keyed with the gateway's lasting secret when it has
//!   one, so that another team writing the same topic cannot work the ids out ahead and take
//!   them): with Iggy, the server's message deduplication drops
//!   them (across gateway replicas too); with the embedded store, the key's record is written in
//!   the batch's own transaction and a retry is answered from it, also after a restart.
//! - In this process, each key's answer is remembered for `IDEMPOTENCY_TTL_SECS` (at most
//!   `IDEMPOTENCY_MAX_ENTRIES` keys; when full, the identity holding the most forgets its oldest
//!   answer, so one identity's flood of keys forgets its own answers, not a smaller holder's): a retry gets the
//!   original answer, marked replayed; the same key with another request is refused; a retry
//!   while the first call is in flight waits for it, and runs itself if the first one failed.
//!
//! Imports nothing of the crate.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// The longest `Idempotency-Key` taken.
pub const MAX_KEY_LEN: usize = 255;

/// A key's place in the coordinator: in flight (the runner holds the sender; it is dropped when
/// the call ends) or answered.
///
/// An answer keeps no ids: the fingerprint covers each message's id, so a retry that matches it
/// carries the very ids it is to be answered with. A record costs the same for one message as
/// for a thousand.
enum Slot {
    InFlight {
        fingerprint: [u8; 32],
        ended: watch::Receiver<()>,
        token: u64,
    },
    Answered {
        fingerprint: [u8; 32],
        until: Instant,
        token: u64,
        holder: Arc<str>,
    },
}

pub struct Idempotency {
    ttl: Duration,
    max_entries: usize,
    slots: Mutex<Slots>,
    /// Keys the derived message ids ([`Idempotency::with_id_secret`]).
    id_secret: Option<Vec<u8>>,
}

#[derive(Default)]
struct Slots {
    map: HashMap<[u8; 32], Slot>,
    /// Each identity's answers, oldest first (so soonest to expire: the TTL is one), how many
    /// of them are still in the map, and its calls in flight. An entry whose slot was
    /// replaced is skipped.
    holders: HashMap<Arc<str>, Holder>,
    next_token: u64,
}

#[derive(Default)]
struct Holder {
    order: VecDeque<([u8; 32], u64)>,
    live: usize,
    running: usize,
}

impl Holder {
    /// What it holds of the map: its answers and its calls in flight.
    fn weight(&self) -> usize {
        self.live + self.running
    }
}

impl Slots {
    /// Drops `holder`'s oldest answer if `expired_only` is false or it has expired; entries of
    /// replaced slots are passed over. Whether one was dropped.
    fn drop_oldest(&mut self, holder: &str, now: Instant, expired_only: bool) -> bool {
        let Some(entry) = self.holders.get_mut(holder) else {
            return false;
        };
        let dropped = loop {
            let Some(&(key, token)) = entry.order.front() else {
                break false;
            };
            match self.map.get(&key) {
                Some(Slot::Answered {
                    token: live, until, ..
                }) if *live == token => {
                    if expired_only && *until > now {
                        break false;
                    }
                    self.map.remove(&key);
                    entry.order.pop_front();
                    entry.live -= 1;
                    break true;
                }
                _ => {
                    entry.order.pop_front();
                }
            }
        };
        if entry.order.is_empty() && entry.running == 0 {
            self.holders.remove(holder);
        }
        dropped
    }

    /// Forgets the answer in `key`'s slot, if any, before the slot is replaced.
    fn unhold(&mut self, key: &[u8; 32]) {
        if let Some(Slot::Answered { holder, .. }) = self.map.get(key)
            && let Some(entry) = self.holders.get_mut(holder)
        {
            entry.live -= 1;
        }
    }
}

/// What a call under a key is to do.
pub enum Begin<'a> {
    /// Make the call, then tell the ticket it was answered.
    Run(Ticket<'a>),
    /// The same request was answered before: answer it again (its ids are the request's own),
    /// replayed.
    Replay,
    /// The key stands for another request.
    Conflict,
}

/// The right to make the call for a key; dropped without an answer, it frees the key for a
/// retry (and wakes those waiting).
pub struct Ticket<'a> {
    owner: &'a Idempotency,
    key: [u8; 32],
    token: u64,
    holder: &'a str,
    _ended: watch::Sender<()>,
}

impl Ticket<'_> {
    /// The call succeeded: remember its request for the key's time to live.
    pub fn answered(self) {
        let Ok(mut slots) = self.owner.slots.lock() else {
            return;
        };
        let Some(Slot::InFlight {
            fingerprint, token, ..
        }) = slots.map.get(&self.key)
        else {
            return;
        };
        if *token != self.token {
            return;
        }
        let fingerprint = *fingerprint;
        let now = Instant::now();
        // Its own expired answers go as it adds one, so an identity's order stays as long as
        // what it holds.
        while slots.drop_oldest(self.holder, now, true) {}
        let holder = match slots.holders.get_key_value(self.holder) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(self.holder),
        };
        let entry = slots.holders.entry(Arc::clone(&holder)).or_default();
        entry.order.push_back((self.key, self.token));
        entry.live += 1;
        slots.map.insert(
            self.key,
            Slot::Answered {
                fingerprint,
                until: now + self.owner.ttl,
                token: self.token,
                holder,
            },
        );
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let Ok(mut slots) = self.owner.slots.lock() else {
            return;
        };
        if matches!(slots.map.get(&self.key), Some(Slot::InFlight { token, .. }) if *token == self.token)
        {
            slots.map.remove(&self.key);
        }
        if let Some(entry) = slots.holders.get_mut(self.holder) {
            entry.running = entry.running.saturating_sub(1);
            if entry.running == 0 && entry.order.is_empty() {
                slots.holders.remove(self.holder);
            }
        }
    }
}

impl Idempotency {
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries: max_entries.max(1),
            slots: Mutex::new(Slots::default()),
            id_secret: None,
        }
    }

    /// Derives message ids keyed with `secret`: one that lasts (the same after a restart and
    /// on every replica), or none, so a retry anywhere carries the same ids.
    pub fn with_id_secret(mut self, secret: Option<Vec<u8>>) -> Self {
        self.id_secret = secret;
        self
    }

    /// The id of the `index`th message of a send under `key` by `identity` (see
    /// [`message_id`]), keyed with the id secret when there is one.
    pub fn message_id(&self, identity: &str, key: &str, index: usize) -> u128 {
        match &self.id_secret {
            Some(secret) => keyed_message_id(secret, identity, key, index),
            None => message_id(identity, key, index),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Starts a call by `holder` (the identity's name, already part of `key`) under `key` for
    /// a request whose digest is `fingerprint`; waits while another call under the key is in
    /// flight.
    pub async fn begin<'a>(
        &'a self,
        holder: &'a str,
        key: [u8; 32],
        fingerprint: [u8; 32],
    ) -> Begin<'a> {
        loop {
            let mut waiting = {
                let Ok(mut slots) = self.slots.lock() else {
                    return Begin::Conflict;
                };
                let now = Instant::now();
                match slots.map.get(&key) {
                    Some(Slot::Answered {
                        fingerprint: answered,
                        until,
                        ..
                    }) if *until > now => {
                        return if *answered == fingerprint {
                            Begin::Replay
                        } else {
                            Begin::Conflict
                        };
                    }
                    Some(Slot::InFlight {
                        fingerprint: running,
                        ended,
                        ..
                    }) => {
                        if *running != fingerprint {
                            return Begin::Conflict;
                        }
                        ended.clone()
                    }
                    // Absent or expired: this call runs.
                    _ => {
                        slots.unhold(&key);
                        slots.map.remove(&key);
                        self.make_room(&mut slots, holder, now);
                        match slots.holders.get_mut(holder) {
                            Some(entry) => entry.running += 1,
                            None => {
                                slots.holders.insert(
                                    Arc::from(holder),
                                    Holder {
                                        running: 1,
                                        ..Holder::default()
                                    },
                                );
                            }
                        }
                        slots.next_token += 1;
                        let token = slots.next_token;
                        let (sender, ended) = watch::channel(());
                        slots.map.insert(
                            key,
                            Slot::InFlight {
                                fingerprint,
                                ended,
                                token,
                            },
                        );
                        return Begin::Run(Ticket {
                            owner: self,
                            key,
                            token,
                            holder,
                            _ended: sender,
                        });
                    }
                }
            };
            // Ends (with an error) when the running call's ticket is dropped.
            let _ = waiting.changed().await;
        }
    }

    /// Keeps the map within `max_entries` for a new key of `holder`'s: expired answers go
    /// first, then the oldest answer of the identity holding the most, answers and calls in
    /// flight together (`holder` on a tie), so one identity's flood of new keys forgets its
    /// own answers, never a smaller holder's. A call in flight is never forgotten: while the
    /// largest holder has only those, the map holds one more (at most the calls in flight).
    fn make_room(&self, slots: &mut Slots, holder: &str, now: Instant) {
        if slots.map.len() < self.max_entries {
            return;
        }
        let names: Vec<Arc<str>> = slots.holders.keys().cloned().collect();
        for name in &names {
            while slots.drop_oldest(name, now, true) {}
        }
        if slots.map.len() < self.max_entries {
            return;
        }
        let own = slots.holders.get(holder).map_or(0, Holder::weight);
        let largest = slots
            .holders
            .iter()
            .filter(|(_, entry)| entry.weight() > own)
            .max_by_key(|(_, entry)| entry.weight())
            .map(|(name, _)| Arc::clone(name));
        match largest {
            Some(name) => slots.drop_oldest(&name, now, false),
            None => slots.drop_oldest(holder, now, false),
        };
    }

    pub fn len(&self) -> usize {
        self.slots.lock().map(|slots| slots.map.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether `key` is a usable `Idempotency-Key`: 1 to 255 visible ASCII characters.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

fn framed(hasher: &mut Sha256, part: &[u8]) {
    hasher.update((part.len() as u64).to_be_bytes());
    hasher.update(part);
}

/// The key a record is kept under: a digest of the identity's name and the client's key, so
/// two identities never share a key.
pub fn record_key(identity: &str, key: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    framed(&mut hasher, b"iggy-gateway/idempotency-key/v1");
    framed(&mut hasher, identity.as_bytes());
    framed(&mut hasher, key.as_bytes());
    hasher.finalize().into()
}

/// The id of the `index`th message of a send under `key` by `identity`, when the client gave
/// none: a UUID (version 8, RFC 9562) made of a digest of the three, the same on every retry
/// and every gateway.
pub fn message_id(identity: &str, key: &str, index: usize) -> u128 {
    let mut hasher = Sha256::new();
    framed(&mut hasher, b"iggy-gateway/message-id/v1");
    framed(&mut hasher, identity.as_bytes());
    framed(&mut hasher, key.as_bytes());
    hasher.update((index as u64).to_be_bytes());
    uuid_v8(&hasher.finalize())
}

/// A UUID (version 8, RFC 9562) made of a digest's first 16 bytes.
fn uuid_v8(digest: &[u8]) -> u128 {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80; // version 8
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 9562 variant
    u128::from_be_bytes(bytes)
}

/// [`message_id`] keyed with `secret` (HMAC-SHA-256): without the secret, nobody can tell the
/// id a send under a key will get.
fn keyed_message_id(secret: &[u8], identity: &str, key: &str, index: usize) -> u128 {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        // HMAC takes a key of any length; unreachable.
        return message_id(identity, key, index);
    };
    let mut framed_part = |bytes: &[u8]| {
        mac.update(&(bytes.len() as u64).to_be_bytes());
        mac.update(bytes);
    };
    framed_part(b"iggy-gateway/message-id/v2");
    framed_part(identity.as_bytes());
    framed_part(key.as_bytes());
    mac.update(&(index as u64).to_be_bytes());
    uuid_v8(&mac.finalize().into_bytes())
}

/// Accumulates a request's fingerprint from its parts, each framed by its length.
#[derive(Default)]
pub struct Fingerprint(Sha256);

impl Fingerprint {
    pub fn part(&mut self, bytes: &[u8]) -> &mut Self {
        framed(&mut self.0, bytes);
        self
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn ids_are_stable_distinct_and_uuid_shaped() {
        let a = message_id("team", "key-1", 0);
        assert_eq!(a, message_id("team", "key-1", 0));
        assert_ne!(a, message_id("team", "key-1", 1));
        assert_ne!(a, message_id("other", "key-1", 0));
        assert_ne!(a, message_id("team", "key-2", 0));
        let uuid = uuid::Uuid::from_u128(a);
        assert_eq!(uuid.get_version_num(), 8);
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        assert_ne!(record_key("a", "bc"), record_key("ab", "c"));
    }

    #[test]
    fn keyed_ids_are_stable_for_one_secret_and_unlike_the_unkeyed_ones() {
        let keyed = Idempotency::new(Duration::from_secs(1), 1).with_id_secret(Some(b"s1".into()));
        let again = Idempotency::new(Duration::from_secs(1), 1).with_id_secret(Some(b"s1".into()));
        let other = Idempotency::new(Duration::from_secs(1), 1).with_id_secret(Some(b"s2".into()));
        let plain = Idempotency::new(Duration::from_secs(1), 1);
        let id = keyed.message_id("team", "order-1002", 0);
        assert_eq!(id, again.message_id("team", "order-1002", 0));
        assert_ne!(id, other.message_id("team", "order-1002", 0));
        assert_ne!(
            id,
            message_id("team", "order-1002", 0),
            "not what anyone can compute"
        );
        assert_eq!(
            plain.message_id("team", "order-1002", 0),
            message_id("team", "order-1002", 0)
        );
        assert_eq!(uuid::Uuid::from_u128(id).get_version_num(), 8);
    }

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert!(valid_key("order-1001:retry"));
        assert!(!valid_key(""));
        assert!(!valid_key("with space"));
        assert!(!valid_key(&"k".repeat(256)));
        assert!(!valid_key("é"));
    }

    #[tokio::test]
    async fn a_retry_is_replayed_and_another_body_refused() {
        let coordinator = Idempotency::new(Duration::from_secs(60), 10);
        let (key, body) = ([1; 32], [2; 32]);
        let Begin::Run(ticket) = coordinator.begin("team", key, body).await else {
            panic!("the first call runs");
        };
        ticket.answered();
        assert!(matches!(
            coordinator.begin("team", key, body).await,
            Begin::Replay
        ));
        assert!(matches!(
            coordinator.begin("team", key, [3; 32]).await,
            Begin::Conflict
        ));
    }

    #[tokio::test]
    async fn a_retry_waits_for_the_call_in_flight_and_runs_if_it_failed() {
        let coordinator = Arc::new(Idempotency::new(Duration::from_secs(60), 10));
        let (key, body) = ([1; 32], [2; 32]);
        let Begin::Run(first) = coordinator.begin("team", key, body).await else {
            panic!("the first call runs");
        };
        let waiter = {
            let coordinator = Arc::clone(&coordinator);
            tokio::spawn(async move {
                matches!(coordinator.begin("team", key, body).await, Begin::Run(_))
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "the retry waits");
        drop(first);
        assert!(
            waiter.await.expect("joined"),
            "and runs once the first failed"
        );
        // A retry with another body does not wait: it is refused at once.
        let Begin::Run(_running) = coordinator.begin("team", key, body).await else {
            panic!("runs");
        };
        assert!(matches!(
            coordinator.begin("team", key, [9; 32]).await,
            Begin::Conflict
        ));
    }

    #[tokio::test]
    async fn the_map_stays_bounded_and_answers_expire() {
        let coordinator = Idempotency::new(Duration::from_millis(20), 100);
        for i in 0..1000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            if let Begin::Run(ticket) = coordinator.begin("team", key, [0; 32]).await {
                ticket.answered();
            }
        }
        assert!(coordinator.len() <= 100, "{}", coordinator.len());
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(matches!(
            coordinator.begin("team", [0; 32], [5; 32]).await,
            Begin::Run(_)
        ));
    }

    #[test]
    fn a_record_costs_the_same_whatever_the_send_it_answers() {
        // Nothing of the answer is kept, so a record of a thousand-message send is this and
        // the holder's order entry; a record of ids would grow with the send.
        assert!(
            std::mem::size_of::<Slot>() <= 96,
            "{}",
            std::mem::size_of::<Slot>()
        );
        assert_eq!(std::mem::size_of::<([u8; 32], u64)>(), 40);
    }

    fn numbered(holder: u8, i: u32) -> [u8; 32] {
        let mut key = [holder; 32];
        key[..4].copy_from_slice(&i.to_be_bytes());
        key
    }

    async fn answer(coordinator: &Idempotency, holder: &str, key: [u8; 32]) -> bool {
        match coordinator.begin(holder, key, [7; 32]).await {
            Begin::Run(ticket) => {
                ticket.answered();
                false
            }
            Begin::Replay => true,
            Begin::Conflict => panic!("same body"),
        }
    }

    #[tokio::test]
    async fn a_flood_of_new_keys_forgets_its_own_answers_not_a_smaller_holders() {
        let coordinator = Idempotency::new(Duration::from_secs(60), 10);
        for i in 0..3 {
            assert!(!answer(&coordinator, "victim", numbered(1, i)).await);
        }
        for i in 0..1000 {
            assert!(!answer(&coordinator, "flood", numbered(2, i)).await);
        }
        assert_eq!(coordinator.len(), 10);
        for i in 0..3 {
            assert!(
                answer(&coordinator, "victim", numbered(1, i)).await,
                "the victim's key {i} is still answered"
            );
        }
        // The flood kept its newest seven, the oldest of them forgotten first.
        assert!(answer(&coordinator, "flood", numbered(2, 999)).await);
        assert!(answer(&coordinator, "flood", numbered(2, 993)).await);
        assert!(!answer(&coordinator, "flood", numbered(2, 0)).await);
        // A holder as large as the largest gives up its own oldest; the order of answers that
        // were replaced after expiring is passed over.
        let coordinator = Idempotency::new(Duration::from_millis(30), 4);
        for i in 0..2 {
            answer(&coordinator, "a", numbered(1, i)).await;
            answer(&coordinator, "b", numbered(2, i)).await;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(
            !answer(&coordinator, "a", numbered(1, 0)).await,
            "expired, runs"
        );
        for i in 2..6 {
            answer(&coordinator, "a", numbered(1, i)).await;
        }
        assert_eq!(coordinator.len(), 4);
        for i in 2..6 {
            assert!(answer(&coordinator, "a", numbered(1, i)).await, "{i}");
        }
    }

    #[tokio::test]
    async fn calls_in_flight_weigh_with_their_identity_and_are_never_forgotten() {
        let coordinator = Idempotency::new(Duration::from_secs(60), 10);
        for i in 0..3 {
            answer(&coordinator, "victim", numbered(1, i)).await;
        }
        // A flood of calls still running fills the map: it is the largest holder, with
        // nothing it may forget, so the map grows past its bound rather than forget another's.
        let mut running = Vec::new();
        for i in 0..10 {
            match coordinator.begin("flood", numbered(2, i), [7; 32]).await {
                Begin::Run(ticket) => running.push(ticket),
                _ => panic!("new keys run"),
            }
        }
        assert_eq!(coordinator.len(), 13);
        for i in 0..3 {
            assert!(answer(&coordinator, "victim", numbered(1, i)).await, "{i}");
        }
        // Once they end (failed here), the map is back within its bound and the flood's
        // entry is gone with them.
        drop(running);
        assert_eq!(coordinator.len(), 3);
        let slots = coordinator.slots.lock().expect("lock");
        assert!(!slots.holders.contains_key("flood"));
        assert_eq!(
            slots.holders.get("victim").map(|h| (h.live, h.running)),
            Some((3, 0))
        );
    }
}
