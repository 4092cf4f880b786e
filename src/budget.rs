//! The memory budget of calls in flight (`MAX_INFLIGHT_BYTES`): request body bytes, and what
//! decoding them builds (protobuf structs, REST's parsed JSON), charged by each call and given
//! back when it is answered; and the messages a poll answers with, charged when read and given
//! back once the answer has been sent. A call that would go over is refused.
//!
//! The body-limit layer opens a call's [`Charge`] and runs the call inside [`scope`]; the
//! protobuf codec and the REST transcoder, deeper in the same task, charge through [`charge`].

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Charge, Exhausted, InflightBytes, charge, charge_answer, room, scope};

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
