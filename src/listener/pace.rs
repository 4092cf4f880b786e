//! How many HTTP/2 header blocks a connection decodes before its requests are served.
//!
//! hyper's HTTP/2 connection reads and decodes every frame its socket holds before it hands a
//! single request to be served, and HPACK lets a header block of a few hundred bytes decode
//! to a list of tens of kilobytes (one-byte references to one table entry). A client that
//! keeps `max_concurrent_streams` such requests in flight on each of its connections made the
//! gateway hold them all decoded at once: 40 connections held about 400 MB (BENCHMARKS.md,
//! "An HPACK flood"). [`HeadPace`] reads the frame headers going by and charges each header
//! block to the task's cooperative budget (tokio's `coop`), so a connection's task yields after
//! a few blocks, and the requests decoded so far are served (or refused, and dropped) before
//! it decodes more. DATA frames are not charged: a large body reads as fast as before.

use std::task::{Context, Poll};

/// What a HEADERS or CONTINUATION frame costs of the task's budget (128 a turn): a connection
/// decodes two header blocks a turn, and those in the read that brought the second. (Eight a
/// turn held 2.5 times the memory under a flood, and two cost a unary call nothing measurable:
/// BENCHMARKS.md.)
pub(super) const HEAD_COST: u32 = 64;

const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;

/// Follows the HTTP/2 frames read after the preface, and what their header blocks owe.
#[derive(Debug, Default)]
pub(super) struct HeadPace {
    /// The frame header being read, and how much of it has arrived.
    header: [u8; FRAME_HEADER],
    filled: usize,
    /// Bytes of the current frame's payload still to come.
    payload_left: usize,
    /// Budget owed for header blocks read, paid before the next read.
    owed: u32,
}

impl HeadPace {
    /// Pays what earlier header blocks owe from the task's budget: `Pending` (the task woken
    /// to run again later) once the budget of this turn is spent.
    pub(super) fn poll_paid(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.owed > 0 {
            match tokio::task::coop::poll_proceed(cx) {
                Poll::Ready(unit) => {
                    unit.made_progress();
                    self.owed -= 1;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(())
    }

    /// Follows `bytes`, just read, and owes [`HEAD_COST`] for each header block frame begun.
    pub(super) fn read(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER - self.filled).min(bytes.len());
            self.header[self.filled..self.filled + n].copy_from_slice(&bytes[..n]);
            self.filled += n;
            bytes = &bytes[n..];
            if self.filled == FRAME_HEADER {
                self.filled = 0;
                let [a, b, c, kind, ..] = self.header;
                self.payload_left = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                if kind == HEADERS || kind == CONTINUATION {
                    self.owed = self.owed.saturating_add(HEAD_COST);
                }
            }
        }
    }

    /// Budget owed now (for tests).
    #[cfg(test)]
    pub(super) fn owed(&self) -> u32 {
        self.owed
    }
}
