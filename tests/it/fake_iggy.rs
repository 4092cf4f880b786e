//! A tiny Iggy for fault tests: enough of Iggy's TCP binary protocol (server 0.8) for the SDK
//! to log in, ping, send and poll one partition, written from the protocol's framing (request
//! `[length][code][payload]`, answer `[status][length][payload]`, little-endian). It counts
//! open connections, polls and topic and stream reads, takes any stream rename, can answer sends slowly, and can hold a hole in its log that it refuses
//! to read with Iggy's "invalid offset" (4100), as a real server does after a torn write.

use std::{
    net::SocketAddr,
    ops::Range,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const PING: u32 = 1;
const GET_CLUSTER_METADATA: u32 = 12;
const LOGIN_USER: u32 = 38;
const POLL_MESSAGES: u32 = 100;
const SEND_MESSAGES: u32 = 101;
const GET_CONSUMER_OFFSET: u32 = 120;
const STORE_CONSUMER_OFFSET: u32 = 121;
const GET_STREAM: u32 = 200;
const GET_STREAMS: u32 = 201;
const UPDATE_STREAM: u32 = 204;
const GET_TOPIC: u32 = 300;

/// Iggy's status codes the fake answers with.
const ERROR: u32 = 1;
const INVALID_OFFSET: u32 = 4100;
const PARTITION_NOT_FOUND: u32 = 3007;

/// The one partition the fake keeps, whatever stream and topic a call names.
#[derive(Default)]
struct Partition {
    /// `(offset, payload)`, offsets from 0.
    messages: Vec<(u64, Vec<u8>)>,
    /// Offsets stored but unreadable: a poll whose range meets them is refused.
    hole: Range<u64>,
    /// Deleted: the topic lists no partition and a poll is refused as Iggy refuses one.
    deleted: bool,
    /// The topic's name, when not "t".
    topic_name: Option<String>,
    stored: Option<u64>,
}

#[derive(Default)]
struct Shared {
    open: AtomicUsize,
    sends: AtomicU64,
    polls: AtomicU64,
    topic_reads: AtomicU64,
    stream_reads: AtomicU64,
    send_delay_ms: AtomicU64,
    poll_delay_ms: AtomicU64,
    commit_delay_ms: AtomicU64,
    partition: Mutex<Partition>,
}

pub struct FakeIggy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeIggy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let shared = Arc::clone(&accepting);
                tokio::spawn(async move {
                    shared.open.fetch_add(1, Ordering::SeqCst);
                    let _ = serve(socket, &shared).await;
                    shared.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { addr, shared, task }
    }

    /// A connection string for the gateway: to the fake itself, or to a proxy in front of it.
    pub fn url(addr: SocketAddr) -> String {
        format!("iggy://iggy:iggy@{addr}")
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Sends acknowledged so far.
    pub fn sends(&self) -> u64 {
        self.shared.sends.load(Ordering::SeqCst)
    }

    /// Polls answered so far.
    pub fn polls(&self) -> u64 {
        self.shared.polls.load(Ordering::SeqCst)
    }

    /// Topic reads (`GET_TOPIC`) answered so far.
    pub fn topic_reads(&self) -> u64 {
        self.shared.topic_reads.load(Ordering::SeqCst)
    }

    /// Stream reads (`GET_STREAM`) answered so far.
    pub fn stream_reads(&self) -> u64 {
        self.shared.stream_reads.load(Ordering::SeqCst)
    }

    /// Appends one message (payload `m{offset}`) to the partition.
    pub fn append(&self) {
        let mut partition = self.shared.partition.lock().expect("lock");
        let offset = partition
            .messages
            .last()
            .map_or(0, |(offset, _)| offset + 1);
        partition
            .messages
            .push((offset, format!("m{offset}").into_bytes()));
    }

    /// Renames the topic (whatever name a call finds it by).
    pub fn name_topic(&self, name: &str) {
        self.shared.partition.lock().expect("lock").topic_name = Some(name.to_owned());
    }

    /// Purges the partition, as Iggy's own tools could: its messages are gone and its offsets
    /// start again at 0.
    pub fn purge(&self) {
        self.shared.partition.lock().expect("lock").messages.clear();
    }

    /// Deletes the partition (the topic stays, with none).
    pub fn delete_partition(&self) {
        self.shared.partition.lock().expect("lock").deleted = true;
    }

    /// Answers every send this late.
    pub fn answer_sends_after(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.send_delay_ms.store(millis, Ordering::SeqCst);
    }

    /// Answers every poll this late.
    pub fn answer_polls_after(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.poll_delay_ms.store(millis, Ordering::SeqCst);
    }

    /// Stores every consumer offset this late (then stores it, as Iggy carries out a request
    /// its client stopped waiting for).
    pub fn answer_commits_after(&self, delay: Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.commit_delay_ms.store(millis, Ordering::SeqCst);
    }

    /// Holds `count` messages (payloads `m0`, `m1`, …) of which `hole` cannot be read.
    pub fn hold(&self, count: u64, hole: Range<u64>) {
        let mut partition = self.shared.partition.lock().expect("lock");
        partition.messages = (0..count)
            .map(|offset| (offset, format!("m{offset}").into_bytes()))
            .collect();
        partition.hole = hole;
    }

    /// The consumer offset stored last, if any.
    pub fn stored(&self) -> Option<u64> {
        self.shared.partition.lock().expect("lock").stored
    }
}

impl Drop for FakeIggy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut socket: TcpStream, shared: &Shared) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; 8];
        socket.read_exact(&mut head).await?;
        let length = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let code = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let mut payload = vec![0u8; length.saturating_sub(4)];
        socket.read_exact(&mut payload).await?;
        let (status, body) = answer(code, &payload, shared).await;
        let mut frame = Vec::with_capacity(8 + body.len());
        frame.extend_from_slice(&status.to_le_bytes());
        frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_le_bytes());
        frame.extend_from_slice(&body);
        socket.write_all(&frame).await?;
    }
}

