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
//!
//! That bounds what one connection holds, not what all of them do: each of a thousand
//! connections decoding two blocks a turn held about 400 MB between them, as requests handed to
//! the runtime whose tasks had not run yet. [`HeadGate`] counts those requests across the
//! process, and while [`MAX_WAITING_HEADS`] wait, HTTP/2 connections read no header block
//! until half have begun (and been served, or refused and dropped); their other frames (DATA,
//! PING, WINDOW_UPDATE) go on.
//!
//! Waiting a turn among a flood's connections, a client sending one request at a time was
//! served at 60 requests a second instead of 100. A quiet connection does not wait for the
//! gate: one with no call of its own in flight, whose client (its address, `clients.rs`) has
//! at most [`QUIET_CLIENT_CONNECTIONS`] open, reads its next header block's frame at once, once
//! for each call it has begun since, if one of [`QUIET_HEADS`] places is free. The place is
//! taken before the frame is read and handed to the next request the connection hands on,
//! which holds it until its task begins (or given back once the block is seen to carry none,
//! or with the connection); those requests are not counted among the gate's, so they never
//! hold it shut. The place passes from the pace to the request within the connection's one
//! task (hyper calls the service from the connection's future), never across threads. A
//! flood's connections can be quiet too (spread over many addresses, their calls refused at
//! once): then they share those few places, and the gate goes on for everyone else as before.
//! (Unbounded, with only the client's count to tell them apart, a flood from 50 addresses held
//! the gate shut with quiet requests, and a client keeping 100 calls in flight on one
//! connection fell to a fifth of its rate; with 32 places, to half: BENCHMARKS.md.)

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};

use prometheus_client::metrics::counter::Counter;

/// What a HEADERS or CONTINUATION frame costs of the task's budget (128 a turn): a connection
/// decodes two header blocks a turn, and those in the read that brought the second. (Eight a
/// turn held 2.5 times the memory under a flood, and two cost a unary call nothing measurable:
/// BENCHMARKS.md.)
pub(super) const HEAD_COST: u32 = 64;

/// Bytes a connection let in by a pressed [`HeadGate`] reads at once: two of a flood's header
/// blocks of a few hundred bytes, or a few dozen ordinary ones.
pub(super) const PRESSED_READ: usize = 1024;

const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;

/// Connections a client may have open and still have its connections read as quiet.
pub(super) const QUIET_CLIENT_CONNECTIONS: usize = 4;

/// Requests from quiet connections that may wait to begin at once, beside the gate's.
pub(super) const QUIET_HEADS: usize = 8;

/// Requests handed on by their connections whose tasks have not begun, across the process,
/// past which HTTP/2 connections read no header block: at most a few tens of kilobytes of decoded head
/// each (a 20 KiB list of one-byte fields), so about 16 MB between them.
pub(super) const MAX_WAITING_HEADS: usize = 256;

/// Counts requests handed on and not yet begun ([`HeadTicket`]s), and parks the HTTP/2
/// connections that would read more while [`MAX_WAITING_HEADS`] wait.
#[derive(Debug)]
pub(super) struct HeadGate {
    waiting: AtomicUsize,
    cap: usize,
    /// Connections parked while the gate was shut, woken together (in the order they came)
    /// once half the waiting requests have begun.
    parked: Mutex<Vec<Waker>>,
    /// Bumped at each wake-up, so a connection parks once per closing, however often its
    /// task is polled for other work meanwhile.
    wakeups: AtomicU64,
    /// How many are parked, read without the lock.
    queued: AtomicUsize,
    /// Places of quiet connections' requests taken ([`QuietPass`]), and how many there are.
    quiet: AtomicUsize,
    quiet_cap: usize,
    /// Times a connection was parked (`http2_reads_held`), and a quiet connection's block let
    /// by (`http2_quiet_reads`).
    held: Counter,
    quiet_reads: Counter,
}

impl HeadGate {
    pub(super) fn new(
        cap: usize,
        quiet_cap: usize,
        held: Counter,
        quiet_reads: Counter,
    ) -> Arc<Self> {
        Arc::new(Self {
            waiting: AtomicUsize::new(0),
            quiet: AtomicUsize::new(0),
            quiet_cap,
            cap,
            parked: Mutex::new(Vec::new()),
            wakeups: AtomicU64::new(0),
            queued: AtomicUsize::new(0),
            held,
            quiet_reads,
        })
    }

    /// A request handed on: counted until the ticket is dropped (when its task first runs);
    /// in the place its connection's quiet pass took, if it holds one.
    pub(super) fn ticket(self: &Arc<Self>, pass: &QuietPass) -> HeadTicket {
        let quiet = pass.0.swap(false, Ordering::SeqCst);
        if !quiet {
            self.waiting.fetch_add(1, Ordering::SeqCst);
        }
        HeadTicket {
            gate: Arc::clone(self),
            quiet,
        }
    }

