//! The memory budget of calls in flight (`MAX_INFLIGHT_BYTES`): request body bytes, and what
//! decoding them builds (protobuf structs, REST's parsed JSON), charged by each call and given
//! back when it is answered; and the messages a poll answers with, charged when read and given
//! back once the answer has been sent. A call that would go over is refused.
//!
//! The body-limit layer opens a call's [`Charge`] and runs the call inside [`scope`]; the
//! protobuf codec and the REST transcoder, deeper in the same task, charge through [`charge`].
//!
//! Every answer is watched by its connection ([`AnswerWatch`]): an HTTP/2 client can read its
//! socket yet open no flow-control window, so no write ever stalls and the write timeout never
//! fires, while the answer keeps its memory (and a poll's answer its share of the budget).
//! Enough such answers would spend the budget, or the process's memory.

use std::{
    future::Future,
    sync::{
        Arc, Mutex, PoisonError, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_compression::tokio::bufread::ZstdDecoder;
use tokio::sync::Notify;

/// Bytes held by all calls at once, against a maximum.
#[derive(Debug)]
pub struct InflightBytes {
    used: AtomicUsize,
    max: usize,
}

impl InflightBytes {
    pub fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max,
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn try_charge(&self, bytes: usize) -> Result<(), Exhausted> {
        if bytes > self.max {
            return Err(Exhausted::Never { max: self.max });
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.max)
            })
            .map(|_| ())
            .map_err(|_| Exhausted::Busy { max: self.max })
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Why a charge was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exhausted {
    /// More than the whole budget: this call can never be served.
    #[error(
        "the call needs more than the {max} bytes all calls together may hold (MAX_INFLIGHT_BYTES)"
    )]
    Never { max: usize },
    /// Other calls hold the budget now; a retry may pass.
    #[error(
        "the gateway holds its limit of {max} bytes for calls in flight (MAX_INFLIGHT_BYTES); retry shortly"
    )]
    Busy { max: usize },
}

/// One call's share of [`InflightBytes`], given back when dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<InflightBytes>,
    bytes: AtomicUsize,
    /// What the call's answer holds (polled messages): kept until the answer is sent.
    answer: AtomicUsize,
    /// Set when the request body found the budget spent, so the answer says so.
    exhausted: AtomicBool,
    /// Set once the call has been answered: what it held is given back, and a request body
    /// still streaming in (a bidirectional stream) is no longer charged.
    closed: AtomicBool,
    /// Set for a call whose messages arrive compressed: the body was charged as it came, but
    /// the decoder also reads what each message inflated to, so it charges that too.
    inflated: AtomicBool,
}

impl Charge {
    pub fn new(budget: Arc<InflightBytes>) -> Self {
        Self {
            budget,
            bytes: AtomicUsize::new(0),
            answer: AtomicUsize::new(0),
            exhausted: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            inflated: AtomicBool::new(false),
        }
    }

    pub fn add(&self, bytes: usize) -> Result<(), Exhausted> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(());
        }
        // A call whose own charges would pass the whole budget can never be served, however
        // idle the gateway: not a reason to retry.
        if self.bytes.load(Ordering::Acquire).saturating_add(bytes) > self.budget.max {
            return Err(Exhausted::Never {
                max: self.budget.max,
            });
        }
        self.budget.try_charge(bytes)?;
        self.bytes.fetch_add(bytes, Ordering::AcqRel);
        Ok(())
    }

    /// Gives back up to `bytes` of what the call has charged (an estimate it will not use).
    pub fn give_back(&self, bytes: usize) {
        let taken = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                Some(held.saturating_sub(bytes))
            })
            .map_or(0, |held| held.min(bytes));
        self.budget.release(taken);
    }

    /// Charges bytes the answer will hold until it is sent (see [`Charge::holds_answer`]).
    pub fn add_answer(&self, bytes: usize) -> Result<(), Exhausted> {
        self.budget.try_charge(bytes)?;
        self.answer.fetch_add(bytes, Ordering::AcqRel);
        Ok(())
    }

    /// Whether the answer holds charged bytes, so the charge must live as long as its body.
    pub fn holds_answer(&self) -> bool {
        self.answer.load(Ordering::Acquire) > 0
    }

    /// Gives back what the request charged and charges nothing more: the call is answered.
    /// What its answer holds stays charged until the charge is dropped with the answer's body.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.budget.release(self.bytes.swap(0, Ordering::AcqRel));
    }

    pub fn mark_exhausted(&self) {
        self.exhausted.store(true, Ordering::Release);
    }

    pub fn is_exhausted(&self) -> bool {
        self.exhausted.load(Ordering::Acquire)
    }

    /// The call's messages arrive compressed: decoders charge the inflated bytes they read.
    pub fn count_inflated(&self) {
        self.inflated.store(true, Ordering::Release);
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget
            .release(*self.bytes.get_mut() + *self.answer.get_mut());
    }
}

