use std::time::Duration;

use std::{
    io::Cursor,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
};

use prometheus_client::metrics::counter::Counter;

use tokio::io::{AsyncRead, ReadBuf};

use super::{
    AcceptBackoff, Activity, H2_PREFACE, Head, LogEvery, Rewound,
    clients::ClientConnections,
    default_max_connections,
    pace::{
        HEAD_COST, HeadGate, HeadPace, MAX_WAITING_HEADS, PRESSED_READ, QUIET_CLIENT_CONNECTIONS,
        QUIET_HEADS, QuietPass,
    },
    reserved_descriptors,
};

/// An HTTP/2 frame: its 9-byte header (length, type, flags, stream) and `payload`.
fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("small").to_be_bytes();
    let mut frame = vec![len[1], len[2], len[3], kind, 0x4];
    frame.extend(stream.to_be_bytes());
    frame.extend(payload);
    frame
}

#[test]
fn the_pace_charges_header_blocks_and_nothing_else_however_the_reads_cut_them() {
    // A DATA payload that looks like a HEADERS frame's header must not be taken for one.
    let lookalike = frame(0x1, 3, &[0; 4]);
    let mut data = lookalike.repeat(2000);
    data.truncate(20_000);
    let bytes = [
        frame(0x1, 1, &[0x82, 0x86, 0x84, 0xbe, 0xbe]),
        frame(0x0, 1, &data),
        frame(0x6, 0, &[7; 8]),
        frame(0x9, 1, &[0xbe; 3]),
        frame(0x1, 3, &[]),
    ]
    .concat();
    for cut in [1, 2, 7, 9, 10, 4096, bytes.len()] {
        let mut pace = HeadPace::new(gate(), QuietPass::default());
        for piece in bytes.chunks(cut) {
            pace.read(piece);
        }
        assert_eq!(pace.owed(), 3 * HEAD_COST, "reads of {cut} bytes");
    }
}

/// Reads `stream` in `piece`-byte reads within one poll of the task, until a read is pending
/// or the stream ends: what that turn read, and whether the stream ended.
fn one_turn<S: AsyncRead + Unpin>(
    stream: &mut S,
    piece: usize,
    cx: &mut std::task::Context<'_>,
) -> (usize, bool) {
    let mut read = 0;
    let mut scratch = vec![0u8; piece];
    loop {
        let mut buf = ReadBuf::new(&mut scratch);
        match Pin::new(&mut *stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => return (read, true),
            Poll::Ready(Ok(())) => read += buf.filled().len(),
            Poll::Ready(Err(err)) => panic!("read failed: {err}"),
            Poll::Pending => return (read, false),
        }
    }
}

fn gate() -> Arc<HeadGate> {
    HeadGate::new(
        MAX_WAITING_HEADS,
        QUIET_HEADS,
        Counter::default(),
        Counter::default(),
    )
}

fn rewound(frames: Vec<u8>, http2: bool) -> Rewound<Cursor<Vec<u8>>> {
    rewound_at(frames, http2.then(gate))
}

fn rewound_at(frames: Vec<u8>, gate: Option<Arc<HeadGate>>) -> Rewound<Cursor<Vec<u8>>> {
    let mut head = Head {
        bytes: [0; H2_PREFACE.len()],
        len: H2_PREFACE.len(),
    };
    head.bytes.copy_from_slice(H2_PREFACE);
    let pass = QuietPass::default();
    Rewound {
        head,
        at: 0,
        stream: Cursor::new(frames),
        pace: gate.map(|gate| HeadPace::new(gate, pass.clone())),
        activity: Arc::new(Activity::new()),
        client: None,
        pass,
        lingers: Arc::new(AtomicBool::new(false)),
        linger: None,
    }
}

