//! What a poll may hold in memory. `POLL_MAX_BYTES` bounds one poll's answer; the messages
//! read are also charged to the calls' shared budget (`MAX_INFLIGHT_BYTES`) until the answer has
//! been sent, so many polls answered to slow readers cannot hold more than that between them.
//! The answer as encoded is held to `POLL_MAX_BYTES` too: gRPC clients refuse a message larger
//! than 4 MiB unless told otherwise (grpc-go, grpc-java, grpcio, grpc-js, connect-go, tonic),
//! the default, so an answer they cannot read is never built, nor committed past.

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

/// What an answer adds around one message at most: a poll's other fields and the message's
/// length, or a subscription's cursor and the item around it.
const ANSWER_FRAMING: usize = 1024;

/// The most one message may encode to for an answer of it alone to stay within `max_bytes`.
pub(crate) fn message_room(max_bytes: usize) -> usize {
    max_bytes.saturating_sub(ANSWER_FRAMING)
}

/// Keeps the first of `messages` whose answer encodes within `max_bytes` (always the first
/// one: a message larger than that alone is answered alone); `true` when some were left out.
/// What was left out is read again by the next poll: the caller commits only what it keeps.
pub(super) fn fit_answer<M: prost::Message>(messages: &mut Vec<M>, max_bytes: usize) -> bool {
    // The answer's other fields at their largest: a partition id and a count (6 bytes each),
    // an offset (11).
    let mut total = 23;
    let keep = messages
        .iter()
        .position(|message| {
            let len = message.encoded_len();
            total += 1 + prost::length_delimiter_len(len) + len;
            total > max_bytes
        })
        .map_or(messages.len(), |over| over.max(1));
    let cut = keep < messages.len();
    messages.truncate(keep);
    cut
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::fit_answer;
    use crate::proto;

    fn polled(offset: u64, payload: usize) -> proto::PolledMessage {
        proto::PolledMessage {
            offset,
            body: Some(proto::polled_message::Body::Payload(
                vec![7; payload].into(),
            )),
            ..Default::default()
        }
    }

    #[test]
    fn an_answer_keeps_what_encodes_within_the_limit_and_at_least_one_message() {
        let answer = |messages: &[proto::PolledMessage]| proto::PollMessagesResponse {
            partition_id: u32::MAX,
            current_offset: u64::MAX,
            messages: messages.to_vec(),
        };
        let all: Vec<_> = (0..10).map(|offset| polled(offset, 1000)).collect();
        let whole = answer(&all).encoded_len();
        for limit in (whole - 3000..whole + 40).step_by(7) {
            let mut kept = all.clone();
            let cut = fit_answer(&mut kept, limit);
            assert_eq!(cut, kept.len() < all.len(), "limit {limit}");
            // Within the limit, and no message more would have been (the other fields are
            // counted at their largest, so a few bytes of the limit may go unused).
            assert!(answer(&kept).encoded_len() <= limit, "limit {limit}");
            if cut {
                let one_more = answer(&all[..=kept.len()]).encoded_len();
                assert!(one_more + 6 > limit, "limit {limit}: {} kept", kept.len());
            }
        }
        assert!(!fit_answer(&mut all.clone(), whole + 6));
        // A message larger than the limit alone is still answered.
        let mut large = vec![polled(0, 5000), polled(1, 10)];
        assert!(fit_answer(&mut large, 1000));
        assert_eq!(large.len(), 1);
        let mut none: Vec<proto::PolledMessage> = Vec::new();
        assert!(!fit_answer(&mut none, 10));
    }
}
