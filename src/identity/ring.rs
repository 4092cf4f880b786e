//! The keys in force: `API_KEY`'s (fixed for the process) and the keys file's, which a reload
//! replaces whole. Readers take the current set (an `Arc`) from a watch channel, so a reload is
//! one atomic swap and a subscription can wait for the next one; a file that does not parse
//! keeps the set in force, and says why in the log.

use std::{
    num::NonZeroU32,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Ceiling, Held, Identity, KeyEntry, QuotaState, parse_key_file};

/// The keys file's identities, as loaded.
#[derive(Debug, Default)]
pub struct KeySet {
    entries: Vec<([u8; 32], Arc<Identity>)>,
}

impl KeySet {
    /// Builds the set, keeping the quota state of identities whose limits did not change, so a
    /// reload does not hand anyone a fresh budget.
    fn build(entries: Vec<KeyEntry>, previous: &KeySet) -> Self {
        let entries = entries
            .into_iter()
            .map(|entry| {
                let quota = entry.quota.map(|settings| {
                    previous
                        .entries
                        .iter()
                        .filter(|(_, old)| old.name() == entry.name)
                        .find_map(|(_, old)| {
                            old.quota()
                                .filter(|state| *state.settings() == settings)
                                .cloned()
                        })
                        .unwrap_or_else(|| Arc::new(QuotaState::new(settings)))
                });
                let identity = Identity::named(
                    &entry.name,
                    entry.digest,
                    entry.grants,
                    entry.expires_at,
                    entry.consumers,
                    quota,
                );
                (entry.digest, Arc::new(identity))
            })
            .collect();
        Self { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(_, identity)| identity.name())
    }

    /// The entry for the same key as `identity` (same name, same digest), if it is still here.
    pub fn find_same(&self, identity: &Identity) -> Option<Arc<Identity>> {
        self.entries
            .iter()
            .find(|(_, candidate)| candidate.same_key(identity))
            .map(|(_, candidate)| Arc::clone(candidate))
    }
}

/// What a presented key turned out to be.
#[derive(Debug)]
pub enum Authenticated {
    Valid(Arc<Identity>),
    /// A keys-file key past its `expires_at`.
    Expired(Arc<Identity>),
    Invalid,
}