async fn answer(code: u32, payload: &[u8], shared: &Shared) -> (u32, Vec<u8>) {
    match code {
        PING | GET_STREAMS => (0, Vec::new()),
        LOGIN_USER => (0, 1u32.to_le_bytes().to_vec()),
        SEND_MESSAGES => {
            let delay = shared.send_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            shared.sends.fetch_add(1, Ordering::SeqCst);
            (0, Vec::new())
        }
        POLL_MESSAGES => {
            let delay = shared.poll_delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            shared.polls.fetch_add(1, Ordering::SeqCst);
            poll(payload, shared)
        }
        GET_STREAM => {
            shared.stream_reads.fetch_add(1, Ordering::SeqCst);
            (0, stream())
        }
        // Taken, and changing nothing: the fake's one stream keeps its name.
        UPDATE_STREAM => (0, Vec::new()),
        GET_TOPIC => {
            shared.topic_reads.fetch_add(1, Ordering::SeqCst);
            (0, topic(shared))
        }
        GET_CONSUMER_OFFSET => {
            let partition = shared.partition.lock().expect("lock");
            match partition.stored {
                Some(stored) => {
                    let mut body = 0u32.to_le_bytes().to_vec();
                    body.extend_from_slice(&head(&partition).to_le_bytes());
                    body.extend_from_slice(&stored.to_le_bytes());
                    (0, body)
                }
                None => (0, Vec::new()),
            }
        }
        STORE_CONSUMER_OFFSET => {
            let delay = shared.commit_delay_ms.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let offset = last_u64(payload);
            let mut partition = shared.partition.lock().expect("lock");
            if partition.messages.is_empty() || offset > head(&partition) {
                return (INVALID_OFFSET, Vec::new());
            }
            partition.stored = Some(offset);
            (0, Vec::new())
        }
        // Cluster metadata (the SDK goes on without it) and anything else.
        GET_CLUSTER_METADATA => (ERROR, Vec::new()),
        _ => (ERROR, Vec::new()),
    }
}

fn head(partition: &Partition) -> u64 {
    partition.messages.last().map_or(0, |(offset, _)| *offset)
}

fn last_u64(payload: &[u8]) -> u64 {
    let at = payload.len().saturating_sub(8);
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&payload[at..]);
    u64::from_le_bytes(bytes)
}