    /// Takes a quiet connection's place, if one is free.
    fn take_quiet(&self) -> bool {
        self.quiet
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |taken| {
                (taken < self.quiet_cap).then_some(taken + 1)
            })
            .is_ok()
    }

    /// Quiet places taken now (for tests).
    #[cfg(test)]
    pub(super) fn quiet(&self) -> usize {
        self.quiet.load(Ordering::SeqCst)
    }

    /// Requests waiting now (for tests).
    #[cfg(test)]
    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    fn is_open(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) < self.cap
    }

    /// Half the cap or more wait, or connections are parked: connections read a frame at a
    /// time, and a header block's [`PRESSED_READ`] bytes at a time.
    fn is_pressed(&self) -> bool {
        self.queued.load(Ordering::SeqCst) > 0
            || self.waiting.load(Ordering::SeqCst) >= self.cap / 2
    }

    /// `Ready` while fewer than the cap wait and no connection is parked; else parks the task
    /// (once per closing: `parked_in` remembers when) until half of them have begun. A
    /// connection that finds others parked parks behind them, even with room left: else those
    /// woken by their own sockets' reads would take all the room, turn after turn, while
    /// parked ones waited.
    fn poll_open(&self, cx: &mut Context<'_>, parked_in: &mut Option<u64>) -> Poll<()> {
        if self.queued.load(Ordering::SeqCst) == 0 && self.is_open() {
            return Poll::Ready(());
        }
        // Nothing under the lock panics; were it poisoned, the list is still whole.
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        if self.waiting.load(Ordering::SeqCst) <= self.cap / 2 {
            // Half have begun since the last parked here: all go on.
            let woken = self.unpark(&mut parked);
            drop(parked);
            woken.into_iter().for_each(Waker::wake);
            return Poll::Ready(());
        }
        let wakeups = self.wakeups.load(Ordering::SeqCst);
        if *parked_in != Some(wakeups) {
            parked.push(cx.waker().clone());
            self.queued.store(parked.len(), Ordering::SeqCst);
            *parked_in = Some(wakeups);
            self.held.inc();
        }
        Poll::Pending
    }

    /// Takes every parked connection's waker, to be woken once the lock is let go.
    fn unpark(&self, parked: &mut Vec<Waker>) -> Vec<Waker> {
        self.wakeups.fetch_add(1, Ordering::SeqCst);
        self.queued.store(0, Ordering::SeqCst);
        std::mem::take(parked)
    }

    fn release(&self) {
        let before = self.waiting.fetch_sub(1, Ordering::SeqCst);
        if before == self.cap / 2 + 1 {
            let woken =
                self.unpark(&mut self.parked.lock().unwrap_or_else(PoisonError::into_inner));
            woken.into_iter().for_each(Waker::wake);
        }
    }
}

/// One request counted by a [`HeadGate`] until dropped: among the gate's, or in a quiet
/// connection's place.
#[derive(Debug)]
pub(super) struct HeadTicket {
    gate: Arc<HeadGate>,
    quiet: bool,
}

impl Drop for HeadTicket {
    fn drop(&mut self) {
        if self.quiet {
            self.gate.quiet.fetch_sub(1, Ordering::SeqCst);
        } else {
            self.gate.release();
        }
    }
}

/// A connection's quiet place, taken by its pace for a header block and handed to the next
/// request its connection hands on ([`HeadGate::ticket`]); given back if the connection ends
/// first.
#[derive(Debug, Clone, Default)]
pub(super) struct QuietPass(Arc<AtomicBool>);

/// A connection's own calls and its client's connections, as its [`HeadPace`] sees them
/// before a header block.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct OwnCalls {
    /// Calls whose answers are not sent yet.
    pub(super) in_flight: usize,
    /// Calls begun since the connection opened.
    pub(super) begun: u64,
    /// Connections its client has open; `None` when its client is not counted (a trusted
    /// proxy, which carries many).
    pub(super) client_connections: Option<usize>,
}

impl OwnCalls {
    /// None in flight, one begun since `last` (the count when the connection last read a block
    /// this way, so each such block was a request), and a client with few connections.
    fn is_quiet_since(self, last: Option<u64>) -> bool {
        self.in_flight == 0
            && last != Some(self.begun)
            && self
                .client_connections
                .is_some_and(|open| open <= QUIET_CLIENT_CONNECTIONS)
    }
}