pub struct KeyRing {
    static_digests: Vec<[u8; 32]>,
    static_identity: Arc<Identity>,
    anonymous: Arc<Identity>,
    file: Option<PathBuf>,
    set: watch::Sender<Arc<KeySet>>,
    /// The SHA-256 of the file's text as last read (loaded or refused), so an unchanged file is
    /// neither parsed nor complained about again on every poll.
    last_read: Mutex<Option<[u8; 32]>>,
    /// What keys-file keys' calls that their quotas do not count are held to; `None` when the
    /// per-client rate limit is off.
    ceiling: Option<Ceiling>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("static_keys", &self.static_digests.len())
            .field("file", &self.file)
            .field("file_keys", &self.set.borrow().len())
            .finish()
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn is_yaml(path: &Path) -> bool {
    path.extension()
        .and_then(|ext| ext.to_str())
        .is_some_and(|ext| ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml"))
}

impl KeyRing {
    /// `API_KEY`'s keys and, when set, the keys file, read now: a file that cannot be read or
    /// does not parse is an error (start-up refuses it).
    pub fn load(static_keys: &[String], file: Option<PathBuf>) -> Result<Self, String> {
        let ring = Self {
            static_digests: static_keys.iter().map(|key| digest(key)).collect(),
            static_identity: Identity::static_key(),
            anonymous: Identity::anonymous(),
            file,
            set: watch::channel(Arc::new(KeySet::default())).0,
            last_read: Mutex::new(None),
            ceiling: None,
        };
        if let Some(path) = &ring.file {
            let (hash, entries) = read(path)?;
            ring.set
                .send_replace(Arc::new(KeySet::build(entries, &KeySet::default())));
            if let Ok(mut last) = ring.last_read.lock() {
                *last = Some(hash);
            }
        }
        Ok(ring)
    }

    /// Only `API_KEY`'s keys (tests, and gateways without a keys file).
    pub fn from_static(static_keys: &[String]) -> Self {
        Self::load(static_keys, None).unwrap_or_else(|_| unreachable!("no file is read"))
    }

    /// Holds keys-file keys' calls that their quotas do not count to `rate` (per second,
    /// burst) each; `None` holds them to nothing, as it does every other caller.
    pub fn with_ceiling(mut self, rate: Option<(NonZeroU32, NonZeroU32)>) -> Self {
        self.ceiling = rate.map(|(per_second, burst)| Ceiling::new(per_second, burst));
        self
    }

    /// Takes one call from `identity`'s budget for calls its quotas do not count; only
    /// keys-file keys have one (the rest are held to the per-client rate limit).
    pub fn admit_uncounted(&self, identity: &Identity) -> Result<(), Held> {
        match &self.ceiling {
            Some(ceiling) if identity.is_named() => ceiling.admit(&identity.name),
            _ => Ok(()),
        }
    }

    /// Whether calls need a key at all.
    pub fn enabled(&self) -> bool {
        !self.static_digests.is_empty() || self.file.is_some()
    }

    pub fn anonymous(&self) -> Arc<Identity> {
        Arc::clone(&self.anonymous)
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// The keys file's set in force.
    pub fn current(&self) -> Arc<KeySet> {
        Arc::clone(&self.set.borrow())
    }

    /// Changes with every reload that swapped in a new set.
    pub fn changes(&self) -> watch::Receiver<Arc<KeySet>> {
        self.set.subscribe()
    }

    /// The identity of a presented key. Every digest is compared, in constant time, so timing
    /// does not tell whether or which key matched.
    pub fn authenticate(&self, presented: &str) -> Authenticated {
        let presented = digest(presented);
        let set = self.current();
        let mut matched = subtle::Choice::from(0);
        let mut is_static = subtle::Choice::from(0);
        let mut index = 0u32;
        for key in &self.static_digests {
            let equal = key.ct_eq(&presented);
            matched |= equal;
            is_static |= equal;
        }
        for (i, (key, _)) in set.entries.iter().enumerate() {
            let equal = key.ct_eq(&presented);
            matched |= equal;
            index.conditional_assign(&u32::try_from(i).unwrap_or(u32::MAX), equal);
        }
        if !bool::from(matched) {
            return Authenticated::Invalid;
        }
        if bool::from(is_static) {
            return Authenticated::Valid(Arc::clone(&self.static_identity));
        }
        match set.entries.get(index as usize) {
            Some((_, identity)) if identity.is_expired(SystemTime::now()) => {
                Authenticated::Expired(Arc::clone(identity))
            }
            Some((_, identity)) => Authenticated::Valid(Arc::clone(identity)),
            None => Authenticated::Invalid,
        }
    }

    /// Reads the keys file again. `forced` (SIGHUP) reloads even when its text is unchanged;
    /// otherwise an unchanged file is left alone. A file that cannot be read or does not parse
    /// leaves the set in force and is logged with the reason.
    pub fn reload(&self, forced: bool) {
        let Some(path) = &self.file else { return };
        let text = match std::fs::read(path) {
            Ok(text) => text,
            Err(err) => {
                if forced || self.remember(None) {
                    tracing::error!(path = %path.display(), error = %err,
                        "cannot read the keys file; the keys in force stay");
                }
                return;
            }
        };
        let hash: [u8; 32] = Sha256::digest(&text).into();
        if !self.remember(Some(hash)) && !forced {
            return;
        }
        let parsed = std::str::from_utf8(&text)
            .map_err(|_| "the file is not UTF-8".to_owned())
            .and_then(|text| parse_key_file(text, is_yaml(path)));
        match parsed {
            Ok(entries) => {
                let previous = self.current();
                let next = KeySet::build(entries, &previous);
                let before: Vec<&str> = previous.names().collect();
                let after: Vec<&str> = next.names().collect();
                let added: Vec<&str> = after
                    .iter()
                    .filter(|n| !before.contains(n))
                    .copied()
                    .collect();
                let removed: Vec<&str> = before
                    .iter()
                    .filter(|n| !after.contains(n))
                    .copied()
                    .collect();
                tracing::info!(
                    path = %path.display(),
                    keys = next.len(),
                    added = ?added,
                    removed = ?removed,
                    "keys file reloaded"
                );
                self.set.send_replace(Arc::new(next));
            }
            Err(why) => tracing::error!(
                path = %path.display(),
                error = %why,
                "the keys file is not valid; the keys in force stay"
            ),
        }
    }

    /// Records what was read last; whether it differs from the time before.
    fn remember(&self, hash: Option<[u8; 32]>) -> bool {
        match self.last_read.lock() {
            Ok(mut last) => {
                let changed = *last != hash;
                *last = hash;
                changed
            }
            Err(_) => true,
        }
    }
}

/// Reads and parses the keys file, with the hash of its text.
fn read(path: &Path) -> Result<([u8; 32], Vec<KeyEntry>), String> {
    let text = std::fs::read(path)
        .map_err(|err| format!("API_KEYS_FILE: cannot read {}: {err}", path.display()))?;
    let hash = Sha256::digest(&text).into();
    let text = std::str::from_utf8(&text)
        .map_err(|_| format!("API_KEYS_FILE: {} is not UTF-8", path.display()))?;
    let entries = parse_key_file(text, is_yaml(path))
        .map_err(|why| format!("API_KEYS_FILE: {}: {why}", path.display()))?;
    Ok((hash, entries))
}

/// Reloads the keys file on SIGHUP and whenever its text changes (read every `every`; zero:
/// on SIGHUP only), until `stop`.
pub fn spawn_reloader(
    ring: Arc<KeyRing>,
    every: Duration,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        let mut tick = (!every.is_zero()).then(|| {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        loop {
            let polled = async {
                match tick.as_mut() {
                    Some(tick) => {
                        tick.tick().await;
                    }
                    None => std::future::pending().await,
                }
            };
            #[cfg(unix)]
            let hung_up = hangup.recv();
            #[cfg(not(unix))]
            let hung_up = std::future::pending::<Option<()>>();
            let forced = tokio::select! {
                () = stop.cancelled() => return,
                _ = hung_up => {
                    tracing::info!("SIGHUP: reloading the keys file");
                    true
                }
                () = polled => false,
            };
            let ring = Arc::clone(&ring);
            let _ = tokio::task::spawn_blocking(move || ring.reload(forced)).await;
        }
    }))
}
