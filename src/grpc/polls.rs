//! What a poll may hold in memory. `POLL_MAX_BYTES` bounds one poll's answer; the messages
//! read are also charged to the calls' shared budget (`MAX_INFLIGHT_BYTES`) until the answer has
//! been sent, so many polls answered to slow readers cannot hold more than that between them.

use tonic::Status;

use crate::{answer::over_budget, broker::StoredMessage, budget};

/// The most bytes a poll reads now: `POLL_MAX_BYTES`, or what the shared budget has left when
/// that is less. Refused with UNAVAILABLE before reading when the budget is spent.
pub(super) fn read_limit(poll_max_bytes: usize) -> Result<usize, Status> {
    match budget::room() {
        None => Ok(poll_max_bytes),
        Some(Ok(room)) => Ok(room.min(poll_max_bytes)),
        Some(Err(exhausted)) => Err(over_budget(exhausted, "the poll cannot be answered now")),
    }
}

/// Charges the messages read to the call's answer. Refused (and nothing committed, since the
/// caller commits after this) when other calls took the room since [`read_limit`].
pub(super) fn charge_polled(messages: &[StoredMessage]) -> Result<(), Status> {
    let bytes = messages.iter().map(StoredMessage::size).sum();
    match budget::charge_answer(bytes) {
        None | Some(Ok(())) => Ok(()),
        Some(Err(exhausted)) => Err(over_budget(
            exhausted,
            &format!("the poll read {} messages of {bytes} bytes", messages.len()),
        )),
    }
}