// The HPACK flood: a few hundred bytes of references decode to a header list of tens of
// kilobytes. A connection whose client sent 40 requests at once decoded all 40 before serving
// one; now its task yields after a few, so those are served (or refused) first.
#[tokio::test]
async fn an_http2_connection_yields_after_a_few_header_blocks_a_turn_and_reads_them_all() {
    let heads = 40;
    let request = frame(0x1, 1, &[0xbe; 100]);
    let frames: Vec<u8> = request.repeat(heads);
    let total = H2_PREFACE.len() + frames.len();

    let mut stream = rewound(frames.clone(), true);
    let mut turns = Vec::new();
    let mut ended = false;
    while !ended {
        let (read, end) =
            std::future::poll_fn(|cx| Poll::Ready(one_turn(&mut stream, request.len(), cx))).await;
        turns.push(read);
        ended = end;
        tokio::task::yield_now().await;
    }
    assert_eq!(turns.iter().sum::<usize>(), total, "turns: {turns:?}");
    let per_turn = usize::try_from(128 / HEAD_COST).expect("small");
    assert!(
        turns.len() >= heads / (per_turn + 1),
        "{heads} header blocks were read in {} turns: {turns:?}",
        turns.len()
    );
    assert!(
        turns[0] <= H2_PREFACE.len() + (per_turn + 1) * request.len(),
        "{turns:?}"
    );

    // HTTP/1.1 bytes (and HTTP/2 DATA) are not paced: one turn reads them all.
    let mut plain = rewound(frames, false);
    let (read, ended) =
        std::future::poll_fn(|cx| Poll::Ready(one_turn(&mut plain, request.len(), cx))).await;
    assert_eq!((read, ended), (total, true));
}

/// A waker that counts its wake-ups.
struct Woken(AtomicUsize);

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn read_once<S: AsyncRead + Unpin>(stream: &mut S, cx: &mut Context<'_>) -> Poll<usize> {
    let mut scratch = [0u8; 8192];
    let mut buf = ReadBuf::new(&mut scratch);
    match Pin::new(stream).poll_read(cx, &mut buf) {
        Poll::Ready(Ok(())) => Poll::Ready(buf.filled().len()),
        Poll::Ready(Err(err)) => panic!("read failed: {err}"),
        Poll::Pending => Poll::Pending,
    }
}