/// Follows the HTTP/2 frames read after the preface, and what their header blocks owe.
#[derive(Debug)]
pub(super) struct HeadPace {
    /// The frame header being read, and how much of it has arrived.
    header: [u8; FRAME_HEADER],
    filled: usize,
    /// Bytes of the current frame's payload still to come.
    payload_left: usize,
    /// Budget owed for header blocks read, paid before the next read.
    owed: u32,
    /// The frame whose payload is being read is a HEADERS or CONTINUATION frame.
    in_block: bool,
    gate: Arc<HeadGate>,
    /// The gate's wake-up this connection last parked for.
    parked_in: Option<u64>,
    /// The frame being read is a header block let past the gate for a quiet connection.
    quiet_block: bool,
    /// [`OwnCalls::begun`] when the connection was last let past that way.
    quiet_at: Option<u64>,
    /// The place a quiet block takes, shared with the connection's requests.
    pass: QuietPass,
    /// The quiet block's frame has been read whole, and then a read returned `Pending`: by the
    /// next read, hyper has handed on whatever the block carried.
    quiet_read: bool,
    waited: bool,
}

impl HeadPace {
    pub(super) fn new(gate: Arc<HeadGate>, pass: QuietPass) -> Self {
        Self {
            header: [0; FRAME_HEADER],
            filled: 0,
            payload_left: 0,
            owed: 0,
            in_block: false,
            gate,
            parked_in: None,
            quiet_block: false,
            quiet_at: None,
            pass,
            quiet_read: false,
            waited: false,
        }
    }

    /// `Ready` when the connection may read on, with the most it may read at once (`None`:
    /// what the caller's buffer takes). What its earlier header blocks owe is paid first from
    /// the task's budget (`Pending`, the task woken to run again later, once this turn's is
    /// spent). While the process's [`HeadGate`] is pressed, the connection reads a frame at a
    /// time, so it knows what it reads: frame headers and the payloads of other frames (DATA,
    /// WINDOW_UPDATE, PING) go on, and only a header block's payload, without which hyper
    /// decodes nothing, waits for the gate; let in, it reads [`PRESSED_READ`] bytes. A quiet
    /// connection (`calls`) reads its block's frame without waiting, and no further.
    pub(super) fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        calls: OwnCalls,
    ) -> Poll<Option<usize>> {
        if self.quiet_read && self.waited {
            // The block carried no request (a reset stream, a refused list): its place goes back.
            self.quiet_read = false;
            self.waited = false;
            self.give_back();
        }
        std::task::ready!(self.poll_paid(cx));
        if !self.gate.is_pressed() {
            return Poll::Ready(None);
        }
        if self.payload_left == 0 {
            return Poll::Ready(Some(FRAME_HEADER - self.filled));
        }
        if !self.in_block || self.quiet_block {
            return Poll::Ready(Some(self.payload_left));
        }
        // A place this connection still holds is used again, never taken twice.
        if calls.is_quiet_since(self.quiet_at)
            && (self.pass.0.load(Ordering::SeqCst) || self.gate.take_quiet())
        {
            self.pass.0.store(true, Ordering::SeqCst);
            self.gate.quiet_reads.inc();
            self.quiet_block = true;
            self.quiet_at = Some(calls.begun);
            return Poll::Ready(Some(self.payload_left));
        }
        // Let in, it may read past the block too: a client's next small blocks come with it.
        std::task::ready!(self.gate.poll_open(cx, &mut self.parked_in));
        Poll::Ready(Some(PRESSED_READ))
    }

    /// A read of the connection returned `Pending` (its task goes back to hyper, which hands on
    /// the requests decoded so far before it reads again).
    pub(super) fn waited(&mut self) {
        self.waited = self.quiet_read;
    }

    /// Gives the connection's quiet place back, if no request took it.
    fn give_back(&self) {
        if self.pass.0.swap(false, Ordering::SeqCst) {
            self.gate.quiet.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn poll_paid(&mut self, cx: &mut Context<'_>) -> Poll<()> {
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
                self.quiet_read |= self.payload_left == 0 && self.quiet_block;
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
                self.in_block = kind == HEADERS || kind == CONTINUATION;
                self.quiet_block = false;
                if self.in_block {
                    self.owed = self.owed.saturating_add(HEAD_COST);
                }
            }
        }
    }

    /// Whether the connection holds a quiet place not yet handed to a request (for tests).
    #[cfg(test)]
    pub(super) fn holds_quiet(&self) -> bool {
        self.pass.0.load(Ordering::SeqCst)
    }

    /// Budget owed now (for tests).
    #[cfg(test)]
    pub(super) fn owed(&self) -> u32 {
        self.owed
    }
}

impl Drop for HeadPace {
    /// A place taken for a block whose request never came is given back with the connection.
    fn drop(&mut self) {
        self.give_back();
    }
}