/// `[.. strategy kind:1, value:8][count:4][auto_commit:1]` at the request's end.
fn poll(payload: &[u8], shared: &Shared) -> (u32, Vec<u8>) {
    let end = payload.len();
    let kind = payload[end - 14];
    let value = last_u64(&payload[..end - 5]);
    let count = u64::from(u32::from_le_bytes([
        payload[end - 5],
        payload[end - 4],
        payload[end - 3],
        payload[end - 2],
    ]));
    let partition = shared.partition.lock().expect("lock");
    if partition.deleted {
        return (PARTITION_NOT_FOUND, Vec::new());
    }
    let start = match kind {
        1 => value,
        5 => partition.stored.map_or(0, |stored| stored + 1),
        _ => 0,
    };
    let wanted = start..start.saturating_add(count);
    let found: Vec<&(u64, Vec<u8>)> = partition
        .messages
        .iter()
        .filter(|(offset, _)| wanted.contains(offset))
        .collect();
    if found
        .iter()
        .any(|(offset, _)| partition.hole.contains(offset))
    {
        return (INVALID_OFFSET, Vec::new());
    }
    let mut body = 0u32.to_le_bytes().to_vec();
    body.extend_from_slice(&head(&partition).to_le_bytes());
    body.extend_from_slice(&u32::try_from(found.len()).unwrap_or(0).to_le_bytes());
    for (offset, message) in found {
        body.extend_from_slice(&0u64.to_le_bytes()); // checksum
        body.extend_from_slice(&u128::from(*offset + 1).to_le_bytes()); // id
        body.extend_from_slice(&offset.to_le_bytes());
        body.extend_from_slice(&1_700_000_000_000_000u64.to_le_bytes()); // timestamp
        body.extend_from_slice(&1_700_000_000_000_000u64.to_le_bytes()); // origin timestamp
        body.extend_from_slice(&0u32.to_le_bytes()); // user headers length
        body.extend_from_slice(&u32::try_from(message.len()).unwrap_or(0).to_le_bytes());
        body.extend_from_slice(&0u64.to_le_bytes()); // reserved
        body.extend_from_slice(message);
    }
    (0, body)
}

/// Stream 1 "s", created at a fixed time, as `GET_STREAM` answers (its topics left out: a
/// subscription reads only its id and name).
fn stream() -> Vec<u8> {
    let name = b"s";
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_le_bytes()); // id
    body.extend_from_slice(&1_700_000_000_000_000u64.to_le_bytes()); // created at
    body.extend_from_slice(&0u32.to_le_bytes()); // topics count
    body.extend_from_slice(&0u64.to_le_bytes()); // size
    body.extend_from_slice(&0u64.to_le_bytes()); // messages count
    body.push(u8::try_from(name.len()).unwrap_or(0));
    body.extend_from_slice(name);
    body
}

/// Topic 1 "t" with partition 0, created at a fixed time, as `GET_TOPIC` answers.
fn topic(shared: &Shared) -> Vec<u8> {
    let partition = shared.partition.lock().expect("lock");
    let count = partition.messages.len() as u64;
    let name = partition.topic_name.as_deref().unwrap_or("t").as_bytes();
    let mut body = Vec::new();
    body.extend_from_slice(&1u32.to_le_bytes()); // id
    body.extend_from_slice(&1_700_000_000_000_000u64.to_le_bytes()); // created at
    let partitions = u32::from(!partition.deleted);
    body.extend_from_slice(&partitions.to_le_bytes()); // partitions count
    body.extend_from_slice(&0u64.to_le_bytes()); // message expiry
    body.push(1); // compression: none
    body.extend_from_slice(&0u64.to_le_bytes()); // max topic size
    body.push(1); // replication factor
    body.extend_from_slice(&0u64.to_le_bytes()); // size
    body.extend_from_slice(&count.to_le_bytes());
    body.push(u8::try_from(name.len()).unwrap_or(0));
    body.extend_from_slice(name);
    if partition.deleted {
        return body;
    }
    body.extend_from_slice(&0u32.to_le_bytes()); // partition id
    body.extend_from_slice(&1_700_000_000_000_000u64.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes()); // segments
    body.extend_from_slice(&head(&partition).to_le_bytes());
    body.extend_from_slice(&0u64.to_le_bytes()); // size
    body.extend_from_slice(&count.to_le_bytes());
    body
}
