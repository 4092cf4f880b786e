//! Stepping past a hole in Iggy's log. After a crash Iggy can hold offsets below a partition's
//! head that it cannot read back (a torn write): a poll there is refused as "invalid offset",
//! and a consumer or subscription asking again from the same place would be refused forever.
//! A refused poll goes on from the next offset Iggy can read, found with one-message polls:
//! doubling steps forward, then a binary search back to the first readable offset.

use std::future::Future;

use crate::broker::{BrokerResult, PolledMessages};

/// One poll's outcome as Iggy gave it.
pub(super) enum Read {
    /// Messages, or none when the poll started past the partition's head.
    Polled(PolledMessages),
    /// Refused as an invalid offset.
    Refused,
}

/// Where a refused poll went on from.
#[derive(Debug)]
pub(super) struct Stepped {
    pub(super) polled: PolledMessages,
    /// The offsets passed over, `[from, to)`, when the poll stepped past a hole.
    pub(super) skipped: Option<(u64, u64)>,
}

/// After a poll of `count` messages from `start` was refused: fewer messages from `start` (a
/// hole further on spoils a longer read), else the first readable offset after `start`. `None`
/// when nothing is readable from `start` to the head: the caller answers no messages, and a
/// later poll steps past once a message lands after the hole. `read(offset, count)` polls.
///
/// The search assumes a hole is one run of unreadable offsets; messages readable inside the
/// span of several holes close together may be passed over with them.
pub(super) async fn step_past<F, Fut>(
    start: u64,
    count: u32,
    mut read: F,
) -> BrokerResult<Option<Stepped>>
where
    F: FnMut(u64, u32) -> Fut,
    Fut: Future<Output = BrokerResult<Read>>,
{
    let mut shorter = count / 2;
    while shorter >= 1 {
        if let Read::Polled(polled) = read(start, shorter).await? {
            return Ok(Some(Stepped {
                polled,
                skipped: None,
            }));
        }
        shorter /= 2;
    }
    // `start` itself cannot be read: double the step until a read succeeds (with a message, or
    // with none past the head), then halve the gap back to the first offset that reads.
    let mut refused = start;
    let mut step = 1u64;
    let (mut readable, mut found) = loop {
        let at = start.saturating_add(step);
        if at == refused {
            return Ok(None);
        }
        match read(at, 1).await? {
            Read::Refused => {
                refused = at;
                step = step.saturating_mul(2);
            }
            Read::Polled(polled) => break (at, polled),
        }
    };
    while readable - refused > 1 {
        let middle = refused + (readable - refused) / 2;
        match read(middle, 1).await? {
            Read::Refused => refused = middle,
            Read::Polled(polled) => {
                readable = middle;
                found = polled;
            }
        }
    }
    let Some(first) = found.messages.first().map(|message| message.offset) else {
        return Ok(None);
    };
    // The whole answer from there, if Iggy reads that far; else the one message found.
    let polled = if count > 1 {
        match read(first, count).await? {
            Read::Polled(polled) if !polled.messages.is_empty() => polled,
            Read::Polled(_) | Read::Refused => found,
        }
    } else {
        found
    };
    Ok(Some(Stepped {
        polled,
        skipped: Some((start, first)),
    }))
}