// Two header blocks a turn still let a thousand connections hold about 400 MB of decoded heads
// between them, as requests handed on whose tasks had not run yet. Past a process-wide count
// of those, an HTTP/2 connection reads no header block until half of them have begun.
#[test]
fn header_blocks_wait_while_the_cap_of_requests_waits_to_begin_and_parked_connections_go_first() {
    let held = Counter::default();
    let gate = HeadGate::new(4, 1, held.clone(), Counter::default());
    let request = frame(0x1, 1, &[0xbe; 10]);
    let upload = frame(0x0, 1, &[7; 2000]);
    let frames = [request.clone(), upload, request.clone()].concat();
    let mut stream = rewound_at(frames, Some(Arc::clone(&gate)));
    let woken = Arc::new(Woken(AtomicUsize::new(0)));
    let waker = Waker::from(Arc::clone(&woken));
    let mut cx = Context::from_waker(&waker);
    let mut plain = rewound_at(request.clone(), None);

    let mut tickets: Vec<_> = (0..4).map(|_| gate.ticket(&QuietPass::default())).collect();
    assert_eq!(gate.waiting(), 4);
    // What was read ahead to tell the protocol comes back, then a frame's header; its header
    // block waits.
    assert_eq!(
        read_once(&mut stream, &mut cx),
        Poll::Ready(H2_PREFACE.len())
    );
    assert_eq!(read_once(&mut stream, &mut cx), Poll::Ready(9));
    for _ in 0..3 {
        assert_eq!(read_once(&mut stream, &mut cx), Poll::Pending);
    }
    assert_eq!(
        held.get(),
        1,
        "parked once, however often its task is polled"
    );
    // HTTP/1.1 connections are not held: one request at a time is all they decode.
    assert_eq!(
        read_once(&mut plain, &mut cx),
        Poll::Ready(H2_PREFACE.len())
    );
    assert_eq!(read_once(&mut plain, &mut cx), Poll::Ready(request.len()));

    // One begins: the gate opens, but the parked connection is left until half have begun.
    tickets.pop();
    assert_eq!(woken.0.load(Ordering::SeqCst), 0);
    tickets.pop();
    assert_eq!(
        woken.0.load(Ordering::SeqCst),
        1,
        "woken once two of four had begun"
    );
    // Let in (half still wait): a little past the block, then the rest of the DATA frame and
    // the next frame's header, each on its own.
    assert_eq!(read_once(&mut stream, &mut cx), Poll::Ready(PRESSED_READ));
    assert_eq!(
        read_once(&mut stream, &mut cx),
        Poll::Ready(10 + 9 + 2000 - PRESSED_READ)
    );
    assert_eq!(read_once(&mut stream, &mut cx), Poll::Ready(9));

    // Shut again, with a connection parked: another one that finds it there parks behind it,
    // even with room left, and both go on once half have begun.
    tickets.extend((0..2).map(|_| gate.ticket(&QuietPass::default())));
    assert_eq!(read_once(&mut stream, &mut cx), Poll::Pending);
    let mut other = rewound_at(request.clone(), Some(Arc::clone(&gate)));
    assert_eq!(
        read_once(&mut other, &mut cx),
        Poll::Ready(H2_PREFACE.len())
    );
    assert_eq!(read_once(&mut other, &mut cx), Poll::Ready(9));
    tickets.pop();
    assert_eq!(gate.waiting(), 3);
    assert_eq!(
        read_once(&mut other, &mut cx),
        Poll::Pending,
        "parked behind the first"
    );
    assert_eq!(held.get(), 3);
    tickets.pop();
    assert_eq!(woken.0.load(Ordering::SeqCst), 3, "both woken");
    assert_eq!(read_once(&mut other, &mut cx), Poll::Ready(10));
    assert_eq!(read_once(&mut stream, &mut cx), Poll::Ready(10));
    drop(tickets);
    assert_eq!(gate.waiting(), 0);
}

// Only a header block waits at the gate: an honest upload's DATA, a PING and a WINDOW_UPDATE
// are read on while it is shut, a frame at a time, so a header block behind them is not read
// with them.
#[test]
fn other_frames_are_read_while_the_gate_is_shut_and_header_blocks_a_little_at_a_time() {
    let gate = HeadGate::new(4, 1, Counter::default(), Counter::default());
    let block = frame(0x1, 3, &[0xbe; 2000]);
    let frames = [
        frame(0x0, 1, &[7; 3000]),
        frame(0x6, 0, &[1; 8]),
        frame(0x8, 1, &[0, 0, 1, 0]),
        block.clone(),
    ]
    .concat();
    let mut stream = rewound_at(frames, Some(Arc::clone(&gate)));
    let waker = Waker::from(Arc::new(Woken(AtomicUsize::new(0))));
    let mut cx = Context::from_waker(&waker);
    let tickets: Vec<_> = (0..4).map(|_| gate.ticket(&QuietPass::default())).collect();
    let mut reads = Vec::new();
    while let Poll::Ready(n) = read_once(&mut stream, &mut cx) {
        reads.push(n);
    }
    assert_eq!(reads, [H2_PREFACE.len(), 9, 3000, 9, 8, 9, 4, 9]);
    // Half full, the gate open: the block is read a little at a time.
    drop(tickets);
    let half: Vec<_> = (0..2).map(|_| gate.ticket(&QuietPass::default())).collect();
    let mut reads = Vec::new();
    while let Poll::Ready(n) = read_once(&mut stream, &mut cx) {
        if n == 0 {
            break;
        }
        reads.push(n);
    }
    assert_eq!(reads, [PRESSED_READ, 2000 - PRESSED_READ]);
    // Let in, a read may go past its block: small blocks come several at a time.
    let small = frame(0x1, 5, &[0x82; 20]);
    let mut stream = rewound_at(small.repeat(100), Some(Arc::clone(&gate)));
    assert_eq!(
        read_once(&mut stream, &mut cx),
        Poll::Ready(H2_PREFACE.len())
    );
    assert_eq!(read_once(&mut stream, &mut cx), Poll::Ready(9));
    assert_eq!(read_once(&mut stream, &mut cx), Poll::Ready(PRESSED_READ));
    drop(stream);

    // Not pressed: one read takes what the buffer holds.
    drop(half);
    let mut stream = rewound_at(block.repeat(3), Some(gate));
    assert_eq!(
        read_once(&mut stream, &mut cx),
        Poll::Ready(H2_PREFACE.len())
    );
    assert_eq!(
        read_once(&mut stream, &mut cx),
        Poll::Ready(3 * block.len())
    );
}