/// The charged answers one connection is sending, each with the last time the connection took
/// a part of it, so the connection can be closed when one waits too long: the client asked
/// for it and takes none of it.
#[derive(Debug)]
pub struct AnswerWatch {
    opened: Instant,
    answers: Mutex<Vec<Weak<AnswerClock>>>,
    /// Notified when an answer starts being watched, or has something to hand over again.
    registered: Arc<Registered>,
    /// Set by an answer that has given up on its client ([`AnswerWatch::cut`]).
    cut: AtomicBool,
    cutting: Notify,
    /// Answers watched so far, and that count when the check last found none left: see
    /// [`AnswerWatch::deadline`].
    watched: AtomicU64,
    seen: AtomicU64,
}

/// When the connection last took a part of one answer; dropped with the answer.
#[derive(Debug)]
pub struct AnswerClock {
    opened: Instant,
    /// Milliseconds since the connection opened.
    last_ms: AtomicU64,
    /// The answer has nothing to hand over (a live stream between messages): waiting on
    /// itself, not on its client, so it is no stalled answer.
    waiting: AtomicBool,
    registered: Arc<Registered>,
}

/// Tells the connection's check that an answer is to be timed, unless the check already
/// sleeps until a deadline: any answer timed from now is due after that one, and the check
/// looks again then. (One wake-up per call would cost every call a turn of its connection.)
#[derive(Debug, Default)]
struct Registered {
    notify: Notify,
    /// The check sleeps until a deadline.
    armed: AtomicBool,
}

impl Registered {
    fn wake(&self) {
        if !self.armed.load(Ordering::Acquire) {
            self.notify.notify_one();
        }
    }
}

impl AnswerClock {
    /// The connection took a part of the answer (or asked for one), or was handed one.
    pub fn touch(&self) {
        self.last_ms
            .store(millis_since(self.opened), Ordering::Relaxed);
        if self.waiting.swap(false, Ordering::AcqRel) {
            // Watched again: the connection's check must count it from now.
            self.registered.wake();
        }
    }

    /// The connection asked for more and the answer has none yet.
    pub fn wait(&self) {
        self.waiting.store(true, Ordering::Release);
    }