// A client sending one request at a time waited its turn among a flood's connections (60
// requests a second against 100). A quiet connection (no call in flight, a client with few
// connections) reads its next header block at once, in one of a few places of its own.
#[test]
fn a_quiet_connection_reads_its_next_header_block_past_a_shut_gate_in_one_of_few_places() {
    let gate = HeadGate::new(4, 1, Counter::default(), Counter::default());
    let request = frame(0x1, 1, &[0xbe; 10]);
    let clients = ClientConnections::new(100, Vec::new(), 64);
    let peer = "192.0.2.7".parse().expect("address");
    let place = clients
        .admit(peer)
        .expect("under the cap")
        .expect("counted");
    let quiet = |frames: Vec<u8>| {
        let mut stream = rewound_at(frames, Some(Arc::clone(&gate)));
        stream.client = Some(place.count());
        stream
    };
    let mut stream = quiet(request.repeat(8));
    let activity = Arc::clone(&stream.activity);
    let waker = Waker::from(Arc::new(Woken(AtomicUsize::new(0))));
    let mut cx = Context::from_waker(&waker);
    let mut tickets: Vec<_> = (0..4).map(|_| gate.ticket(&QuietPass::default())).collect();
    assert_eq!(
        read_once(&mut stream, &mut cx),
        Poll::Ready(H2_PREFACE.len())
    );
    assert_eq!(read_once(&mut stream, &mut cx), Poll::Ready(9));
    // The gate is shut, but nothing of the connection's is in flight: its block's frame is
    // read, and nothing past it, in the quiet place it took.
    assert_eq!(read_once(&mut stream, &mut cx), Poll::Ready(10));
    assert_eq!(gate.quiet(), 1);
    assert!(stream.pace.as_ref().is_some_and(HeadPace::holds_quiet));
    assert_eq!(read_once(&mut stream, &mut cx), Poll::Ready(9));
    // The request that block carried is handed on in that place, not among the gate's.
    activity.started();
    let carried = gate.ticket(&stream.pass);
    assert_eq!((gate.waiting(), gate.quiet()), (4, 1));
    // While it is in flight the next block waits, and while its task has not begun (the one
    // place still taken) too.
    assert_eq!(read_once(&mut stream, &mut cx), Poll::Pending);
    activity.ended();
    assert_eq!(read_once(&mut stream, &mut cx), Poll::Pending);
    drop(carried);
    assert_eq!(gate.quiet(), 0);
    assert_eq!(read_once(&mut stream, &mut cx), Poll::Ready(10));
    // Another quiet connection finds the only place taken: it waits at the gate, until the
    // place is given back with the connection that held it (its block carried no request).
    let mut other = quiet(request.repeat(8));
    let other_activity = Arc::clone(&other.activity);
    assert_eq!(
        read_once(&mut other, &mut cx),
        Poll::Ready(H2_PREFACE.len())
    );
    assert_eq!(read_once(&mut other, &mut cx), Poll::Ready(9));
    assert_eq!(read_once(&mut other, &mut cx), Poll::Pending);
    drop(stream);
    assert_eq!(gate.quiet(), 0);
    assert_eq!(read_once(&mut other, &mut cx), Poll::Ready(10));
    drop(gate.ticket(&other.pass));
    // A client with more connections open is not quiet, even with none in flight.
    assert_eq!(read_once(&mut other, &mut cx), Poll::Ready(9));
    other_activity.started();
    other_activity.ended();
    let more: Vec<_> = (0..QUIET_CLIENT_CONNECTIONS)
        .map(|_| clients.admit(peer).expect("under the cap"))
        .collect();
    assert_eq!(read_once(&mut other, &mut cx), Poll::Pending);
    drop(more);
    // Nor is a connection whose client is not counted (a trusted proxy's).
    let counted = other.client.take();
    assert_eq!(read_once(&mut other, &mut cx), Poll::Pending);
    other.client = counted;
    assert_eq!(read_once(&mut other, &mut cx), Poll::Ready(10));
    drop(gate.ticket(&other.pass));
    // Quiet requests never hold the gate shut: it counts only its own.
    tickets.truncate(2);
    assert_eq!((gate.waiting(), gate.quiet()), (2, 0));
    // A block that carries no request (a stream h2 resets, a list it refuses) does not keep
    // its place: once a read has waited (and hyper has handed on what it decoded), the place
    // goes back.
    tickets.extend((0..2).map(|_| gate.ticket(&QuietPass::default())));
    let mut idle = quiet(request.repeat(3));
    assert_eq!(read_once(&mut idle, &mut cx), Poll::Ready(H2_PREFACE.len()));
    assert_eq!(read_once(&mut idle, &mut cx), Poll::Ready(9));
    assert_eq!(read_once(&mut idle, &mut cx), Poll::Ready(10));
    assert_eq!(read_once(&mut idle, &mut cx), Poll::Ready(9));
    assert_eq!(gate.quiet(), 1);
    assert_eq!(read_once(&mut idle, &mut cx), Poll::Pending);
    assert_eq!(gate.quiet(), 1, "hyper may still hand its request on");
    assert_eq!(read_once(&mut idle, &mut cx), Poll::Pending);
    assert_eq!(gate.quiet(), 0, "none came");
    assert!(!idle.pace.as_ref().is_some_and(HeadPace::holds_quiet));
    drop(idle);
    assert_eq!(gate.quiet(), 0, "given back once");
}

#[test]
fn the_default_connection_cap_leaves_descriptors_for_the_gateways_own_work() {
    assert_eq!(reserved_descriptors(256), 64);
    assert_eq!(default_max_connections(Some(256)), 192);
    assert_eq!(reserved_descriptors(4096), 1024);
    assert_eq!(default_max_connections(Some(4096)), 3072);
    assert_eq!(default_max_connections(Some(1 << 20)), 10_000);
    assert_eq!(default_max_connections(None), 10_000);
    assert_eq!(default_max_connections(Some(16)), 1);
}

#[test]
fn failed_accepts_back_off_doubling_to_a_second_and_reset_on_success() {
    let mut backoff = AcceptBackoff::new();
    let err = std::io::Error::from_raw_os_error(24);
    let delays: Vec<u64> = (0..9)
        .map(|_| u64::try_from(backoff.failed(&err).as_millis()).unwrap_or(u64::MAX))
        .collect();
    assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
    backoff.succeeded();
    assert_eq!(backoff.failed(&err), Duration::from_millis(10));
}

#[test]
fn a_report_is_due_once_per_interval_and_counts_what_happened_between() {
    let mut log = LogEvery::new(Duration::from_secs(3600));
    log.count();
    assert!(log.due());
    assert_eq!(log.take_count(), 1);
    log.count();
    log.count();
    assert!(!log.due());
    assert_eq!(log.take_count(), 2);
}