    fn last(&self) -> Instant {
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

fn millis_since(opened: Instant) -> u64 {
    u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Default for AnswerWatch {
    fn default() -> Self {
        Self::new()
    }
}

impl AnswerWatch {
    pub fn new() -> Self {
        Self {
            opened: Instant::now(),
            answers: Mutex::new(Vec::new()),
            registered: Arc::default(),
            cut: AtomicBool::new(false),
            cutting: Notify::new(),
            watched: AtomicU64::new(0),
            seen: AtomicU64::new(0),
        }
    }

    /// Closes the connection now: one of its answers waited too long for a client that takes
    /// none of it (a subscriber that stopped reading). Over HTTP/2 nothing else ends a stream
    /// whose client opens no window: its answer is never asked for again.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::Release);
        self.cutting.notify_one();
    }

    /// Resolves when an answer cuts the connection (at once if one did since the last call).
    pub async fn cut_off(&self) {
        self.cutting.notified().await;
    }

    /// Starts watching an answer, taken as of now; it is watched until the clock is dropped.
    pub fn watch(&self) -> Arc<AnswerClock> {
        let clock = Arc::new(AnswerClock {
            opened: self.opened,
            last_ms: AtomicU64::new(millis_since(self.opened)),
            waiting: AtomicBool::new(false),
            registered: Arc::clone(&self.registered),
        });
        let mut answers = self.lock();
        // Answers sent are forgotten here too, not only when the connection looks: a
        // connection of many quick polls would otherwise keep a dead entry for each.
        if answers.len() >= 64 && answers.len().is_power_of_two() {
            answers.retain(|answer| answer.strong_count() > 0);
        }
        answers.push(Arc::downgrade(&clock));
        self.watched.fetch_add(1, Ordering::Relaxed);
        drop(answers);
        self.registered.wake();
        clock
    }

    /// When the connection's check should look again: when the answer it has left longest
    /// will have waited `limit`; `None` when it is sending none (or each one it sends waits on
    /// itself) and has watched none since it last found none, so the next one wakes it.
    ///
    /// With none left but some watched since, it looks again after `limit` instead, and is not
    /// woken by the answers watched meanwhile: any of them is due after that look. A wake-up per
    /// call would cost every call of a connection that has one call at a time (a unary client)
    /// an extra turn of its connection; this costs a look per `limit` while calls keep coming,
    /// and one more once they stop.
    pub fn deadline(&self, limit: Duration) -> Option<Instant> {
        if self.cut.load(Ordering::Acquire) {
            return Some(Instant::now());
        }
        let mut answers = self.lock();
        let deadline = Self::earliest(&mut answers, limit).or_else(|| {
            let watched = self.watched.load(Ordering::Relaxed);
            (self.seen.swap(watched, Ordering::Relaxed) != watched).then(|| Instant::now() + limit)
        });
        // Under the lock, so an answer watched from now on sees what the check will sleep on.
        self.registered
            .armed
            .store(deadline.is_some(), Ordering::Release);
        deadline
    }

    /// Whether an answer has waited `limit` or more since the connection last took a part of it.
    pub fn is_stalled(&self, limit: Duration) -> bool {
        if self.cut.load(Ordering::Acquire) {
            return true;
        }
        Self::earliest(&mut self.lock(), limit).is_some_and(|deadline| deadline <= Instant::now())
    }

    /// When the answer left longest will have waited `limit`, forgetting answers dropped.
    fn earliest(answers: &mut Vec<Weak<AnswerClock>>, limit: Duration) -> Option<Instant> {
        answers.retain(|answer| answer.strong_count() > 0);
        answers
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|answer| !answer.waiting.load(Ordering::Acquire))
            .map(|answer| answer.last())
            .min()
            .map(|last| last + limit)
    }

    /// Resolves when an answer starts being watched (at once if one did since the last call).
    pub async fn registered(&self) {
        self.registered.notify.notified().await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Weak<AnswerClock>>> {
        // A panic elsewhere leaves the list whole: pushes and retains do not unwind midway.
        self.answers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

tokio::task_local! {
    static CALL: Arc<Charge>;
}

/// A call running with its budget.
pub type Scoped<F> = tokio::task::futures::TaskLocalFuture<Arc<Charge>, F>;

/// Runs a call with `charge` as its budget.
pub fn scope<F: Future>(charge: Arc<Charge>, call: F) -> Scoped<F> {
    CALL.scope(charge, call)
}

/// Whether the current call's messages arrive compressed (see [`Charge::count_inflated`]).
pub fn inflated() -> bool {
    CALL.try_with(|charge| charge.inflated.load(Ordering::Acquire))
        .unwrap_or(false)
}

/// Charges `bytes` to the current call; `None` outside a call (a client decoding an answer).
pub fn charge(bytes: usize) -> Option<Result<(), Exhausted>> {
    CALL.try_with(|charge| charge.add(bytes)).ok()
}

/// Gives back up to `bytes` of what the current call has charged; nothing outside a call.
pub fn give_back(bytes: usize) {
    let _ = CALL.try_with(|charge| charge.give_back(bytes));
}

/// Charges `bytes` the current call's answer holds until it is sent; `None` outside a call
/// (a subscription's own task, which `POLL_MAX_BYTES` and its channel bound instead).
pub fn charge_answer(bytes: usize) -> Option<Result<(), Exhausted>> {
    CALL.try_with(|charge| charge.add_answer(bytes)).ok()
}

/// Bytes the whole budget has left now, as seen from the current call (`Busy` when none);
/// `None` outside a call. A poll reads no more than this, so what it holds is bounded before it
/// reads.
pub fn room() -> Option<Result<usize, Exhausted>> {
    CALL.try_with(|charge| {
        let budget = &charge.budget;
        match budget.max.saturating_sub(budget.used()) {
            0 => Err(Exhausted::Busy { max: budget.max }),
            room => Ok(room),
        }
    })
    .ok()
}

/// The largest zstd window a body may need: 8 MiB, as RFC 9659 sets for the `zstd` content
/// coding. A frame may ask for up to 2 GiB, and a decoder sets aside its whole window (128 MiB
/// by zstd's default ceiling) before it writes a byte; a frame that asks for more is refused as
/// malformed.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// A zstd decoder held to [`ZSTD_WINDOW_LOG_MAX`].
pub fn zstd_decoder<R: tokio::io::AsyncBufRead>(compressed: R) -> ZstdDecoder<R> {
    ZstdDecoder::with_params(
        compressed,
        &[async_compression::zstd::DParameter::window_log_max(
            ZSTD_WINDOW_LOG_MAX,
        )],
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::time::Duration;

    use super::{
        AnswerWatch, Charge, Exhausted, InflightBytes, charge, charge_answer, room, scope,
    };

    /// `text` in one zstd frame that declares a window of 2^`window_log` bytes (no content size,
    /// as a streaming client writes it, so zstd cannot shrink the window to the text).
    pub(crate) fn zstd_with_window(text: &[u8], window_log: u32) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).expect("encoder");
        encoder.window_log(window_log).expect("window");
        encoder.include_contentsize(false).expect("no size");
        encoder.write_all(text).expect("compressed");
        encoder.finish().expect("compressed")
    }

    #[tokio::test]
    async fn a_zstd_frame_that_needs_a_window_past_8_mib_is_not_decoded() {
        use tokio::io::AsyncReadExt;
        for (window_log, decodes) in [(super::ZSTD_WINDOW_LOG_MAX, true), (24, false), (27, false)]
        {
            let frame = zstd_with_window(b"{\"name\":\"orders\"}", window_log);
            let mut inflated = Vec::new();
            let read = super::zstd_decoder(frame.as_slice())
                .read_to_end(&mut inflated)
                .await;
            assert_eq!(read.is_ok(), decodes, "window 2^{window_log}: {read:?}");
            if decodes {
                assert_eq!(inflated, b"{\"name\":\"orders\"}");
            }
        }
    }

    #[tokio::test]
    async fn a_watched_answer_is_stalled_once_not_taken_for_the_limit_and_forgotten_when_dropped() {
        let watch = AnswerWatch::new();
        let limit = Duration::from_millis(200);
        let past = || tokio::time::sleep(Duration::from_millis(250));
        assert_eq!(watch.deadline(limit), None, "nothing to watch");
        let first = watch.watch();
        watch.registered().await;
        assert!(!watch.is_stalled(limit), "just asked for");
        past().await;
        assert!(watch.is_stalled(limit), "none of it taken for the limit");
        first.touch();
        let second = watch.watch();
        assert!(!watch.is_stalled(limit), "both taken from just now");
        past().await;
        first.touch();
        assert!(
            watch.is_stalled(limit),
            "one answer taken from does not cover another left waiting"
        );
        drop(second);
        assert!(!watch.is_stalled(limit), "a dropped answer is not watched");
        drop(first);
        // The wake-up the second answer left (nothing looked between) is taken first.
        let _ = tokio::time::timeout(Duration::ZERO, watch.registered()).await;
        // None left, but two watched since the check last found none: it looks again after
        // the limit, and an answer watched meanwhile does not wake it.
        let before = std::time::Instant::now();
        let look = watch.deadline(limit).expect("a look after the limit");
        assert!(look >= before + limit && look <= std::time::Instant::now() + limit);
        let third = watch.watch();
        let woken = tokio::time::timeout(Duration::from_millis(50), watch.registered()).await;
        assert!(woken.is_err(), "not woken while a look is due");
        drop(third);
        assert!(watch.deadline(limit).is_some(), "one watched since");
        assert_eq!(
            watch.deadline(limit),
            None,
            "none watched since the last look"
        );
        let fourth = watch.watch();
        let woken = tokio::time::timeout(Duration::from_millis(50), watch.registered()).await;
        assert!(
            woken.is_ok(),
            "woken by the next answer once nothing is due"
        );
        drop(fourth);
    }

    #[tokio::test]
    async fn charges_are_given_back_when_the_call_ends() {
        let budget = Arc::new(InflightBytes::new(100));
        let first = Arc::new(Charge::new(Arc::clone(&budget)));
        assert_eq!(first.add(60), Ok(()));
        let second = Charge::new(Arc::clone(&budget));
        assert_eq!(second.add(50), Err(Exhausted::Busy { max: 100 }));
        assert_eq!(second.add(101), Err(Exhausted::Never { max: 100 }));
        let charged = scope(Arc::clone(&first), async { charge(30) }).await;
        assert_eq!(charged, Some(Ok(())));
        assert_eq!(budget.used(), 90);
        drop(first);
        assert_eq!(budget.used(), 0);
        assert_eq!(charge(1), None, "outside a call nothing is charged");

        let answered = Charge::new(Arc::clone(&budget));
        assert_eq!(answered.add(40), Ok(()));
        answered.close();
        assert_eq!(budget.used(), 0, "given back when answered");
        assert_eq!(answered.add(1000), Ok(()), "nothing charged after");
        drop(answered);
        assert_eq!(budget.used(), 0, "and nothing given back twice");
    }

    #[test]
    fn a_call_past_the_whole_budget_on_its_own_is_never_served() {
        let budget = Arc::new(InflightBytes::new(100));
        let other = Charge::new(Arc::clone(&budget));
        assert_eq!(other.add(30), Ok(()));
        let call = Charge::new(Arc::clone(&budget));
        assert_eq!(call.add(60), Ok(()));
        // 60 + 20 fits the budget alone, but not beside the other call: busy, retry.
        assert_eq!(call.add(20), Err(Exhausted::Busy { max: 100 }));
        // 60 + 50 would not fit even alone: never.
        assert_eq!(call.add(50), Err(Exhausted::Never { max: 100 }));
        assert_eq!(budget.used(), 90, "nothing charged by a refusal");
        call.give_back(50);
        assert_eq!(budget.used(), 40, "an estimate not used is given back");
        call.give_back(50);
        assert_eq!(budget.used(), 30, "never more than the call holds");
    }

    #[tokio::test]
    async fn an_answer_stays_charged_until_its_charge_is_dropped() {
        let budget = Arc::new(InflightBytes::new(100));
        let call = Arc::new(Charge::new(Arc::clone(&budget)));
        let (left, charged) = scope(Arc::clone(&call), async {
            assert_eq!(charge(10), Some(Ok(())));
            (room(), charge_answer(70))
        })
        .await;
        assert_eq!((left, charged), (Some(Ok(90)), Some(Ok(()))));
        assert!(call.holds_answer());
        call.close();
        assert_eq!(
            budget.used(),
            70,
            "the request's bytes are given back, the answer's kept"
        );
        let other = Charge::new(Arc::clone(&budget));
        assert_eq!(other.add_answer(40), Err(Exhausted::Busy { max: 100 }));
        assert_eq!(other.add_answer(30), Ok(()));
        let full = scope(Arc::new(other), async { room() }).await;
        assert_eq!(full, Some(Err(Exhausted::Busy { max: 100 })));
        drop(call);
        assert_eq!(budget.used(), 0);
        assert_eq!(room(), None);
        assert_eq!(charge_answer(1), None);
    }
}
